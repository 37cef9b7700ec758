"""train-base and evaluate."""

from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import Annotated, Literal, Optional

import typer

from incseg_cli import presets
from incseg_cli.cli import options as o
from incseg_cli.cli.app import app
from incseg_cli.cli.declared import Parsed, declared_command
from incseg_cli.console import RunFiles, is_main_process, log, log_file, stderr
from incseg_cli.engine.rundir import check_side_outputs
from incseg_cli.fileio import write_json
from incseg_cli.limits import check_options
from incseg_cli.engine.stage import TrainSettings
from incseg_cli.reporting import class_table, summary_table
from incseg_cli.stages.train_base import BaseOptions, BaseRun, ModelOptions
from incseg_cli.stages.common import RunOptions


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


TRAINING_PANEL = "Training (unset: the method's, then the preset's)"
MODEL_PANEL = "Model (step 0; later steps inherit it)"
JSON_OUT = inspect.Parameter("json_out", inspect.Parameter.KEYWORD_ONLY, default=False, annotation=o.JsonOut)


@declared_command(app, "train-base", [(None, BaseOptions), (None, RunOptions), (None, ModelOptions, MODEL_PANEL),
                                      (None, TrainSettings, TRAINING_PANEL)],
                  extra=[JSON_OUT], tables=presets.BASE_PRESETS)
def train_base(parsed: Parsed) -> None:
    """Step 0: train the base classes of TASK with full pixel labels.

    Writes OUT/checkpoint.pt, manifest.json and metrics.json. Rerunning the same command
    resumes from OUT/last.pt, or skips a complete run; --force starts over. On the
    'offline' task this is joint training, the upper bound. `--config OUT/manifest.json`
    re-runs a recorded recipe.

    **Examples**

    ```
    incseg train-base --data data/VOC2012 --task 15-5 --out runs/voc/15-5/step0
    incseg train-base --data demo/toy --task 10-10-ov --preset toy --out runs/toy/step0
    incseg train-base --config runs/toy/step0/manifest.json --set seed=1 --out runs/toy/step0-seed1
    ```
    """
    from incseg_cli.stages.train_base import train_base as run

    show_metrics(run(parsed.build(BaseRun)), parsed.extra["json_out"])


@app.command("evaluate")
def evaluate(
    checkpoint: Annotated[Path, typer.Argument(help="A run directory or its checkpoint.pt.", show_default=False)],
    data: o.Data,
    task: Annotated[Optional[str], typer.Option("--task", help="Refuse the checkpoint unless it was trained on this task (a guard for scripts).")] = None,
    eval_protocol: Annotated[Optional[Literal["crop", "full"]], typer.Option(help="crop: resize the shorter side to --eval-size and centre-crop (both papers); full: whole images. [the run's; crop without a manifest]")] = None,
    eval_size: Annotated[Optional[int], typer.Option(help="Evaluation resize/crop size in pixels. [the run's; 512 without a manifest]")] = None,
    val_set: Annotated[Optional[Literal["seen", "all"]], typer.Option("--val-set", help="seen: the val images with a class of steps 0..t (MiB, PLOP, ALIFE); all: every val image (WILSON). [the run's; the method's paper without a manifest]")] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="Images per batch (crop protocol; full uses 1). [the run's; 8 without a manifest]")] = None,
    workers: o.EvalWorkers = None,
    device: o.Device = "auto",
    amp: o.Amp = "auto",
    tf32: o.Tf32 = "off",
    out: Annotated[Optional[Path], typer.Option(help="Also write the metrics JSON to this file (atomically).")] = None,
    per_class: Annotated[bool, typer.Option("--per-class", help="Also print the per-class IoU table.")] = False,
    save_predictions: Annotated[Optional[Path], typer.Option("--save-predictions", metavar="DIR", help="Also write DIR/IMAGE_ID.png for every evaluated val image: the prediction as a palette PNG of label ids in the dataset's palette at the image's size (crop protocol: 255, void, outside the scored crop), and DIR/scores.tsv with each image's mIoU. [off]")] = None,
    overlay: Annotated[bool, typer.Option("--overlay", help="With --save-predictions: also write DIR/overlays/IMAGE_ID.jpg, the whole image at its own size with the prediction blended in (void pixels: the plain image).")] = False,
    json_out: o.JsonOut = False,
) -> None:
    """Evaluate a checkpoint on the validation images of its dataset.

    Reports per-class IoU and mIoU of all seen classes, old classes (earlier steps, no
    background), new classes (this step), background, and base/added (the papers'
    multi-step columns). The task and step come from the checkpoint header; the protocol,
    size and val set from the run's manifest.json unless given (a given value that differs
    from the run's is a warning, recorded in the output under evaluation.differs_from_run).

    **Examples**

    ```
    incseg evaluate runs/voc/15-5/step1-mib --data data/VOC2012 --per-class
    incseg evaluate runs/toy/step1-wilson --data demo/toy --json --out metrics-wilson.json
    incseg evaluate runs/toy/step1-mib --data demo/toy --save-predictions preds --overlay
    ```
    """
    from incseg_cli.stages.evaluate import evaluate_checkpoint

    workers = presets.workers_or_default(workers)
    check_options({"eval_size": eval_size, "batch_size": batch_size, "workers": workers})
    # Before any work: outputs that cannot be written, or would overwrite the run, are refused.
    check_side_outputs(checkpoint, [("--out", out, False), ("--save-predictions", save_predictions, True)])
    # With --out, what evaluate logs also goes to OUT.log.
    with log_file(RunFiles.of(out, directory=False).log if out is not None else None) as log_path:
        metrics = evaluate_checkpoint(checkpoint, data, eval_protocol, eval_size, batch_size, workers, device, amp,
                                      task, save_predictions, val_set, overlay, tf32)
        show_metrics(metrics, json_out, out, per_class)
        if out is not None and is_main_process():
            log(f"wrote {out}, {log_path.name}")
