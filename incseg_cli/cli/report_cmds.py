"""report: compare finished runs as a table (rich, Markdown or JSON) and PNG plots."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Literal, Optional

import typer
from rich.console import Console

from incseg_cli.cli.app import app
from incseg_cli.console import log
from incseg_cli.errors import UsageError
from incseg_cli.fileio import check_writable


@app.command("report")
def report(
    runs: Annotated[list[Path], typer.Argument(metavar="RUN_DIR", help="Run directories (train-base, train-step, finetune-classifier outputs), in any order.", show_default=False)],
    json_out: Annotated[bool, typer.Option("--json", help="Print the table as one JSON document on stdout (instead of the rich table).")] = False,
    markdown: Annotated[bool, typer.Option("--markdown", help="Print the table as Markdown on stdout (instead of the rich table).")] = False,
    plots: Annotated[Optional[Path], typer.Option("--plots", metavar="DIR", help="Write PNG plots into DIR: miou-per-step.png, and per task groups-TASK-stepN.png (old/new/all bars) and classes-TASK-stepN.png (per-class IoU bars). [off]")] = None,
    classes_step: Annotated[Optional[int], typer.Option("--classes-step", metavar="N", help="Step of the old/new/all and per-class plots. [the latest step of each task in the report]")] = None,
    examples: Annotated[Optional[int], typer.Option("--examples", metavar="K", help="With --plots and --data: also draw examples.png, K val images with their ground truth and each run's prediction (class colours, a legend of class names, each image's mIoU). [off]")] = None,
    data: Annotated[Optional[Path], typer.Option("--data", help="Dataset root of the runs, for --examples.")] = None,
    eval_protocol: Annotated[Optional[Literal["crop", "full"]], typer.Option(help="Protocol of the --examples pictures (crop or full). [the first run's]")] = None,
    eval_size: Annotated[Optional[int], typer.Option(help="Crop size of the --examples pictures. [the first run's]")] = None,
    show_published: Annotated[bool, typer.Option("--published/--no-published", help="List the papers' published numbers of the same method, task, setting and step beside VOC, ADE and COCO runs (not toy data).")] = True,
) -> None:
    """Old / new / all mIoU of finished runs, per task, step and method.

    Reads each run's metrics.json and manifest.json. Runs are labelled by method (with the
    directory name when two share task, step and method) and linked into chains through the
    checkpoints their manifests list as inputs. A joint-training run (task offline) is scored
    in the class groups of the incremental tasks beside it, as their ceiling. Paths that are
    not finished runs (banks, rotation files, unfinished runs) are skipped with a warning.
    The table goes to stdout (rich, or --markdown / --json); log lines to stderr. --plots
    also draws each run's training losses from its losses.csv.

    **Examples**

    ```
    incseg report runs/toy/10-10-ov/*
    incseg report runs/voc/15-5/* --markdown > results.md
    incseg report runs/toy/10-10-ov/* --plots plots --examples 6 --data demo/toy
    ```
    """
    from incseg_cli.stages.report import build_report, markdown_table, published_table, rich_table, write_plots

    if json_out and markdown:
        raise UsageError("--json and --markdown both print the table on stdout; choose one")
    if classes_step is not None and plots is None:
        raise UsageError("--classes-step chooses the step of the plots; add --plots DIR")
    if classes_step is not None and classes_step < 0:
        raise UsageError(f"--classes-step must be >= 0, got {classes_step}")
    if examples is not None and (plots is None or data is None):
        raise UsageError("--examples draws into the --plots directory from the --data root; add --plots DIR and --data ROOT")
    if examples is None and (data is not None or eval_protocol is not None or eval_size is not None):
        raise UsageError("--data, --eval-protocol and --eval-size are for --examples K; add it")
    if eval_protocol is not None and eval_protocol not in ("crop", "full"):
        raise UsageError(f"--eval-protocol must be crop or full, got {eval_protocol!r}")
    if eval_size is not None and eval_size < 16:
        raise UsageError(f"--eval-size must be >= 16, got {eval_size}")
    if plots is not None:  # before reading any run
        check_writable(plots, "--plots", directory=True)
    result = build_report(runs, with_published=show_published)
    written = write_plots(result, plots, classes_step) if plots is not None else []
    if examples is not None:
        from incseg_cli.stages.examples import EXAMPLES_FILE, example_grid

        written.append(example_grid(result.runs, data, examples, plots / EXAMPLES_FILE, eval_protocol, eval_size))
    for path in written:
        log(f"wrote {path}")
    if json_out:
        print(json.dumps({**result.to_json(), "plots": [str(p) for p in written]}, indent=2))
    elif markdown:
        print(markdown_table(result), end="")
    else:
        # Wide when piped (a log file, `make demo`): rich would wrap at 80 columns.
        console = Console(soft_wrap=False, width=None if sys.stdout.isatty() else 160)
        console.print(rich_table(result))
        extra = published_table(result)
        if extra is not None:
            console.print(extra)
