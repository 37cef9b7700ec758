"""report: compare finished runs as a table (rich, Markdown or JSON) and PNG plots."""

from __future__ import annotations

import inspect as pyinspect
import json
import sys
from typing import Annotated

import typer
from rich.console import Console

from incseg_cli.cli.app import app
from incseg_cli.cli.declared import Parsed, declared_command
from incseg_cli.console import log
from incseg_cli.errors import UsageError
from incseg_cli.stages.report import (ReportOptions, build_report, check_report_options, forgetting, groups_table,
                                     markdown_table, published_table, rich_table, seed_groups, write_plots,
                                     write_tables)


def _flag(name: str, flag: str, help: str) -> pyinspect.Parameter:
    return pyinspect.Parameter(name, pyinspect.Parameter.KEYWORD_ONLY, default=False,
                               annotation=Annotated[bool, typer.Option(flag, metavar="", help=help)])


# How the table is printed: the command's, not the report's.
PRINTED = [_flag("json_out", "--json", "Print the table as one JSON document on stdout (instead of the rich table)."),
           _flag("markdown", "--markdown", "Print the table as Markdown on stdout (instead of the rich table).")]


@declared_command(app, "report", [(None, ReportOptions)], extra=PRINTED, recipe=False)
def report(parsed: Parsed) -> None:
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
    options = parsed.build(ReportOptions)
    json_out, markdown = parsed.extra["json_out"], parsed.extra["markdown"]
    if json_out and markdown:
        raise UsageError("--json and --markdown both print the table on stdout; choose one")
    check_report_options(options)
    plots = options.plots
    result = build_report(options.runs, with_published=options.published)
    written = write_plots(result, plots, options.classes_step) if plots is not None else []
    groups, chains = seed_groups(result), forgetting(result)
    if options.tables is not None:
        written += write_tables(groups, chains, options.tables)
    if options.examples is not None:
        from incseg_cli.stages.examples import EXAMPLES_FILE, example_grid

        written.append(example_grid(result.runs, options.data, options.examples, plots / EXAMPLES_FILE,
                                    options.eval_protocol, options.eval_size))
    for path in written:
        log(f"wrote {path}")
    if json_out:
        print(json.dumps({**result.to_json(), "groups": groups, "forgetting": chains,
                          "plots": [str(p) for p in written]}, indent=2))
    elif markdown:
        print(markdown_table(result), end="")
    else:
        # Wide when piped (a log file, `make demo`): rich would wrap at 80 columns.
        console = Console(soft_wrap=False, width=None if sys.stdout.isatty() else 160)
        console.print(rich_table(result))
        for extra in (groups_table(groups), published_table(result)):
            if extra is not None:
                console.print(extra)
