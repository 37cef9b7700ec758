"""sweep: a grid of runs as a Makefile."""

from __future__ import annotations

import json

from incseg_cli.cli.app import app
from incseg_cli.cli.declared import Parsed, declared_command
from incseg_cli.cli.options import json_option
from incseg_cli.console import log
from incseg_cli.stages.sweep import SweepOptions, write_sweep


@declared_command(app, "sweep", [(None, SweepOptions)], extra=[json_option("a JSON summary")], recipe=False)
def sweep(parsed: Parsed) -> None:
    """Write a Makefile that runs a grid of methods × tasks × seeds × class orders, then reports it.

    Every target is one incseg command whose run directory's checkpoint.pt is the target, with
    the run it continues as prerequisite: `make -j N -f FILE` runs independent chains side by
    side, and a rerun skips complete runs and resumes interrupted ones. The last target is
    `incseg report` over every run (mean ± std over the seeds, class × step forgetting tables
    and plots) into RUNS/report/. On a cluster, run the same file inside one allocation
    (`srun make -j N -f FILE`).

    **Examples**

    ```
    incseg sweep --out sweep.mk --data demo/toy --task 10-5-5-ov --method mib --method plop --seed 0 --seed 1 --seed 2 --preset toy
    make -j 2 -f sweep.mk
    incseg sweep --out orders.mk --data data/VOC2012 --task 15-1-ov --method dkd-m --class-order papers --class-order random:1
    ```
    """
    summary = write_sweep(parsed.build(SweepOptions))
    log(f"wrote {summary['out']}: {summary['runs']} runs; run it with `{summary['command']}`")
    if parsed.extra["json_out"]:
        print(json.dumps(summary, indent=2))
