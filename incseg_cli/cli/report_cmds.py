"""report: compare finished runs as a table (rich, Markdown or JSON) and PNG plots."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

from incseg_cli.cli.app import app
from incseg_cli.console import log
from incseg_cli.errors import UsageError


@app.command("report")
def report(
    runs: Annotated[list[Path], typer.Argument(metavar="RUN_DIR", help="Run directories (train-base, train-step, finetune-classifier outputs), in any order.", show_default=False)],
    json_out: Annotated[bool, typer.Option("--json", help="Print the table as one JSON document on stdout (instead of the rich table).")] = False,
    markdown: Annotated[bool, typer.Option("--markdown", help="Print the table as Markdown on stdout (instead of the rich table).")] = False,
    plots: Annotated[Optional[Path], typer.Option("--plots", metavar="DIR", help="Write PNG plots into DIR: miou-per-step.png, and per task groups-TASK-stepN.png (old/new/all bars) and classes-TASK-stepN.png (per-class IoU bars). [off]")] = None,
    classes_step: Annotated[Optional[int], typer.Option("--classes-step", metavar="N", help="Step of the old/new/all and per-class plots. [the latest step of each task in the report]")] = None,
) -> None:
    """Old / new / all mIoU of finished runs, per task, step and method.

    Reads each run's metrics.json and manifest.json. Runs are labelled by method (with the
    directory name when two share task, step and method) and linked into chains through the
    checkpoints their manifests list as inputs. A joint-training run (task offline) is scored
    in the class groups of the incremental tasks beside it, as their ceiling. The table goes
    to stdout (rich, or --markdown / --json); log lines to stderr.
    """
    from incseg_cli.stages.report import build_report, markdown_table, rich_table, write_plots

    if json_out and markdown:
        raise UsageError("--json and --markdown both print the table on stdout; choose one")
    if classes_step is not None and plots is None:
        raise UsageError("--classes-step chooses the step of the plots; add --plots DIR")
    if classes_step is not None and classes_step < 0:
        raise UsageError(f"--classes-step must be >= 0, got {classes_step}")
    result = build_report(runs)
    written = write_plots(result, plots, classes_step) if plots is not None else []
    for path in written:
        log(f"wrote {path}")
    if json_out:
        print(json.dumps({**result.to_json(), "plots": [str(p) for p in written]}, indent=2))
    elif markdown:
        print(markdown_table(result), end="")
    else:
        # Wide when piped (a log file, `make demo`): rich would wrap at 80 columns.
        Console(soft_wrap=False, width=None if sys.stdout.isatty() else 160).print(rich_table(result))
