"""status: where running and finished runs stand."""

from __future__ import annotations

import inspect
import json
from typing import Annotated

import typer

from incseg_cli.cli.app import app
from incseg_cli.cli.declared import Parsed, declared_command
from incseg_cli.console import warn
from incseg_cli.errors import InputError
from incseg_cli.stages.status import StatusOptions, format_status, statuses


JSON_LIST = inspect.Parameter("json_out", inspect.Parameter.KEYWORD_ONLY, default=False, annotation=Annotated[
    bool, typer.Option("--json", metavar="", help="Print a JSON list on stdout, one object per run.")])


@declared_command(app, "status", [(None, StatusOptions)], extra=[JSON_LIST], recipe=False)
def status(parsed: Parsed) -> None:
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
    results, warnings = statuses(parsed.build(StatusOptions).runs)
    for message in warnings:
        warn(message)
    if not results:
        raise InputError(warnings[0] if len(warnings) == 1 else "none of the paths is a run")
    if parsed.extra["json_out"]:
        print(json.dumps(results, indent=2))
    else:
        print("\n".join(format_status(r) for r in results))
