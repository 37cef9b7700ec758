#!/usr/bin/env bash
# The whole pipeline on generated toy data, on CPU. Every stage skips itself when its
# output is already complete, so a second run only prints the results again.
set -euo pipefail
INCSEG=${INCSEG:-incseg}
D=${DEMO_DIR:-demo}
export INCSEG_SPLITS=$D/splits
TOY="--preset toy"
T=10-10-ov

start=$SECONDS
$INCSEG make-toy-data "$D/toy" --images 3000 --val-images 200 --size 64 --seed 0
$INCSEG prepare-splits --dataset voc --data "$D/toy" --task $T --out "$D/splits"
$INCSEG train-base --data "$D/toy" --task $T $TOY --out "$D/runs/step0"
$INCSEG evaluate "$D/runs/step0" --data "$D/toy" --eval-size 64 --json > "$D/step0.json"
echo "demo finished in $((SECONDS - start)) s" >&2
