#!/usr/bin/env bash
# The whole pipeline on generated toy data, on CPU, in a few minutes: step 0, then the new
# classes of toy 10-10-ov learned by fine-tuning (forgets), MiB, ALIFE, ALIFE-M (feature
# replay) and WILSON (image labels only), then one comparison table. Every stage skips itself
# when its output is already complete, so a second run only prints the results again.
# The steps train half the toy preset's epochs (bench/methods.py runs the full recipe); the
# Makefile's toy chains reuse the demo's data and step 0, so they pass the same DEMO_IMAGES.
# A smaller step 0 is not a saving: with 2,000 images the small model overfits (step-0 mIoU
# 42%), and 10 epochs instead of 12 gave 58% instead of 68% (seen val, seed 0).
set -euo pipefail
INCSEG=${INCSEG:-incseg}
D=${DEMO_DIR:-demo}
IMAGES=${DEMO_IMAGES:-3000}     # toy training images
EPOCHS=${DEMO_STEP_EPOCHS:-3}   # per incremental step (the toy preset's full recipe is 6)
# The step-1 trainings are independent of each other: two lanes run them side by side, each
# with half the cores. On 2 cores two 1-thread processes do more work than one 2-thread
# process, and they do not crawl when other jobs share the machine (torch's threads do).
CORES=$(nproc 2>/dev/null || echo 2)
LANE_THREADS=${OMP_NUM_THREADS:-$(( CORES > 1 ? CORES / 2 : 1 ))}
export INCSEG_SPLITS=$D/splits
T=10-10-ov
R=$D/runs/$T
STEP="--data $D/toy --preset toy --epochs $EPOCHS"

start=$SECONDS
stage() { echo "== $1 ($((SECONDS - start)) s)" >&2; }

stage "toy data and splits"
$INCSEG make-toy-data --out "$D/toy" --images "$IMAGES" --val-images 200 --size 64 --seed 0
test -f "$D/splits/voc/$T/task.json" || $INCSEG prepare-splits --dataset voc --data "$D/toy" --task $T --out "$D/splits"

stage "step 0: classes 1-10 with pixel labels"
$INCSEG train-base --data "$D/toy" --task $T --preset toy --out "$R/step0"

# The lanes are balanced by measured time (2026-12-07, 2 cores: ALIFE 59 s + ALIFE-M 36 s + ft
# 40 s against MiB 59 s + WILSON 49 s); the demo waits for the longer one.
lane_alife_ft() {
    stage "step 1, ALIFE (Step 1)"
    $INCSEG train-step --prev "$R/step0" --method alife $STEP --out "$R/step1-alife"
    stage "step 1, ALIFE-M (Steps 2-1, 2-2, 3)"
    $INCSEG extract-features --prev "$R/step0" --data "$D/toy" --preset toy --samples 100 --out "$R/bank0.h5"
    $INCSEG fit-rotations --bank "$R/bank0.h5" --prev "$R/step0" --current "$R/step1-alife" --data "$D/toy" \
        --preset toy --epochs 1 --out "$R/rot1.pt" --out-bank "$R/bank1-rotated.h5"
    $INCSEG finetune-classifier --current "$R/step1-alife" --prev "$R/step0" --bank "$R/bank1-rotated.h5" \
        --data "$D/toy" --preset toy --out "$R/step1-alife-m"
    stage "step 1, fine-tuning"
    $INCSEG train-step --prev "$R/step0" --method ft $STEP --out "$R/step1-ft"
}
lane_mib_wilson() {
    stage "step 1, MiB"
    $INCSEG train-step --prev "$R/step0" --method mib $STEP --out "$R/step1-mib"
    stage "step 1, WILSON (image-level labels only)"
    $INCSEG train-step --prev "$R/step0" --method wilson $STEP --out "$R/step1-wilson"
}

# Each lane logs to its own file (two interleaved logs are unreadable); a failed lane ends
# the demo with its log's last lines.
mkdir -p "$D/logs"
lanes=()
for lane in lane_alife_ft lane_mib_wilson; do
    (export OMP_NUM_THREADS=$LANE_THREADS; $lane) > "$D/logs/$lane.log" 2>&1 &
    lanes+=("$!:$lane")
done
# Stopping the demo, or a failed lane, stops both lanes and the stage each one is running.
stop_lanes() {
    for l in "${lanes[@]}"; do pkill -TERM -P "${l%%:*}" 2>/dev/null; kill "${l%%:*}" 2>/dev/null; done
    return 0
}
trap 'stop_lanes; exit 130' INT TERM
echo "== step 1: fine-tuning, MiB, ALIFE, ALIFE-M and WILSON in two lanes of $LANE_THREADS thread(s); logs in $D/logs/" >&2
for l in "${lanes[@]}"; do
    if ! wait "${l%%:*}"; then
        stop_lanes
        tail -n 5 "$D/logs/${l#*:}.log" >&2
        echo "demo: a stage of ${l#*:} failed; its log is $D/logs/${l#*:}.log" >&2
        exit 1
    fi
done
grep -h "^== " "$D"/logs/lane_*.log >&2 || true

stage "results"
cat >&2 <<'TXT'

Toy 10-10-ov: step 0 learns classes 1-10, step 1 adds classes 11-20 without the step-0 data.
mIoU % of: old = classes 1-10 (learned at step 0), new = classes 11-20, all = 0-20 with
background. Fine-tuning forgets the old classes; MiB, ALIFE, ALIFE-M and WILSON keep them
(WILSON sees only image-level labels of the new classes).
TXT
$INCSEG report "$R/step0" "$R/step1-ft" "$R/step1-mib" "$R/step1-alife" "$R/step1-alife-m" "$R/step1-wilson" \
    --plots "$D/plots" --examples 6 --data "$D/toy"
echo "demo finished in $((SECONDS - start)) s; plots in $D/plots" >&2
