"""ALIFE-M stages: extract-features, fit-rotations, rotate-bank; and inspect.

Their options are declared once, in the stage modules (``ExtractFeaturesOptions``,
``FitRotationsOptions``, ``RotateBankOptions``); the commands only parse them and call the
stage.
"""

from __future__ import annotations

import inspect as pyinspect
import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from incseg_cli import presets
from incseg_cli.cli.app import app
from incseg_cli.cli.declared import Parsed, declared_command
from incseg_cli.errors import CorruptFileError
from incseg_cli.stages.features import ExtractFeaturesOptions
from incseg_cli.stages.rotations import FitRotationsOptions, RotateBankOptions

JSON_SUMMARY = pyinspect.Parameter(
    "json_out", pyinspect.Parameter.KEYWORD_ONLY, default=False,
    annotation=Annotated[bool, typer.Option("--json", metavar="", help="Print a summary as one JSON document on stdout.")])


def _print(summary: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(summary))


@declared_command(app, "extract-features", [(None, ExtractFeaturesOptions)], extra=[JSON_SUMMARY],
                  tables=presets.BASE_PRESETS)
def extract_features(parsed: Parsed) -> None:
    """ALIFE Step 2-1: the feature memory of the classes --prev's step learned.

    S vectors per class, each the decoder features of --prev averaged over the class region
    of an augmented training crop of that step (regions under 0.5% of the crop rejected).
    Writes an HDF5 bank (readable with h5ls/h5py); rerunning with the same inputs skips
    (options that do not change the bank, such as --workers or --device, may differ).
    Runs as one process on one device (not under torchrun). docs/methods/alife.md.

    **Examples**

    ```
    incseg extract-features --prev runs/voc/15-5-ov/step0 --data data/VOC2012 --out banks/15-5-step0.h5

    incseg extract-features --prev runs/voc/15-1-ov/step1-alife-m --append banks/step1-rotated.h5 --data data/VOC2012 --out banks/step1.h5

    incseg extract-features --prev runs/toy/step0 --data demo/toy --preset toy --samples 100 --out runs/toy/bank.h5
    ```
    """
    from incseg_cli.stages.features import extract_features as run

    _print(run(parsed.build(ExtractFeaturesOptions)), parsed.extra["json_out"])


@declared_command(app, "fit-rotations", [(None, FitRotationsOptions)], extra=[JSON_SUMMARY],
                  tables=presets.BASE_PRESETS)
def fit_rotations(parsed: Parsed) -> None:
    """ALIFE Step 2-2: one Cayley rotation per bank class, from --prev's to --current's features.

    Trains with λ_ROT·L_FID + (1 − λ_ROT)·L_REG on the stage-t training images, then writes
    the rotations (--out) and a new bank with every vector rotated (--out-bank). Ctrl-C
    writes OUT_STEM.last.pt; rerunning the same command resumes, or skips when done. Runs
    as one process on one device (not under torchrun). docs/methods/alife.md.

    **Examples**

    ```
    incseg fit-rotations --bank banks/15-5-step0.h5 --prev runs/voc/15-5-ov/step0 --current runs/voc/15-5-ov/step1-alife --data data/VOC2012 --out banks/rot1.pt --out-bank banks/15-5-step0-rotated.h5

    incseg fit-rotations --bank runs/toy/bank.h5 --prev runs/toy/step0 --current runs/toy/step1-alife --data demo/toy --preset toy --out runs/toy/rot.pt --out-bank runs/toy/bank-rotated.h5
    ```
    """
    from incseg_cli.stages.rotations import fit_rotations as run

    _print(run(parsed.build(FitRotationsOptions)), parsed.extra["json_out"])


@declared_command(app, "rotate-bank", [(None, RotateBankOptions)], extra=[JSON_SUMMARY])
def rotate_bank(parsed: Parsed) -> None:
    """Apply a rotations file to a bank (fit-rotations already writes its rotated bank).

    The bank must hold the classes of the rotations, in the feature space they map from.

    **Examples**

    ```
    incseg rotate-bank --rotations banks/rot1.pt --bank banks/15-5-step0.h5 --out banks/15-5-step0-rotated.h5
    ```
    """
    from incseg_cli.stages.rotations import rotate_bank as run

    _print(run(parsed.build(RotateBankOptions)), parsed.extra["json_out"])


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
        for key in ("checksum", "tensors", "parameters", "params_shape", "epochs", "epoch", "iteration"):
            if key in report:
                console.print(f"  {key}: {report[key]}", markup=False)
    status = "ok" if not report["problems"] else f"{len(report['problems'])} problem(s)"
    console.print(f"check: {status}", markup=False)
    for problem in report["problems"]:
        console.print(f"  - {problem}", markup=False)


@app.command("inspect")
def inspect(
    path: Annotated[Path, typer.Argument(help="A feature bank (.h5), a run directory or checkpoint.pt, a rotations file or a last.pt.", show_default=False)],
    json_out: Annotated[bool, typer.Option("--json", help="Print the report as one JSON document on stdout.")] = False,
) -> None:
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

    report = inspect_path(path)
    if json_out:
        print(json.dumps(report))
    else:
        _show(report)
    if report["problems"]:
        raise CorruptFileError(f"{report['path']}: {report['problems'][0]}")
