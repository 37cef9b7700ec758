"""sweep: a grid of methods × tasks × seeds × class orders as a Makefile or a SLURM array script.

``sweep_grid`` builds the grid once: every stage is one incseg command writing one run
directory, with the run it continues as its prerequisite, grouped by the step-0 run it
continues from (task, class order, seed, step-0 loss). Two writers render it.

The Makefile (``--format make``): every target is a run's ``checkpoint.pt`` (a split's
``task.json``), so ``make -j N -f sweep.mk`` runs independent chains side by side, a rerun skips
what is complete and resumes what was interrupted (the stages do that themselves), and the last
target is ``incseg report`` over every run with mean ± std over seeds and the forgetting tables
and plots. The same file runs inside one SLURM allocation (``srun make -j N -f sweep.mk``).

The sbatch script (``--format slurm``): one array task per step-0 group runs its prepare-splits
(under ``flock``, skipped once ``task.json`` exists, as make skips it), its train-base, then every
chain continuing it, each through ``run_stage`` of ``scripts/slurm/chain.sh`` so that USR1
before the time limit requeues the job and its rerun resumes; the script run with ``report``
runs the Makefile's last target. The array range is given at submission, not in the file.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import incseg_cli
from incseg_cli import datasets
from incseg_cli.config import option, validate
from incseg_cli.console import warn
from incseg_cli.datasets.orders import PAPERS
from incseg_cli.errors import UsageError
from incseg_cli.fileio import write_text
from incseg_cli.limits import AT_LEAST_1
from incseg_cli.methods.registry import STEP_METHODS
from incseg_cli.tasks import get_task, order_file, split_key, with_order

# The step-0 loss each method continues from (DKD's sigmoid model; the others a CE model).
BASE_LOSS = {"dkd": "dkd", "dkd-m": "dkd"}
FORMATS = ("make", "slurm")


def default_chain_script() -> Path:
    """``scripts/slurm/chain.sh`` of the checkout incseg_cli is installed from (it may not exist)."""
    return Path(incseg_cli.__file__).resolve().parents[1] / "scripts" / "slurm" / "chain.sh"


@dataclass(kw_only=True)
class SweepOptions:
    """What ``incseg sweep`` takes."""

    out: Path = option(required=True, metavar="FILE",
                       help="The file to write: a Makefile (e.g. sweep.mk), or with --format slurm an sbatch "
                            "script (e.g. sweep.sbatch).")
    data: Path = option(required=True, help="Dataset root every run reads.")
    dataset: Optional[str] = datasets.dataset_option("voc, coco, ade or one of your own. [the one --data describes]")
    task: list[str] = option(required=True, help="Task of the grid (repeatable), e.g. 10-5-5-ov.")
    method: list[str] = option(required=True, choices=lambda: list(STEP_METHODS),
                               help="Step method of the grid (repeatable): each gets its chain from a step-0 run "
                                    "(a --loss dkd one for dkd and dkd-m).")
    seed: list[int] = option([0], help="Seed of the grid (repeatable). [0]")
    class_order: list[str] = option([PAPERS], metavar="ORDER",
                                    help="Class order of the grid (repeatable): papers, random:SEED, a named order "
                                         "(`incseg list-tasks --orders`) or a file ORDER.json. [papers]")
    runs: Path = option(Path("runs/sweep"), help="Where the run directories go: RUNS/DATASET/TASK/seedS/...")
    splits: Optional[Path] = option(help="Splits root the runs read and prepare-splits writes. [RUNS/splits]")
    preset: Optional[str] = option(help="--preset of every stage. [each dataset's own]")
    base_args: Optional[str] = option(metavar="ARGS", help="Extra options of every train-base, e.g. \"--epochs 2\".")
    step_args: Optional[str] = option(metavar="ARGS", help="Extra options of every train-step, e.g. \"--epochs 2\".")
    jobs: int = option(2, limit=AT_LEAST_1, help="The -j the Makefile suggests in its first line.")
    format: str = option("make", choices=FORMATS,
                         help="make: a Makefile (make -j N runs it); slurm: an sbatch script with one array task "
                              "per step-0 run and its chains, then a report job.")
    chain_script: Optional[Path] = option(
        metavar="PATH", help="--format slurm: the chain.sh the script sources (its run_stage runs every stage). "
                             "[scripts/slurm/chain.sh of the checkout incseg is installed from]")


@dataclass(frozen=True)
class SweepStage:
    """One incseg command: ``target`` is the file that says it is done, ``after`` the file of
    the stage it continues ('' for none), ``args`` the command and its arguments."""

    target: str
    after: str
    args: tuple[str, ...]


@dataclass
class SweepGroup:
    """One step-0 run (one array task of the sbatch script): the prepare-splits of its task and
    order, its train-base, then the chain of every method continuing it, in the order they run."""

    step0: str
    prepare: SweepStage
    stages: list[SweepStage]
    methods: list[str] = field(default_factory=list)


@dataclass
class SweepGrid:
    """The grid both writers render: ``stages`` in the Makefile's order (each prepare-splits
    once), ``groups`` in array-index order, ``run_dirs`` every run the report reads."""

    stages: list[SweepStage]
    groups: list[SweepGroup]
    run_dirs: list[str]
    finals: list[str]
    report_dir: Path
    summary: str


def _cmd(*parts: Any) -> str:
    return " ".join(shlex.quote(str(p)) for p in parts)


def _extra(text: str | None, option_name: str) -> list[str]:
    try:
        return shlex.split(text or "")
    except ValueError as err:
        raise UsageError(f"--{option_name} {text!r}: {err}") from None


def _stage(target: Any, after: Any, *args: Any) -> SweepStage:
    return SweepStage(str(target), str(after) if after else "", tuple(str(a) for a in args))


def sweep_grid(options: SweepOptions) -> SweepGrid:
    """The grid's stages, grouped by the step-0 run each continues."""
    o = validate(options)
    dataset = datasets.resolve(o.dataset, o.data)
    splits = o.splits or o.runs / "splits"
    preset = ["--preset", o.preset] if o.preset else []
    base_extra, step_extra = _extra(o.base_args, "base-args"), _extra(o.step_args, "step-args")
    tool = "make" if o.format == "make" else "the sbatch script"
    for path, flag in ((o.data, "--data"), (o.runs, "--runs"), (splits, "--splits"), (o.out, "--out")):
        if any(ch.isspace() for ch in str(path)):
            raise UsageError(f"{flag} {path}: {tool} cannot name paths with spaces; choose another")
    stages: list[SweepStage] = []
    groups: list[SweepGroup] = []
    finals: list[str] = []
    run_dirs: list[str] = []
    prepared: dict[str, SweepStage] = {}
    # a value given twice (or random:1 beside random-1) would be two array tasks training one run
    methods, seeds = list(dict.fromkeys(o.method)), list(dict.fromkeys(o.seed))
    losses = sorted({BASE_LOSS.get(m, "ce") for m in methods})
    swept: set[str] = set()
    for name in o.task:
        for order in o.class_order:
            task = get_task(dataset, with_order(dataset, name, order))
            if task.key in swept:
                continue
            swept.add(task.key)
            if task.num_steps < 2:
                raise UsageError(f"--task {name}: a sweep learns incremental tasks (two steps or more)")
            # an order of one's own is named by its file until a checkpoint carries it
            path = order_file(order)
            task_args = (["--task", task.key] if path is None
                         else ["--task", split_key(task.key)[0], "--class-order", path.resolve()])
            split_target = f"{splits}/{dataset}/{task.key}/task.json"
            if split_target not in prepared:
                prepared[split_target] = _stage(split_target, "", "prepare-splits", "--data", o.data, "--dataset",
                                                dataset, *task_args, "--out", splits)
                stages.append(prepared[split_target])
            for seed in seeds:
                root = o.runs / dataset / task.key / f"seed{seed}"
                by_loss: dict[str, SweepGroup] = {}
                for loss in losses:
                    step0 = root / f"step0-{loss}"
                    base = _stage(f"{step0}/checkpoint.pt", split_target, "train-base", "--data", o.data, "--dataset",
                                  dataset, *task_args, "--loss", loss, "--seed", seed, "--splits", splits,
                                  *preset, *base_extra, "--out", step0)
                    by_loss[loss] = SweepGroup(str(step0), prepared[split_target], [base])
                    stages.append(base)
                    run_dirs.append(str(step0))
                for method in methods:
                    loss = BASE_LOSS.get(method, "ce")
                    by_loss[loss].methods.append(method)
                    prev = root / f"step0-{loss}"
                    for step in range(1, task.num_steps):
                        out = root / f"step{step}-{method}"
                        stage = _stage(f"{out}/checkpoint.pt", f"{prev}/checkpoint.pt", "train-step", "--prev", prev,
                                       "--method", method, "--data", o.data, "--seed", seed, "--splits", splits,
                                       *preset, *step_extra, "--out", out)
                        by_loss[loss].stages.append(stage)
                        stages.append(stage)
                        run_dirs.append(str(out))
                        prev = out
                    finals.append(str(prev))
                groups += by_loss.values()
    summary = (f"{len(methods)} method(s) x {len(o.task)} task(s) x {len(seeds)} seed(s) x "
               f"{len(o.class_order)} class order(s), {len(run_dirs)} runs")
    return SweepGrid(stages, groups, run_dirs, finals, o.runs / "report", summary)


