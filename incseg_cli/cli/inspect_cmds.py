"""inspect: what an incseg file holds, checked."""

from __future__ import annotations

import inspect as pyinspect
import json
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from incseg_cli.cli.app import app
from incseg_cli.cli.declared import Parsed, declared_command
from incseg_cli.errors import CorruptFileError
from incseg_cli.stages.inspect import InspectOptions

JSON_REPORT = pyinspect.Parameter(
    "json_out", pyinspect.Parameter.KEYWORD_ONLY, default=False,
    annotation=Annotated[bool, typer.Option("--json", metavar="", help="Print the report as one JSON document on stdout.")])


def _bank_table(report: dict[str, Any]) -> Table:
    table = Table(title="classes")
    for col, justify in (("id", "right"), ("name", "left"), ("vectors", "right"), ("source", "left"),
                         ("learned at step", "right"), ("shape", "left")):
        table.add_column(col, justify=justify)
    for c in report["classes"]:
        table.add_row(str(c["label"]), str(c.get("name")), str(c.get("count")), str(c.get("source")),
                      str(c.get("step")), "x".join(map(str, c.get("shape", []))))
    return table


def _show(report: dict[str, Any]) -> None:
    console = Console(soft_wrap=True, highlight=False)
    console.print(f"{report['kind']}: {report['path']} ({report['size_bytes']:,} bytes)", markup=False)
    if report["kind"] == "bank":
        for key, value in report["attrs"].items():
            console.print(f"  {key}: {value}", markup=False)
        console.print(f"  checksum: {report.get('checksum')}", markup=False)
        console.print(_bank_table(report))
    else:
        for key, value in (report.get("header") or {}).items():
            console.print(f"  {key}: {json.dumps(value) if isinstance(value, (dict, list)) else value}", markup=False)
        for key in ("checksum", "tensors", "parameters", "params_shape", "epochs", "epoch", "iteration", "replay"):
            if key in report:
                console.print(f"  {key}: {report[key]}", markup=False)
    status = "ok" if not report["problems"] else f"{len(report['problems'])} problem(s)"
    console.print(f"check: {status}", markup=False)
    for problem in report["problems"]:
        console.print(f"  - {problem}", markup=False)


@declared_command(app, "inspect", [(None, InspectOptions)], extra=[JSON_REPORT], recipe=False)
def inspect(parsed: Parsed) -> None:
    """Show what an incseg file holds and check it.

    Bank: classes, vectors per class, feature size, step and feature space, source
    checkpoint, and a check that every dataset is float32 of the declared shape and finite.
    Checkpoint: its header and whether the weights are finite. Exits with 5 when the check
    finds a problem.

    **Examples**

    ```
    incseg inspect banks/15-5-step0.h5

    incseg inspect runs/voc/15-5-ov/step1-alife-m --json

    incseg inspect banks/rot1.pt
    ```
    """
    from incseg_cli.stages.inspect import inspect_path

    report = inspect_path(parsed.build(InspectOptions).path)
    if parsed.extra["json_out"]:
        print(json.dumps(report))
    else:
        _show(report)
    if report["problems"]:
        raise CorruptFileError(f"{report['path']}: {report['problems'][0]}")
