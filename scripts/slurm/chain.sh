# shellcheck shell=bash
# scripts/slurm/chain.sh: the machinery of the .sbatch templates beside it (sourced, not run).
# docs/gpu-box.md, Clusters (SLURM).
#
#   run_stage COMMAND ARGS...  runs `$INCSEG COMMAND ARGS... $OPTS_<COMMAND>` in the background
#                              and waits for it: under torchrun when GPUS > 1 (one node) or
#                              NNODES > 1 (srun starts one torchrun per node) for the commands
#                              that run under torchrun, as one process otherwise. A stage that
#                              fails ends the chain with its exit code.
#   run_chain FUNCTION         runs the chain FUNCTION, or the `chain` function of the file
#                              $CHAIN when that is set (a chain of your own, or the tests' toy one).
#   iabn_file                  prints InPlace-ABN's ImageNet weights file if one is found
#                              ($IABN_WEIGHTS, $INCSEG_WEIGHTS, data/weights, torch's cache), as
#                              the Makefile's PAPER_WEIGHTS.
#
# Every incseg stage skips itself when its output is complete and resumes from last.pt when it
# was interrupted, so rerunning a chain continues where it stopped. Signals to this script:
#   USR1 (sbatch --signal=B:USR1@120, two minutes before the time limit or a pre-emption):
#        the running stage gets SIGTERM (incseg writes last.pt at the next iteration boundary
#        and exits), the script waits for it to end, then `scontrol requeue $SLURM_JOB_ID`
#        puts the job back in the queue; its rerun skips every finished stage and resumes the
#        interrupted one. Without SLURM (plain bash, or no scontrol) it exits 130 instead.
#   TERM, INT (scancel, Ctrl-C, kill): the same stop, never a requeue; exits 130. Under SLURM
#        the stage is not sent another SIGTERM: scancel, the time limit and pre-emption signal
#        every process of the job already (a second one would cut short torchrun's shutdown).
# The stage runs in the background because bash runs a trap only once its foreground command
# has ended; `wait` returns early when a trapped signal arrives, so run_stage waits again
# until the stage has really ended.
#
# Environment (defaults in brackets): INCSEG [incseg], VOC_ROOT [data/VOCdevkit/VOC2012],
# RUNS [runs], GPUS [$SLURM_GPUS_ON_NODE, else 1], NNODES [$SLURM_NNODES, else 1],
# RDZV_HOST [the job's first node], RDZV_PORT [29500], TORCHRUN [torchrun beside $INCSEG, else torchrun], SRUN [srun],
# SRUN_OPTS [], CHAIN [], OPTS_TRAIN_BASE, OPTS_TRAIN_STEP, OPTS_EXTRACT_FEATURES,
# OPTS_FIT_ROTATIONS, OPTS_FINETUNE_CLASSIFIER, OPTS_EVALUATE: options appended to every
# stage of that command (split on spaces, e.g. OPTS_TRAIN_BASE="--amp bf16").

INCSEG=${INCSEG:-incseg}
VOC_ROOT=${VOC_ROOT:-data/VOCdevkit/VOC2012}
RUNS=${RUNS:-runs}
GPUS=${GPUS:-${SLURM_GPUS_ON_NODE:-1}}
NNODES=${NNODES:-${SLURM_NNODES:-1}}
RDZV_PORT=${RDZV_PORT:-29500}
SRUN=${SRUN:-srun}
SRUN_OPTS=${SRUN_OPTS:-}
GPUS=${GPUS%%(*}  # SLURM_GPUS_ON_NODE may read "4(IDX:0-3)" on some versions

chain_log() { printf '%s chain: %s\n' "$(date '+%F %T')" "$*" >&2; }

# The commands that run under torchrun (docs/gpu-box.md, Several GPUs); the others run as one process.
_chain_distributed() {
    case $1 in train-base|train-step|finetune-classifier|evaluate) return 0 ;; *) return 1 ;; esac
}

_chain_stop=       # USR1, TERM or INT once received: the chain stops
_chain_pid=        # the running stage (incseg, torchrun or srun)
_chain_in_stage=0  # run_stage is starting, running or reaping a stage
_chain_termed=0    # the running stage was sent its SIGTERM
_chain_stages=0    # stages started, for torchrun's rendezvous ids

_chain_term_stage() {
    if [[ -n $_chain_pid ]] && (( ! _chain_termed )); then
        _chain_termed=1
        if [[ $_chain_stop == USR1 || -z ${SLURM_JOB_ID:-} ]]; then
            kill -TERM "$_chain_pid" 2>/dev/null || true
        fi
    fi
    return 0
}

_chain_stopped() {
    if [[ $_chain_stop == USR1 && -n ${SLURM_JOB_ID:-} ]] && command -v scontrol >/dev/null 2>&1; then
        if scontrol requeue "$SLURM_JOB_ID"; then
            chain_log "requeued job $SLURM_JOB_ID: its rerun skips the finished stages and resumes the interrupted one"
            exit 130
        fi
        chain_log "scontrol requeue $SLURM_JOB_ID failed"
    fi
    chain_log "stopped ($_chain_stop): rerun to resume (finished stages skip, the interrupted one resumes from last.pt)"
    exit 130
}

