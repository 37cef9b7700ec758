#!/usr/bin/env bash
# The whole pipeline on generated toy data, on CPU, in a few minutes: step 0, then the new
# classes of toy 10-10-ov learned by fine-tuning (forgets), MiB, ALIFE, ALIFE-M (feature replay)
# and WILSON (image labels only), then one comparison table. Every stage skips itself when
# its output is already complete, so a second run only prints the results again.
set -euo pipefail
INCSEG=${INCSEG:-incseg}
D=${DEMO_DIR:-demo}
EPOCHS=${DEMO_STEP_EPOCHS:-3}   # per incremental step (the toy preset's full recipe is 6)
export INCSEG_SPLITS=$D/splits
T=10-10-ov
R=$D/runs/$T
STEP="--data $D/toy --preset toy --epochs $EPOCHS"

start=$SECONDS
stage() { echo "== $1 ($((SECONDS - start)) s)" >&2; }

stage "toy data and splits"
$INCSEG make-toy-data "$D/toy" --images 3000 --val-images 200 --size 64 --seed 0
test -f "$D/splits/voc/$T/task.json" || $INCSEG prepare-splits --dataset voc --data "$D/toy" --task $T --out "$D/splits"

stage "step 0: classes 1-10 with pixel labels"
$INCSEG train-base --data "$D/toy" --task $T --preset toy --out "$R/step0"

stage "step 1, fine-tuning"
$INCSEG train-step --prev "$R/step0" --method ft $STEP --out "$R/step1-ft"

stage "step 1, MiB"
$INCSEG train-step --prev "$R/step0" --method mib $STEP --out "$R/step1-mib"

stage "step 1, ALIFE (Step 1)"
$INCSEG train-step --prev "$R/step0" --method alife $STEP --out "$R/step1-alife"

stage "step 1, ALIFE-M (Steps 2-1, 2-2, 3)"
$INCSEG extract-features --model "$R/step0" --data "$D/toy" --preset toy --samples 200 --out "$R/bank0.h5"
$INCSEG fit-rotations --bank "$R/bank0.h5" --prev "$R/step0" --current "$R/step1-alife" --data "$D/toy" \
    --preset toy --epochs 2 --out-rotations "$R/rot1.pt" --out-bank "$R/bank1-rotated.h5"
$INCSEG finetune-classifier --current "$R/step1-alife" --old "$R/step0" --bank "$R/bank1-rotated.h5" \
    --data "$D/toy" --preset toy --out "$R/step1-alife-m"

stage "step 1, WILSON (image-level labels only)"
$INCSEG train-step --prev "$R/step0" --method wilson $STEP --out "$R/step1-wilson"

stage "results"
cat >&2 <<'TXT'

Toy 10-10-ov: step 0 learns classes 1-10, step 1 adds classes 11-20 without the step-0 data.
mIoU % of: old = classes 1-10 (learned at step 0), new = classes 11-20, all = 0-20 with
background. Fine-tuning forgets the old classes; MiB, ALIFE, ALIFE-M and WILSON keep them
(WILSON sees only image-level labels of the new classes).
TXT
$INCSEG report "$R/step0" "$R/step1-ft" "$R/step1-mib" "$R/step1-alife" "$R/step1-alife-m" "$R/step1-wilson" \
    --plots "$D/plots"
echo "demo finished in $((SECONDS - start)) s; plots in $D/plots" >&2
