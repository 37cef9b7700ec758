"""sweep: a grid of runs as a Makefile or a SLURM array script."""

from __future__ import annotations

import json

from incseg_cli.cli.app import app
from incseg_cli.cli.declared import Parsed, declared_command
from incseg_cli.cli.options import json_option
from incseg_cli.console import log
from incseg_cli.stages.sweep import SweepOptions, write_sweep


@declared_command(app, "sweep", [(None, SweepOptions)], extra=[json_option("a JSON summary")], recipe=False)
def sweep(parsed: Parsed) -> None:
    """Write a Makefile or SLURM array script that runs a grid of methods × tasks × seeds × class orders and its report.

    Every target is one incseg command whose run directory's checkpoint.pt is the target, with
    the run it continues as prerequisite: `make -j N -f FILE` runs independent chains side by
    side, and a rerun skips complete runs and resumes interrupted ones. The last target is
    `incseg report` over every run (mean ± std over the seeds, class × step forgetting tables
    and plots) into RUNS/report/. On a cluster, run the same file inside one allocation
    (`srun make -j N -f FILE`).

    With `--format slurm`, FILE is an sbatch script instead, the same commands: array task I
    runs one step-0 run (its prepare-splits under flock, its train-base), then every chain
    continuing it, each stage through run_stage of scripts/slurm/chain.sh (USR1 before the time
    limit: last.pt, requeue, resume); `FILE report` runs the report. Submit the array, then the
    report after it: `jid=$(sbatch --parsable --array=0-K FILE)` and
    `sbatch --dependency=afterok:$jid FILE report` (the summary gives K). Under plain bash,
    `SLURM_ARRAY_TASK_ID=I bash FILE` runs array task I; with neither, it prints its usage.

    **Examples**

    ```
    incseg sweep --out sweep.mk --data demo/toy --task 10-5-5-ov --method mib --method plop --seed 0 --seed 1 --seed 2 --preset toy
    make -j 2 -f sweep.mk
    incseg sweep --out orders.mk --data data/VOC2012 --task 15-1-ov --method dkd-m --class-order papers --class-order random:1
    incseg sweep --format slurm --out sweep.sbatch --data data/VOC2012 --task 15-5-ov --method mib --method dkd --seed 0 --seed 1
    jid=$(sbatch --parsable --array=0-3 --gpus-per-node=1 --time=24:00:00 sweep.sbatch)
    sbatch --dependency=afterok:$jid sweep.sbatch report
    ```
    """
    summary = write_sweep(parsed.build(SweepOptions))
    if summary["format"] == "slurm":
        log(f"wrote {summary['out']}: {summary['runs']} runs in {summary['array_size']} array "
            f"task{'s' if summary['array_size'] != 1 else ''}; submit it with "
            f"`{summary['submit'][0]}` then `{summary['submit'][1]}`")
    else:
        log(f"wrote {summary['out']}: {summary['runs']} runs; run it with `{summary['command']}`")
    if parsed.extra["json_out"]:
        print(json.dumps(summary, indent=2))
