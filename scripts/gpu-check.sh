#!/usr/bin/env bash
# GPU acceptance check, at most 8 minutes on one GPU: the toy chain at 512 px crops on CUDA,
# every command with its default --device auto, then bench/gpu.py with the time left.
#
#   bash scripts/gpu-check.sh                      # on the GPU box (incseg and python on PATH)
#   INCSEG=.venv/bin/incseg PYTHON=.venv/bin/python bash scripts/gpu-check.sh
#   GPU_CHECK_SIZE=32 GPU_CHECK_IMAGES=40 INCSEG_EMULATE_CUDA=1 bash scripts/gpu-check.sh   # CPU smoke test
#
# Checks, in order: cuda (torch sees a GPU), make-toy-data, prepare-splits (toy 10-10-ov),
# train-base (CE, fp32), train-base-bce (--loss bce: fp16 + GradScaler, its --amp auto), one
# train-step per method (ft, mib, plop, alife; wilson from the BCE step 0), the ALIFE-M bank
# stages (extract-features, fit-rotations, finetune-classifier), evaluate, predict, export,
# export-run-cuda (the .pt2 program loaded with torch.export.load, moved to CUDA and fed uint8
# images there), compile (train-step mib with --compile), with several GPUs ddp-train-base
# (torchrun), then bench (bench/gpu.py --no-cli: the timing at the VOC recipe; under
# INCSEG_EMULATE_CUDA its --dry-run). A run that did not go to CUDA fails (its manifest,
# log or predict.json must name cuda:N), as does a stage whose precision is not the one asked.
#
# Prints one line per check (PASS name seconds / FAIL name seconds: error line / SKIP name:
# why), then a summary line; writes DIR/gpu-check.json (per check: command, exit code,
# seconds, status, error line); exits 1 if a check failed, 2 if none failed but some were
# skipped for lack of time, 0 when every check passed (or was skipped by GPU_CHECK_SKIP). A
# check starts only if the time it needs is left, and is stopped (SIGTERM to its process
# group, SIGKILL 10 s later) at the time left, so the whole script keeps to GPU_CHECK_BUDGET
# seconds.
#
# Environment:
#   INCSEG, PYTHON          the commands [incseg, python]
#   GPU_CHECK_BUDGET        seconds for everything [480]
#   GPU_CHECK_SIZE          --crop-size and --eval-size [512]
#   GPU_CHECK_IMAGES        toy training images [320]; GPU_CHECK_VAL_IMAGES [IMAGES/8, at least 8]
#   GPU_CHECK_TOY_SIZE      toy image side (make-toy-data --size) [64, or SIZE if smaller; >= 32]
#   GPU_CHECK_BATCH         --batch-size [8]
#   GPU_CHECK_BACKBONE      a backbone for step 0 (random weights), e.g. resnet101 [the toy preset's]
#   GPU_CHECK_DIR           folder for data, runs, logs and the JSON [a new one under $TMPDIR]
#   GPU_CHECK_JSON          the summary JSON [DIR/gpu-check.json]
#   GPU_CHECK_SKIP          checks to skip, space or comma separated [compile under INCSEG_EMULATE_CUDA,
#                           where it would compile with aot_eager on the CPU for minutes; else none]
#   GPU_CHECK_BENCH_ARGS    more arguments for bench/gpu.py (e.g. "--stages evaluate")
#   INCSEG_EMULATE_CUDA     passed on: every command then sees emulated GPUs (incseg_cli/testing/cuda.py)
set -uo pipefail

INCSEG=${INCSEG:-incseg}
PYTHON=${PYTHON:-python}
BUDGET=${GPU_CHECK_BUDGET:-480}
SIZE=${GPU_CHECK_SIZE:-512}
IMAGES=${GPU_CHECK_IMAGES:-320}
VAL=${GPU_CHECK_VAL_IMAGES:-$(( IMAGES / 8 > 8 ? IMAGES / 8 : 8 ))}
TOY_SIZE=${GPU_CHECK_TOY_SIZE:-$(( SIZE < 64 ? (SIZE < 32 ? 32 : SIZE) : 64 ))}
BATCH=${GPU_CHECK_BATCH:-8}
BACKBONE=${GPU_CHECK_BACKBONE:-}
EMULATE=${INCSEG_EMULATE_CUDA:-0}
if [[ -n "$EMULATE" && "$EMULATE" != 0 ]]; then
    SKIP=${GPU_CHECK_SKIP-compile}
