"""status: where running and finished runs stand."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from incseg_cli.cli.app import app
from incseg_cli.console import warn
from incseg_cli.errors import InputError


@app.command("status")
def status(
    runs: Annotated[list[Path], typer.Argument(metavar="RUN...", help="Run directories, predict or evaluate --save-predictions folders, or the output file of evaluate --out / fit-rotations / extract-features / rotate-bank.", show_default=False)],
    json_out: Annotated[bool, typer.Option("--json", help="Print a JSON list on stdout, one object per run.")] = False,
) -> None:
    """Where each run stands: running, interrupted, complete, failed or stale (says running,
    but its process is gone); its stage, epoch k/N, iteration, last losses, it/s, the time
    left for the whole stage, and its outputs.

    Reads the progress.json a training stage rewrites as it goes, the manifest and the lock
    file of the output (a predict folder: its predict.json and masks; evaluate --out: its
    mIoU); it never changes a run. A path that is not a run is a warning (an
    error when no run is left). Sidecar files (*.log, *.losses.csv, *.progress.json) are
    shown with their output.

    **Examples**

    ```
    incseg status runs/voc/15-5/step1-mib
    incseg status runs/*/*/* --json | jq '.[] | select(.status == "running")'
    ```
    """
    from incseg_cli.stages.status import format_status, statuses

    results, warnings = statuses(runs)
    for message in warnings:
        warn(message)
    if not results:
        raise InputError(warnings[0] if len(warnings) == 1 else "none of the paths is a run")
    if json_out:
        print(json.dumps(results, indent=2))
    else:
        print("\n".join(format_status(r) for r in results))