_chain_signal() {
    if [[ -n $_chain_stop ]]; then return 0; fi  # already stopping
    _chain_stop=$1
    if (( _chain_in_stage )); then
        chain_log "$1: stopping the running stage (it writes last.pt at the next iteration boundary)"
        _chain_term_stage
        return 0  # run_stage ends the chain once the stage has ended
    fi
    _chain_stopped
}

trap '_chain_signal USR1' USR1
trap '_chain_signal TERM' TERM
trap '_chain_signal INT' INT

# The rendezvous host of a multi-node stage: the job's first node (where this script runs).
_chain_head_node() {
    if [[ -z ${RDZV_HOST:-} && -n ${SLURM_JOB_NODELIST:-} ]] && command -v scontrol >/dev/null 2>&1; then
        RDZV_HOST=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
    fi
    RDZV_HOST=${RDZV_HOST:-$(hostname)}
}

run_stage() {
    local command=$1 program rc=0 r
    shift
    local opts_var=OPTS_${command//-/_}
    opts_var=${opts_var^^}
    local -a extra=() launch=() srun_opts=()
    read -r -a extra <<< "${!opts_var:-}"
    read -r -a srun_opts <<< "$SRUN_OPTS"
    program=$(command -v "$INCSEG") || { chain_log "$INCSEG: command not found (set INCSEG)"; exit 127; }
    _chain_stages=$((_chain_stages + 1))
    if _chain_distributed "$command" && (( NNODES > 1 )); then
        _chain_head_node
        launch=("$SRUN" --nodes "$NNODES" --ntasks-per-node 1 ${SLURM_CPUS_PER_TASK:+--cpus-per-task "$SLURM_CPUS_PER_TASK"}
                ${srun_opts[@]+"${srun_opts[@]}"}
                "$TORCHRUN" --nnodes "$NNODES" --nproc-per-node "$GPUS" --rdzv-backend c10d
                --rdzv-endpoint "$RDZV_HOST:$RDZV_PORT" --rdzv-id "${SLURM_JOB_ID:-incseg}-$_chain_stages" "$program")
    elif _chain_distributed "$command" && (( GPUS > 1 )); then
        launch=("$TORCHRUN" --standalone --nnodes 1 --nproc-per-node "$GPUS" "$program")
    else
        launch=("$program")
    fi
    _chain_in_stage=1
    if [[ -n $_chain_stop ]]; then _chain_in_stage=0; _chain_stopped; fi
    chain_log "stage $_chain_stages: ${launch[*]} $command $*${extra[*]+ ${extra[*]}}"
    _chain_termed=0
    "${launch[@]}" "$command" "$@" ${extra[@]+"${extra[@]}"} &
    _chain_pid=$!
    if [[ -n $_chain_stop ]]; then _chain_term_stage; fi  # a signal between the two lines above
    wait "$_chain_pid" || rc=$?
    # A trapped signal ends `wait` early (status > 128) while the stage goes on writing last.pt.
    while [[ -n $_chain_stop ]] && kill -0 "$_chain_pid" 2>/dev/null; do
        r=0
        wait "$_chain_pid" 2>/dev/null || r=$?
        if (( r == 127 )); then break; fi  # not (or no longer) our child
    done
    _chain_pid=
    _chain_in_stage=0
    if [[ -n $_chain_stop ]]; then _chain_stopped; fi
    if (( rc == 130 )); then
        chain_log "stage $_chain_stages was interrupted: rerun to resume"
        exit 130
    elif (( rc != 0 )); then
        chain_log "stage $_chain_stages failed (exit $rc): $command $*"
        exit "$rc"
    fi
    return 0
}

run_chain() {
    local start=$SECONDS
    if [[ -n ${CHAIN:-} ]]; then
        # shellcheck source=/dev/null
        source "$CHAIN"
        set -- chain
    fi
    chain_log "start${SLURM_JOB_ID:+ (job $SLURM_JOB_ID, restart ${SLURM_RESTART_COUNT:-0})}: GPUS=$GPUS NNODES=$NNODES RUNS=$RUNS"
    "$1"
    chain_log "chain complete in $((SECONDS - start)) s"
}

iabn_file() {
    local file=resnet101_iabn_sync.pth.tar dir
    if [[ -n ${IABN_WEIGHTS:-} ]]; then printf '%s\n' "$IABN_WEIGHTS"; return 0; fi
    for dir in ${INCSEG_WEIGHTS:+"$INCSEG_WEIGHTS"} data/weights \
               "${TORCH_HOME:-${XDG_CACHE_HOME:-$HOME/.cache}/torch}/hub/checkpoints"; do
        if [[ -f $dir/$file ]]; then printf '%s\n' "$dir/$file"; return 0; fi
    done
    return 0
}

if [[ -z ${TORCHRUN:-} ]]; then
    TORCHRUN=torchrun
    _chain_program=$(command -v "$INCSEG" 2>/dev/null || true)
    if [[ $_chain_program == */* && -x ${_chain_program%/*}/torchrun ]]; then TORCHRUN=${_chain_program%/*}/torchrun; fi
fi