def _report_lines(grid: SweepGrid, incseg: str) -> list[str]:
    """The report: every run into ``report.json`` through a .tmp, so that a failed report
    never leaves one that looks complete."""
    report = shlex.quote(str(grid.report_dir))
    return [
        f"mkdir -p {report}",
        f"{incseg} report {' '.join(map(shlex.quote, grid.run_dirs))} --no-published --tables {report} "
        f"--plots {report} --json > {report}/report.json.tmp",
        f"mv {report}/report.json.tmp {report}/report.json",
    ]


def _rule(stage: SweepStage) -> list[str]:
    """A make rule whose recipe is one incseg command."""
    return [f"{stage.target}:{' ' + stage.after if stage.after else ''}", f"\t$(INCSEG) {_cmd(*stage.args)}", ""]


def render_makefile(grid: SweepGrid, options: SweepOptions) -> str:
    """The Makefile of the grid."""
    rules = [line for stage in grid.stages for line in _rule(stage)]
    head = [
        f"# incseg sweep: {grid.summary}.",
        f"# Run: make -j {options.jobs} -f {options.out}   (a rerun skips complete runs and resumes interrupted ones)",
        "INCSEG ?= incseg",
        f"# make -j {options.jobs} runs {options.jobs} incseg processes side by side: each gets its share of the cores",
        "# (torch's default, every core in every process, slowed a 2-core CPU five times over). Set",
        "# OMP_NUM_THREADS in the environment to choose otherwise.",
        f"SWEEP_THREADS := $(shell n=$$(nproc 2>/dev/null || echo 1); t=$$((n / {options.jobs})); "
        "echo $$((t > 0 ? t : 1)))",
        "export OMP_NUM_THREADS ?= $(SWEEP_THREADS)",
        "",
        f"all: {grid.report_dir}/report.json",
        "",
        f"{grid.report_dir}/report.json: {' '.join(f'{r}/checkpoint.pt' for r in grid.finals)}",
        *(f"\t{line}" for line in _report_lines(grid, "$(INCSEG)")),
        "",
        ".PHONY: all",
        "",
    ]
    return "\n".join(head + rules)


