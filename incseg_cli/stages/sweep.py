"""sweep: a grid of methods × tasks × seeds × class orders as a Makefile.

Every target is one incseg command writing one run directory (its ``checkpoint.pt`` is the
make target), with the run it continues as its prerequisite, so ``make -j N -f sweep.mk``
runs independent chains side by side, a rerun skips what is complete and resumes what was
interrupted (the stages do that themselves), and the last target is ``incseg report`` over
every run with mean ± std over seeds and the forgetting tables and plots. The same file runs
inside one SLURM allocation (``srun make -j N -f sweep.mk``).
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from incseg_cli import datasets
from incseg_cli.config import option, validate
from incseg_cli.errors import UsageError
from incseg_cli.fileio import write_text
from incseg_cli.limits import AT_LEAST_1
from incseg_cli.methods.registry import STEP_METHODS
from incseg_cli.tasks import get_task, with_order

# The step-0 loss each method continues from (DKD's sigmoid model; the others a CE model).
BASE_LOSS = {"dkd": "dkd", "dkd-m": "dkd"}


@dataclass(kw_only=True)
class SweepOptions:
    """What ``incseg sweep`` takes."""

    out: Path = option(required=True, metavar="FILE", help="The Makefile to write (e.g. sweep.mk).")
    data: Path = option(required=True, help="Dataset root every run reads.")
    dataset: Optional[str] = datasets.dataset_option("voc, coco, ade or one of your own. [the one --data describes]")
    task: list[str] = option(required=True, help="Task of the grid (repeatable), e.g. 10-5-5-ov.")
    method: list[str] = option(required=True, choices=lambda: list(STEP_METHODS),
                               help="Step method of the grid (repeatable): each gets its chain from a step-0 run "
                                    "(a --loss dkd one for dkd and dkd-m).")
    seed: list[int] = option([0], help="Seed of the grid (repeatable). [0]")
    class_order: list[str] = option(["papers"], metavar="ORDER",
                                    help="Class order of the grid (repeatable): papers, or random:SEED. [papers]")
    runs: Path = option(Path("runs/sweep"), help="Where the run directories go: RUNS/DATASET/TASK/seedS/...")
    splits: Optional[Path] = option(help="Splits root the runs read and prepare-splits writes. [RUNS/splits]")
    preset: Optional[str] = option(help="--preset of every stage. [each dataset's own]")
    base_args: Optional[str] = option(metavar="ARGS", help="Extra options of every train-base, e.g. \"--epochs 2\".")
    step_args: Optional[str] = option(metavar="ARGS", help="Extra options of every train-step, e.g. \"--epochs 2\".")
    jobs: int = option(2, limit=AT_LEAST_1, help="The -j the file suggests in its first line.")


def _cmd(*parts: Any) -> str:
    return " ".join(shlex.quote(str(p)) for p in parts)


def _extra(text: str | None, option_name: str) -> list[str]:
    try:
        return shlex.split(text or "")
    except ValueError as err:
        raise UsageError(f"--{option_name} {text!r}: {err}") from None


def _rule(target: str, prerequisite: str, *command: Any) -> list[str]:
    """A make rule whose recipe is one incseg command."""
    return [f"{target}:{' ' + prerequisite if prerequisite else ''}", f"\t$(INCSEG) {_cmd(*command)}", ""]


def sweep_makefile(options: SweepOptions) -> tuple[str, int]:
    """The Makefile text of the grid, and how many runs it has."""
    o = validate(options)
    dataset = datasets.resolve(o.dataset, o.data)
    splits = o.splits or o.runs / "splits"
    preset = ["--preset", o.preset] if o.preset else []
    base_extra, step_extra = _extra(o.base_args, "base-args"), _extra(o.step_args, "step-args")
    for path, flag in ((o.data, "--data"), (o.runs, "--runs"), (splits, "--splits"), (o.out, "--out")):
        if any(ch.isspace() for ch in str(path)):
            raise UsageError(f"{flag} {path}: make cannot name paths with spaces; choose another")
    rules: list[str] = []
    finals: list[str] = []
    run_dirs: list[str] = []
    prepared: set[str] = set()
    for name in o.task:
        for order in o.class_order:
            task = get_task(dataset, with_order(name, order))
            if task.num_steps < 2:
                raise UsageError(f"--task {name}: a sweep learns incremental tasks (two steps or more)")
            split_target = f"{splits}/{dataset}/{task.key}/task.json"
            if split_target not in prepared:
                prepared.add(split_target)
                rules += _rule(split_target, "", "prepare-splits", "--data", o.data, "--dataset", dataset, "--task",
                               task.key, "--out", splits)
            for seed in o.seed:
                root = o.runs / dataset / task.key / f"seed{seed}"
                for loss in sorted({BASE_LOSS.get(m, "ce") for m in o.method}):
                    step0 = root / f"step0-{loss}"
                    rules += _rule(f"{step0}/checkpoint.pt", split_target, "train-base", "--data", o.data, "--dataset",
                                   dataset, "--task", task.key, "--loss", loss, "--seed", seed, "--splits", splits,
                                   *preset, *base_extra, "--out", step0)
                    run_dirs.append(str(step0))
                for method in o.method:
                    prev = root / f"step0-{BASE_LOSS.get(method, 'ce')}"
                    for step in range(1, task.num_steps):
                        out = root / f"step{step}-{method}"
                        rules += _rule(f"{out}/checkpoint.pt", f"{prev}/checkpoint.pt", "train-step", "--prev", prev,
                                       "--method", method, "--data", o.data, "--seed", seed, "--splits", splits,
                                       *preset, *step_extra, "--out", out)
                        run_dirs.append(str(out))
                        prev = out
                    finals.append(str(prev))
    report_dir = o.runs / "report"
    head = [
        f"# incseg sweep: {len(o.method)} method(s) x {len(o.task)} task(s) x {len(o.seed)} seed(s) x "
        f"{len(o.class_order)} class order(s), {len(run_dirs)} runs.",
        f"# Run: make -j {o.jobs} -f {o.out}   (a rerun skips complete runs and resumes interrupted ones)",
        "INCSEG ?= incseg",
        "",
        f"all: {report_dir}/report.json",
        "",
        f"{report_dir}/report.json: {' '.join(f'{r}/checkpoint.pt' for r in finals)}",
        f"\tmkdir -p {shlex.quote(str(report_dir))}",
        f"\t$(INCSEG) report {' '.join(map(shlex.quote, run_dirs))} --no-published --tables {shlex.quote(str(report_dir))} "
        f"--plots {shlex.quote(str(report_dir))} --json > {shlex.quote(str(report_dir))}/report.json.tmp",
        f"\tmv {shlex.quote(str(report_dir))}/report.json.tmp {shlex.quote(str(report_dir))}/report.json",
        "",
        ".PHONY: all",
        "",
    ]
    return "\n".join(head + rules), len(run_dirs)


def write_sweep(options: SweepOptions) -> dict[str, Any]:
    """``incseg sweep``: write the Makefile (atomically); ``{"out", "runs", "command"}``."""
    text, runs = sweep_makefile(options)
    write_text(options.out, text)
    return {"out": str(options.out), "runs": runs, "command": f"make -j {options.jobs} -f {options.out}"}
