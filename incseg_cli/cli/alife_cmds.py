"""ALIFE-M stages: extract-features, fit-rotations, rotate-bank, finetune-classifier; and inspect."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Console
from rich.table import Table

from incseg_cli.cli import options as o
from incseg_cli.cli.app import app
from incseg_cli.cli.train_cmds import collect_options, show_metrics
from incseg_cli.errors import CorruptFileError

ALIFE_PANEL = "ALIFE options"
BankOut = Annotated[Path, typer.Option("--out", help="Feature bank (HDF5) to write; never one of the inputs.", show_default=False)]
Append = Annotated[Optional[Path], typer.Option(help="Copy the classes of this bank first (ALIFE-M stage t >= 2: the rotated bank of stage t-1, which must hold every class before --model's step, in its features).")]
Samples = Annotated[int, typer.Option(help="Vectors per class (M in the paper).")]
LambdaRot = Annotated[Optional[float], typer.Option(help="Weight of L_FID; L_REG gets 1 − it. [voc 15-5, 19-1: 0.95; other tasks: 0.99]", rich_help_panel=ALIFE_PANEL)]
Tau = Annotated[Optional[float], typer.Option(help="Temperature of the attention over the batch's positions. [10]", rich_help_panel=ALIFE_PANEL)]
LambdaAliS3 = Annotated[Optional[float], typer.Option(help="Weight of ALI against --old. [per task, alife.md §6: 15-5: 1, 19-1: 1, 15-1: 3,5,2,3,1; other tasks: 1; toy: 0]", rich_help_panel=ALIFE_PANEL)]
LambdaMem = Annotated[Optional[float], typer.Option(help="Weight of the memory cross-entropy. [per task, alife.md §6: 15-5: 10, 19-1: 1, 15-1: 1,20,1,2,1; other tasks: 1; toy: 1]", rich_help_panel=ALIFE_PANEL)]


def _print(summary: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(summary))


@app.command("extract-features")
def extract_features(
    model: Annotated[Path, typer.Option("--model", help="Run directory (or checkpoint.pt) whose step's classes to memorise: the final model of stage t-1 (step 0: background included).", show_default=False)],
    data: o.Data,
    out: BankOut,
    append: Append = None,
    samples: Samples = 1000,
    splits: o.Splits = None,
    preset: o.Preset = None,
    batch_size: Annotated[Optional[int], typer.Option(help="Crops per forward pass. [voc: 24, toy: 16]")] = None,
    crop_size: o.CropSize = None,
    scale_min: o.ScaleMin = None,
    scale_max: o.ScaleMax = None,
    hflip: o.Flip = True,
    workers: o.Workers = None,
    seed: Annotated[int, typer.Option(help="Seed of the image draws and augmentations (the same seed gives the same bank).")] = 0,
    device: o.Device = "auto",
    amp: o.Amp = "auto",
    force: Annotated[bool, typer.Option("--force", help="Replace an existing --out bank.")] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print a summary as one JSON document on stdout.")] = False,
) -> None:
    """ALIFE Step 2-1: the feature memory of the classes --model's step learned.

    S vectors per class, each the decoder features of --model averaged over the class region
    of an augmented training crop of that step (regions under 0.5% of the crop rejected).
    Writes an HDF5 bank (readable with h5ls/h5py); rerunning with the same inputs skips.
    Runs as one process on one device (not under torchrun).
    """
    from incseg_cli.stages.features import extract_features as run

    _print(run(collect_options(locals())), json_out)


@app.command("fit-rotations")
def fit_rotations(
    bank: Annotated[Path, typer.Option("--bank", help="Bank of every class before stage t, in the features of --prev (extract-features).", show_default=False)],
    prev: Annotated[Path, typer.Option("--prev", help="Final model of stage t-1: the features the bank holds.", show_default=False)],
    current: Annotated[Path, typer.Option("--current", help="Step-1 run of stage t (train-step --method alife from --prev).", show_default=False)],
    data: o.Data,
    out_rotations: Annotated[Path, typer.Option("--out-rotations", help="Rotations file to write (plain tensors + header).", show_default=False)],
    out_bank: Annotated[Path, typer.Option("--out-bank", help="Rotated bank to write (in stage t features); never the input bank.", show_default=False)],
    splits: o.Splits = None,
    preset: o.Preset = None,
    lambda_rot: LambdaRot = None,
    tau: Tau = None,
    epochs: Annotated[Optional[int], typer.Option(help="Epochs over the stage-t images. [10]")] = None,
    lr: Annotated[Optional[float], typer.Option(help="Adam learning rate, poly decay. [0.01]")] = None,
    weight_decay: Annotated[Optional[float], typer.Option(help="L2 weight decay on the rotation parameters (pulls R towards I). [1e-4]")] = None,
    lr_power: o.LrPower = None,
    batch_size: Annotated[Optional[int], typer.Option(help="Images per batch; prototypes are built over the whole batch. [voc: 24, toy: 16]")] = None,
    crop_size: o.CropSize = None,
    scale_min: o.ScaleMin = None,
    scale_max: o.ScaleMax = None,
    hflip: o.Flip = True,
    workers: o.Workers = None,
    seed: Annotated[int, typer.Option(help="Seed of the rotation init, data order and augmentation.")] = 0,
    device: o.Device = "auto",
    amp: o.Amp = "auto",
    force: Annotated[bool, typer.Option("--force", help="Replace existing outputs (and a stale resume state) and start over.")] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print a summary as one JSON document on stdout.")] = False,
) -> None:
    """ALIFE Step 2-2: one Cayley rotation per bank class, from --prev's to --current's features.

    Trains with λ_ROT·L_FID + (1 − λ_ROT)·L_REG on the stage-t training images, then writes
    the rotations and a new bank with every vector rotated. Ctrl-C writes
    OUT_ROTATIONS_STEM.last.pt; rerunning the same command resumes, or skips when done.
    Runs as one process on one device (not under torchrun).
    """
    from incseg_cli.stages.rotations import fit_rotations as run

    _print(run(collect_options(locals())), json_out)


@app.command("rotate-bank")
def rotate_bank(
    rotations: Annotated[Path, typer.Option("--rotations", help="Rotations file from fit-rotations.", show_default=False)],
    bank: Annotated[Path, typer.Option("--bank", help="Bank with the same classes, in the space the rotations map from.", show_default=False)],
    out: BankOut,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing --out bank.")] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print a summary as one JSON document on stdout.")] = False,
) -> None:
    """Apply a rotations file to a bank (fit-rotations already writes its rotated bank)."""
    from incseg_cli.stages.rotations import rotate_bank as run

    _print(run(collect_options(locals())), json_out)


@app.command("finetune-classifier")
def finetune_classifier(
    current: Annotated[Path, typer.Option("--current", help="Step-1 run of stage t: its features are kept, its heads fine-tuned.", show_default=False)],
    old: Annotated[Path, typer.Option("--old", help="Final model of stage t-1 (the one --current was trained from): pseudo-labels and ALI.", show_default=False)],
    bank: Annotated[Path, typer.Option("--bank", help="Rotated bank of every class before stage t (fit-rotations --out-bank).", show_default=False)],
    data: o.Data,
    out: Annotated[Optional[Path], typer.Option(help="Run directory to write. [default: runs/DATASET/TASK/stepT-alife-m]")] = None,
    splits: o.Splits = None,
    preset: o.Preset = None,
    lambda_ali: LambdaAliS3 = None,
    lambda_mem: LambdaMem = None,
    epochs: Annotated[Optional[int], typer.Option(help="Training epochs. [1]")] = None,
    batch_size: o.BatchSize = None,
    lr: Annotated[Optional[float], typer.Option(help="Learning rate of the classifier heads. [0.001]")] = None,
    optimizer: o.Optimizer = None,
    weight_decay: o.WeightDecay = None,
    momentum: o.Momentum = None,
    lr_power: o.LrPower = None,
    crop_size: o.CropSize = None,
    scale_min: o.ScaleMin = None,
    scale_max: o.ScaleMax = None,
    hflip: o.Flip = True,
    eval_protocol: o.EvalProtocol = None,
    eval_size: o.EvalSize = None,
    val_set: o.ValSet = None,
    val_interval: o.ValInterval = None,
    workers: o.Workers = None,
    seed: o.Seed = 0,
    device: o.Device = "auto",
    amp: o.Amp = "auto",
    force: o.Force = False,
    json_out: o.JsonOut = False,
) -> None:
    """ALIFE Step 3: fine-tune only the classifier heads of --current with replay.

    Focal loss on the stage-t images (the old model's prediction on unlabelled pixels),
    λ_ALI·ALI against --old, and λ_MEM·cross-entropy over the whole rotated memory at every
    iteration. Writes a run directory of step t (method alife-m) that evaluate and the next
    train-step --prev accept.
    """
    from incseg_cli.stages.finetune import finetune_classifier as run

    show_metrics(run(collect_options(locals())), json_out)


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
    """
    from incseg_cli.stages.inspect import inspect_path

    report = inspect_path(path)
    if json_out:
        print(json.dumps(report))
    else:
        _show(report)
    if report["problems"]:
        raise CorruptFileError(f"{report['path']}: {report['problems'][0]}")