else
    EMULATE=
    SKIP=${GPU_CHECK_SKIP-}
fi
SKIP=" ${SKIP//,/ } "
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
BENCH=$HERE/../bench/gpu.py
RESERVE=15   # seconds kept: a stopped command's 10 s of grace, then the JSON

# Commands given by a relative path (INCSEG=.venv/bin/incseg) still work in DIR.
absolute() {
    local first=${1%% *} rest=""
    [[ "$1" == *" "* ]] && rest=" ${1#* }"
    [[ $first == */* ]] && first=$(cd "$(dirname "$first")" && pwd)/$(basename "$first")
    printf '%s%s' "$first" "$rest"
}
INCSEG=$(absolute "$INCSEG")
PYTHON=$(absolute "$PYTHON")
[[ -n "${GPU_CHECK_JSON:-}" && "$GPU_CHECK_JSON" != /* ]] && GPU_CHECK_JSON=$PWD/$GPU_CHECK_JSON

START=$SECONDS
DEADLINE=$(( SECONDS + BUDGET ))
DIR=${GPU_CHECK_DIR:-$(mktemp -d "${TMPDIR:-/tmp}/incseg-gpu-check.XXXXXX")}
mkdir -p "$DIR/logs" || exit 1
DIR=$(cd "$DIR" && pwd)
JSON=${GPU_CHECK_JSON:-$DIR/gpu-check.json}
RECORDS=$DIR/logs/records.tsv
: > "$RECORDS"
cd "$DIR" || exit 1
export INCSEG_NO_PROGRESS=1 INCSEG_SPLITS=$DIR/splits INCSEG_CACHE_DIR=$DIR/cache
unset INCSEG_DEBUG

T=10-10-ov
R=runs
TOY="--data toy --preset toy"
TRAIN="$TOY --batch-size $BATCH --crop-size $SIZE --eval-size $SIZE --epochs 1 --force"
CUDA_RUN='"device": "cuda:[0-9]+"'
FP32='"amp": "off"'
FP16='"amp": "torch.float16"'
SCALER='"grad_scaler": true'
declare -A STATUS=()
NGPU=0

# One tab-separated record per check: name, status, exit code, seconds, error line, command.
record() {
    printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" "${5//$'\t'/ }" "${6//$'\t'/ }" >> "$RECORDS"
}

# The line that says why a command failed: the last "error: ..." or exception line of its
# stderr (a torchrun worker's [rankN]: prefix dropped), else its last line with words.
error_line() {
    local line
    line=$(sed -E 's/^\[(rank|default)[0-9]+\]: *//' "$1" | grep -E '^(error: |interrupted: |[A-Za-z_.]*(Error|Exception|Interrupt)\b)' | tail -n 1)
    [[ -n "$line" ]] || line=$(grep -E '[A-Za-z]{2}' "$1" | tail -n 1)
    printf '%s' "${line:-no output on stderr}" | cut -c1-400
}

# check NAME NEED_SECONDS NEEDS [EXPECT_FILE REGEX]... -- COMMAND...
# NEEDS: checks (comma separated, or -) that must have passed; each EXPECT_FILE must exist
# and match REGEX (grep -E) after a zero exit.
check() {
    local name=$1 need=$2 needs=$3
    shift 3
    local expects=()
    while [[ $1 != -- ]]; do expects+=("$1" "$2"); shift 2; done
    shift
    local cmd
    cmd=$(printf '%q ' "$@")
    cmd=${cmd% }
    if [[ "$SKIP" == *" $name "* ]]; then
        STATUS[$name]=skipped
        echo "SKIP $name: GPU_CHECK_SKIP"
        record "$name" "skipped: GPU_CHECK_SKIP" "" "" "" "$cmd"
        return
    fi
    local dep
    for dep in ${needs//,/ }; do
        [[ $dep == - ]] && continue
        if [[ "${STATUS[$dep]:-}" != pass ]]; then
            STATUS[$name]=skipped
            echo "SKIP $name: needs $dep"
            record "$name" "skipped: needs $dep" "" "" "" "$cmd"
            return
        fi
    done
    local left=$(( DEADLINE - SECONDS - RESERVE ))
    if (( left < need )); then
        STATUS[$name]=skipped
        echo "SKIP $name: budget (${left} s left, needs ${need} s)"
        record "$name" "skipped: budget" "" "" "" "$cmd"
        return
    fi
    local began=$SECONDS t0 t1 rc
    t0=$(date +%s.%N)
    timeout --kill-after=10 "$left" "$@" > "logs/$name.out" 2> "logs/$name.err"
    rc=$?
    t1=$(date +%s.%N)
    local seconds
    seconds=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", b - a }')
    local err=""
    if (( rc == 124 )) || { (( rc == 137 )) && (( SECONDS - began >= left )); }; then
        err="stopped at the time left (${left} s of GPU_CHECK_BUDGET=${BUDGET} s)"
    elif (( rc != 0 )); then
        err=$(error_line "logs/$name.err")
    else
        local i
        for (( i = 0; i < ${#expects[@]}; i += 2 )); do
            if [[ ! -f "${expects[i]}" ]]; then
                err="${expects[i]} was not written"
                break
            elif ! grep -Eq "${expects[i+1]}" "${expects[i]}"; then
                err="${expects[i]} does not match ${expects[i+1]}"
                break
            fi
        done
    fi
    if [[ -z "$err" ]]; then
        STATUS[$name]=pass
        echo "PASS $name $seconds"
        record "$name" pass "$rc" "$seconds" "" "$cmd"
    else
        STATUS[$name]=fail
        echo "FAIL $name $seconds: $err"
        record "$name" fail "$rc" "$seconds" "$err" "$cmd"
    fi
}

manifest() {  # the expectations on a run's manifest: on CUDA, plus PATTERN...
    local run=$1
    shift
    printf '%s\n' "$R/$run/manifest.json" "$CUDA_RUN"
    local p
    for p in "$@"; do printf '%s\n' "$R/$run/manifest.json" "$p"; done
}

# -- the device ------------------------------------------------------------------------------
cat > logs/gpu_check_device.py <<'PY'
import os
import sys

import torch

if os.environ.get("INCSEG_EMULATE_CUDA", "0") not in ("", "0"):
    from incseg_cli.testing import cuda

    cuda.install_from_env()
if not torch.cuda.is_available():
    sys.exit("error: torch.cuda.is_available() is False: no GPU for this check")
n = torch.cuda.device_count()
names = {torch.cuda.get_device_name(i) for i in range(n)}
major, minor = torch.cuda.get_device_capability(0)
print(n)
print(f"{n} x {', '.join(sorted(names))} (sm{major}{minor}), torch {torch.__version__}, CUDA {torch.version.cuda}",
      file=sys.stderr)
PY
check cuda 5 - -- "$PYTHON" logs/gpu_check_device.py
[[ ${STATUS[cuda]} == pass ]] && NGPU=$(tail -n 1 logs/cuda.out)
[[ ${STATUS[cuda]} == pass ]] && echo "     $(tail -n 1 logs/cuda.err)${EMULATE:+ [emulated: INCSEG_EMULATE_CUDA=$EMULATE]}"

# -- toy data and step 0 ---------------------------------------------------------------------
check make-toy-data 15 cuda -- $INCSEG make-toy-data --out toy --images "$IMAGES" --val-images "$VAL" \
    --size "$TOY_SIZE" --seed 0 --force
check prepare-splits 15 make-toy-data -- $INCSEG prepare-splits --dataset voc --data toy --task $T --out splits
BASE_MODEL=()
[[ -n "$BACKBONE" ]] && BASE_MODEL=(--backbone "$BACKBONE" --backbone-weights none)
mapfile -t E < <(manifest step0 "$FP32")
check train-base 40 prepare-splits "${E[@]}" -- $INCSEG train-base --task $T $TRAIN "${BASE_MODEL[@]}" --out $R/step0
mapfile -t E < <(manifest step0-bce "$FP16" "$SCALER")
check train-base-bce 40 prepare-splits "${E[@]}" -- $INCSEG train-base --task $T --loss bce $TRAIN \
    "${BASE_MODEL[@]}" --out $R/step0-bce

# -- one step per method -----------------------------------------------------------------------
for method in ft mib plop alife; do
    mapfile -t E < <(manifest "step1-$method" "$FP32")
    check "train-step-$method" 40 train-base "${E[@]}" -- $INCSEG train-step --prev $R/step0 --method $method \
        $TRAIN --out "$R/step1-$method"
done
mapfile -t E < <(manifest step1-wilson "$FP16" "$SCALER")
check train-step-wilson 40 train-base-bce "${E[@]}" -- $INCSEG train-step --prev $R/step0-bce --method wilson \
    $TRAIN --pseudo-epochs 0 --out $R/step1-wilson

# -- ALIFE-M: the feature bank, its rotations, the classifier fine-tuned with replay ------------
check extract-features 30 train-base "$R/bank0.h5.log" "on cuda:[0-9]+" -- $INCSEG extract-features \
    --prev $R/step0 $TOY --samples 100 --crop-size "$SIZE" --batch-size "$BATCH" --out $R/bank0.h5 --force
check fit-rotations 30 extract-features,train-step-alife "$R/rot1.pt.log" "on cuda:[0-9]+" -- $INCSEG fit-rotations \
    --bank $R/bank0.h5 --prev $R/step0 --current $R/step1-alife $TOY --epochs 1 --crop-size "$SIZE" \
    --batch-size "$BATCH" --out $R/rot1.pt --out-bank $R/bank1-rotated.h5 --force
mapfile -t E < <(manifest step1-alife-m)
check finetune-classifier 40 fit-rotations "${E[@]}" -- $INCSEG finetune-classifier --current $R/step1-alife \
    --prev $R/step0 --bank $R/bank1-rotated.h5 $TRAIN --out $R/step1-alife-m

# -- using a finished run ---------------------------------------------------------------------------
check evaluate 20 train-step-mib evaluate.json '"miou"' -- $INCSEG evaluate $R/step1-mib --data toy \
    --out evaluate.json
check predict 20 train-step-mib predict/predict.json "$CUDA_RUN" -- $INCSEG predict $R/step1-mib toy/JPEGImages \
    --out predict --force
check export 30 train-step-mib -- $INCSEG export $R/step1-mib --out model.pt2 --force
cat > logs/gpu_check_export_run.py <<'PY'
"""The exported program as a service runs it: torch only, on CUDA, uint8 [N, 3, H, W] images."""
import json
import os
import sys

import torch

emulated = os.environ.get("INCSEG_EMULATE_CUDA", "0") not in ("", "0")
if emulated:
    from incseg_cli.testing import cuda

    cuda.install_from_env()
path, side = sys.argv[1], int(sys.argv[2])
files = {"incseg.json": ""}
model = torch.export.load(path, extra_files=files).module().to("cuda")
meta = json.loads(files["incseg.json"])
height, width = side, side + 16
images = torch.randint(0, 256, (2, 3, height, width), dtype=torch.uint8, device="cuda")
with torch.no_grad():
    labels, logits = model(images)
torch.cuda.synchronize()
channels = len(meta["label_ids"])
if labels.dtype != torch.uint8 or tuple(labels.shape) != (2, height, width):
    sys.exit(f"error: labels {labels.dtype} {tuple(labels.shape)}, expected uint8 (2, {height}, {width})")
if logits.dtype != torch.float32 or tuple(logits.shape) != (2, channels, height, width):
    sys.exit(f"error: logits {logits.dtype} {tuple(logits.shape)}, expected float32 (2, {channels}, {height}, {width})")
if not emulated and (labels.device.type != "cuda" or logits.device.type != "cuda"):
    sys.exit(f"error: outputs on {labels.device} and {logits.device}, not on CUDA")
ids = torch.tensor(meta["label_ids"], device=logits.device)
if not torch.equal(ids[logits.argmax(1)].to(labels.dtype), labels):
    sys.exit("error: labels are not label_ids[argmax(logits)]")
print(f"labels {tuple(labels.shape)} logits {tuple(logits.shape)} on {labels.device}", file=sys.stderr)
PY
check export-run-cuda 20 export -- "$PYTHON" logs/gpu_check_export_run.py model.pt2 "$SIZE"
mapfile -t E < <(manifest step1-mib-compile)
check compile 120 train-base "${E[@]}" -- $INCSEG train-step --prev $R/step0 --method mib $TRAIN --compile \
    --out $R/step1-mib-compile

# -- several GPUs: DistributedDataParallel + SyncBatchNorm under torchrun --------------------------
if (( NGPU > 1 )); then
    # the global batch splits evenly over the processes, 2 images or more each
    if [[ "$INCSEG" == *" -m "* ]]; then  # INCSEG="python -m incseg_cli"
        TORCHRUN_INCSEG=(-m "${INCSEG##* -m }")
    else
        TORCHRUN_INCSEG=("$(command -v "$INCSEG")")
    fi
    DDP_BATCH=$(( NGPU * ( (BATCH + NGPU - 1) / NGPU > 2 ? (BATCH + NGPU - 1) / NGPU : 2 ) ))
    mapfile -t E < <(manifest ddp-step0 "\"world_size\": $NGPU\\b")
    check ddp-train-base 60 prepare-splits "${E[@]}" -- "$PYTHON" -m torch.distributed.run --standalone \
        --nproc_per_node="$NGPU" "${TORCHRUN_INCSEG[@]}" train-base --task $T $TOY --batch-size "$DDP_BATCH" \
        --crop-size "$SIZE" --eval-size "$SIZE" --epochs 1 --force --out $R/ddp-step0
fi

# -- the timing, with the time left -------------------------------------------------------------------
rm -f "$DIR/bench.json"  # (a rerun in the same GPU_CHECK_DIR)
BENCH_ARGS=(--no-cli --out "$DIR/bench.json")
[[ -n "$EMULATE" ]] && BENCH_ARGS+=(--dry-run)
LEFT=$(( DEADLINE - SECONDS - RESERVE ))
# GPU_CHECK_BENCH_ARGS is split into words on purpose
check bench 60 cuda "$DIR/bench.json" '"stages"' -- "$PYTHON" "$BENCH" "${BENCH_ARGS[@]}" \
    --budget $(( LEFT > 20 ? LEFT - 10 : 10 )) ${GPU_CHECK_BENCH_ARGS:-}

# -- summary ----------------------------------------------------------------------------------------
ELAPSED=$(( SECONDS - START ))
"$PYTHON" - "$RECORDS" "$JSON" "$ELAPSED" "$BUDGET" "$EMULATE" "$DIR" "$SIZE" "$IMAGES" "$VAL" "$TOY_SIZE" \
    "$BATCH" "$NGPU" <<'PY'
import json
import os
import sys

records, out, elapsed, budget, emulate, folder, size, images, val, toy_size, batch, gpus = sys.argv[1:]
checks = []
for line in open(records, encoding="utf-8"):
    name, status, code, seconds, error, command = line.rstrip("\n").split("\t")[:6]
    check = {"name": name, "status": status, "command": command,
             "exit_code": int(code) if code else None, "seconds": float(seconds) if seconds else None}
    if status == "fail":
        check["error"] = error
    checks.append(check)
summary = {
    "script": "scripts/gpu-check.sh", "emulated": bool(emulate), "INCSEG_EMULATE_CUDA": emulate or None,
    "budget_seconds": int(budget), "seconds": int(elapsed), "gpus": int(gpus), "folder": folder,
    "toy": {"images": int(images), "val_images": int(val), "size": int(toy_size), "crop_and_eval_size": int(size),
            "batch": int(batch), "task": "10-10-ov"},
    "passed": sum(c["status"] == "pass" for c in checks), "failed": sum(c["status"] == "fail" for c in checks),
    "skipped": sum(c["status"].startswith("skipped") for c in checks),
    "bench": os.path.join(folder, "bench.json") if os.path.exists(os.path.join(folder, "bench.json")) else None,
    "checks": checks,
}
tmp = f"{out}.tmp-{os.getpid()}"
with open(tmp, "w", encoding="utf-8") as f:
    json.dump(summary, f, indent=2)
    f.write("\n")
os.replace(tmp, out)
PY
PASSED=$(grep -c $'\tpass\t' "$RECORDS")
FAILED=$(grep -c $'\tfail\t' "$RECORDS")
SKIPPED=$(grep -c $'\tskipped' "$RECORDS")
echo "gpu-check: $PASSED passed, $FAILED failed, $SKIPPED skipped in $ELAPSED s of $BUDGET s${EMULATE:+ (CUDA emulated: INCSEG_EMULATE_CUDA=$EMULATE)}; JSON $JSON, logs $DIR/logs"
BUDGET_SKIPS=$(grep -c $'\tskipped: budget\t' "$RECORDS")
(( FAILED == 0 )) || exit 1
(( BUDGET_SKIPS == 0 )) || exit 2  # nothing failed, but not everything was checked