def submit_lines(out: Path | str, size: int) -> list[str]:
    """The two sbatch lines that run a sweep script: its array, then the report after it."""
    script = shlex.quote(str(out))
    return [f"jid=$(sbatch --parsable --array=0-{size - 1} {script})",
            f"sbatch --dependency=afterok:$jid {script} report"]


def resolve_chain_script(given: Path | None) -> Path:
    """The chain.sh the sbatch script sources, as an absolute path: a job runs it wherever it starts."""
    path = given if given is not None else default_chain_script()
    if not path.is_file():
        where = f"{path}: no such file" if given is not None else f"not given, and {path} does not exist"
        raise UsageError(f"--chain-script {where}; give the path of incseg's scripts/slurm/chain.sh")
    path = path.resolve()
    if any(ch.isspace() for ch in str(path)):
        raise UsageError(f"--chain-script {path}: the sbatch script cannot name paths with spaces; choose another")
    return path


def _job_name(out: Path) -> str:
    return "incseg-" + (re.sub(r"[^A-Za-z0-9._-]+", "-", out.stem) or "sweep")


def render_sbatch(grid: SweepGrid, options: SweepOptions, chain_script: Path) -> str:
    """The sbatch script of the grid: array task I runs group I; ``report`` runs the report."""
    last = len(grid.groups) - 1
    out = shlex.quote(str(options.out))
    job = '"${SLURM_JOB_ID:+ (job $SLURM_JOB_ID, restart ${SLURM_RESTART_COUNT:-0})}"'
    head = [
        "#!/bin/bash",
        f"#SBATCH --job-name={_job_name(options.out)}",
        "#SBATCH --signal=B:USR1@120",
        "#SBATCH --requeue",
        "#SBATCH --open-mode=append",
        "#SBATCH --output=%x-%j.out",
        f"# incseg sweep: {grid.summary}, in {last + 1} array task(s).",
        "# Each array task is one step-0 run: its prepare-splits (once per task and class order, under",
        "# flock), its train-base, then every chain continuing it, each stage through run_stage of",
        "# chain.sh (docs/gpu-box.md, Clusters (SLURM)). `report` runs the report over every run.",
        "# Submit from the directory incseg sweep ran in (the paths below are relative to it), adding",
        "# --time, --gpus-per-node... to the first line; the array range is given there, not in the file:",
        *(f"#   {line}" for line in submit_lines(options.out, last + 1)),
        "# Two minutes before the time limit the running stage writes last.pt and the array task",
        "# requeues itself; its rerun skips the finished stages and resumes the interrupted one.",
        "# Without SLURM, one array task after the other, then the report:",
        f"#   SLURM_ARRAY_TASK_ID=I bash {out}   (I in 0-{last});   bash {out} report",
        "# With neither it prints its usage and exits 2. Environment: INCSEG, GPUS, OPTS_TRAIN_BASE...",
        "# as chain.sh describes.",
        "set -euo pipefail",
        f"source {shlex.quote(str(chain_script))}",
        "",
        "# The array tasks of one task and class order share its split files: the first writes them",
        "# under the lock, the others then find task.json and skip, because prepare-splits replaces the",
        "# whole directory, which a stage of another array task may be reading by then. task.json",
        "# appears once the directory is complete, so finding it needs no lock.",
        "sweep_prepare() {",
        "    local lock=$1 done=$2",
        "    shift 2",
        '    if [[ -f $done ]]; then chain_log "$done exists: prepare-splits skipped"; return 0; fi',
        '    mkdir -p "${lock%/*}"',
        "    {",
        "        flock 9 || { chain_log \"flock $lock failed: prepare the splits before submitting, or put --splits\" \\",
        '                         "on a file system with flock"; exit 1; }',
        '        if [[ -f $done ]]; then chain_log "$done exists: prepare-splits skipped"; else run_stage "$@"; fi',
        '    } 9>"$lock"',
        "}",
        "",
        "if [[ ${1:-} == report && $# -eq 1 ]]; then",
        f"    chain_log report{job}",
        *(f"    {line}" for line in _report_lines(grid, "run_stage")),
        '    chain_log "report complete"',
        "    exit 0",
        "fi",
        "if [[ $# -gt 0 || -z ${SLURM_ARRAY_TASK_ID:-} ]]; then",
        *(f"    echo {shlex.quote(line)} >&2" for line in [
            f"usage: {' && '.join(submit_lines(options.out, last + 1))}",
            f"   or, without SLURM: SLURM_ARRAY_TASK_ID=I bash {options.out} for each I in 0-{last}, "
            f"then bash {options.out} report"]),
        "    exit 2",
        "fi",
        "_sweep_start=$SECONDS",
        "case $SLURM_ARRAY_TASK_ID in",
    ]
    body: list[str] = []
    for index, group in enumerate(grid.groups):
        split_dir = Path(group.prepare.target).parent
        lock = split_dir.with_name(f".{split_dir.name}.sweep-lock")
        title = f"array task {index}: {group.step0}, then {', '.join(group.methods)}"
        body += [
            f"{index})",
            f"    chain_log {shlex.quote(title)}{job}",
            f"    sweep_prepare {_cmd(lock, group.prepare.target, *group.prepare.args)}",
            *(f"    run_stage {_cmd(*stage.args)}" for stage in group.stages),
            "    ;;",
        ]
    tail = [
        "*)",
        f'    echo {out}": no array task $SLURM_ARRAY_TASK_ID: this sweep has 0-{last} (sbatch --array=0-{last})" >&2',
        "    exit 2",
        "    ;;",
        "esac",
        'chain_log "array task $SLURM_ARRAY_TASK_ID complete in $((SECONDS - _sweep_start)) s"',
        "",
    ]
    return "\n".join(head + body + tail)


def write_sweep(options: SweepOptions) -> dict[str, Any]:
    """``incseg sweep``: write the Makefile or the sbatch script (atomically);
    ``{"out", "format", "runs", "command"}``, and for slurm ``"array_size"`` and ``"submit"``."""
    grid = sweep_grid(options)
    if options.format == "slurm":
        chain_script = resolve_chain_script(options.chain_script)
        submit = submit_lines(options.out, len(grid.groups))
        write_text(options.out, render_sbatch(grid, options, chain_script))
        return {"out": str(options.out), "format": "slurm", "runs": len(grid.run_dirs),
                "array_size": len(grid.groups), "submit": submit, "command": " && ".join(submit),
                "chain_script": str(chain_script)}
    if options.chain_script is not None:
        warn("--chain-script is only used with --format slurm; ignored")
    write_text(options.out, render_makefile(grid, options))
    return {"out": str(options.out), "format": "make", "runs": len(grid.run_dirs),
            "command": f"make -j {options.jobs} -f {options.out}"}
