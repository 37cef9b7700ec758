"""train-base and evaluate."""

from __future__ import annotations

import json
from pathlib import Path, PurePath
from typing import Annotated, Any, Optional

import typer

from incseg_cli import presets
from incseg_cli.cli import options as o
from incseg_cli.cli.app import app
from incseg_cli.console import is_main_process, stderr
from incseg_cli.fileio import write_json
from incseg_cli.reporting import class_table, summary_table


def collect_options(values: dict[str, Any]) -> dict[str, Any]:
    """A command's parameters as plain data for the stage and its manifest."""
    return {k: str(v) if isinstance(v, PurePath) else v for k, v in values.items() if k != "run"}


def show_metrics(metrics: dict, as_json: bool, out: Path | None = None, per_class: bool = False) -> None:
    """Rich table on stderr, JSON on stdout with ``--json``, JSON file with ``--out`` (rank 0 only)."""
    if not is_main_process():
        return
    stderr.print(summary_table(metrics))
    if per_class:
        stderr.print(class_table(metrics))
    if out is not None:
        write_json(out, metrics)
    if as_json:
        print(json.dumps(metrics))


@app.command("train-base")
def train_base(
    data: o.Data,
    task: o.TaskName,
    dataset: o.Dataset = "voc",
    splits: o.Splits = None,
    out: o.Out = None,
    preset: o.Preset = None,
    loss: Annotated[str, typer.Option(help="ce (ALIFE, MiB) or bce (WILSON's --bce: one-hot BCE, 255 as background).")] = "ce",
    backbone: o.Backbone = None,
    backbone_weights: o.BackboneWeights = None,
    output_stride: o.OutputStride = None,
    head_channels: o.HeadChannels = None,
    epochs: o.Epochs = None,
    batch_size: o.BatchSize = None,
    lr: o.Lr = None,
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
    val_interval: o.ValInterval = None,
    workers: o.Workers = None,
    seed: o.Seed = 0,
    device: o.Device = "auto",
    amp: o.Amp = "auto",
    compile: o.Compile = False,
    force: o.Force = False,
    json_out: o.JsonOut = False,
) -> None:
    """Step 0: train the base classes of TASK with full pixel labels.

    Writes OUT/checkpoint.pt, manifest.json and metrics.json. Rerunning the same command
    resumes from OUT/last.pt, or skips a complete run; --force starts over. On the
    'offline' task this is joint training, the upper bound.
    """
    from incseg_cli.stages.base import train_base as run

    options = presets.resolve(preset or dataset, collect_options(locals()))
    options["preset"] = preset or dataset
    metrics = run(options)
    show_metrics(metrics, json_out)


@app.command("evaluate")
def evaluate(
    checkpoint: Annotated[Path, typer.Argument(help="A run directory or its checkpoint.pt.", show_default=False)],
    data: o.Data,
    task: Annotated[Optional[str], typer.Option("--task", help="Refuse the checkpoint unless it was trained on this task (a guard for scripts).")] = None,
    eval_protocol: Annotated[str, typer.Option(help="crop: resize the shorter side to --eval-size and centre-crop (both papers); full: whole images.")] = "crop",
    eval_size: Annotated[int, typer.Option(help="Evaluation resize/crop size in pixels (64 for the toy data).")] = 512,
    batch_size: Annotated[int, typer.Option(help="Images per batch (crop protocol; full uses 1).")] = 8,
    workers: Annotated[int, typer.Option(help="DataLoader worker processes.")] = 2,
    device: o.Device = "auto",
    amp: o.Amp = "auto",
    out: Annotated[Optional[Path], typer.Option(help="Also write the metrics JSON to this file (atomically).")] = None,
    per_class: Annotated[bool, typer.Option("--per-class", help="Also print the per-class IoU table.")] = False,
    save_predictions: Annotated[Optional[Path], typer.Option("--save-predictions", metavar="DIR", help="Also write DIR/IMAGE_ID.png for every val image: the image, its ground truth and the prediction side by side, labels in the VOC palette (void in cream). [off]")] = None,
    json_out: o.JsonOut = False,
) -> None:
    """Evaluate a checkpoint on the validation images of its dataset.

    Reports per-class IoU and mIoU of all seen classes, old classes (earlier steps, no
    background), new classes (this step), background, and base/added (the papers'
    multi-step columns). The task and step come from the checkpoint header.
    """
    from incseg_cli.stages.evaluate import evaluate_checkpoint

    metrics = evaluate_checkpoint(checkpoint, data, eval_protocol, eval_size, batch_size, workers, device, amp, task,
                                  save_predictions)
    show_metrics(metrics, json_out, out, per_class)
