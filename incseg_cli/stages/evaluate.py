"""evaluate: a checkpoint (or run directory) on the validation set of its dataset.

The protocol, the evaluation size and the val set are the run's own (``manifest.json``
options), so that evaluating a run without options reproduces its ``metrics.json``. A value
given on the command line that differs from the run's is a warning, and is recorded in the
output (``evaluation.differs_from_run``). A checkpoint without a manifest beside it is
evaluated with the documented defaults (``DEFAULTS``), and the output says so.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from PIL import Image

from incseg_cli import datasets, presets, visual
from incseg_cli.config import option
from incseg_cli.console import log, warn
from incseg_cli.datasets import open_layout
from incseg_cli.datasets.layout import DatasetLayout, image_size
from incseg_cli.data.transforms import EVAL_PROTOCOLS
from incseg_cli.data.valsets import select_val_ids
from incseg_cli.engine import distributed
from incseg_cli.engine.checkpoint import Checkpoint, check_task, load_checkpoint, model_from_checkpoint
from incseg_cli.engine.evaluate import image_miou, unlearned_advice, unlearned_warnings
from incseg_cli.engine.device import TF32_CHOICES, TF32_HELP, amp_dtype, precision_record, resolve_device, warn_tf32
from incseg_cli.engine.rundir import check_side_outputs
from incseg_cli.engine.stage import evaluate_on, make_eval_loader
from incseg_cli.errors import UsageError
from incseg_cli.fileio import read_json_object, write_text
from incseg_cli.methods.registry import default_val_set
from incseg_cli.stages.common import check_files
from incseg_cli.tasks import Task, get_task

# What a bare checkpoint (no manifest.json beside it) is evaluated with: the papers' 512 px
# centre crop; the val set is its method's (``data/valsets.py``).
DEFAULTS = {"eval_protocol": "crop", "eval_size": 512}
DEFAULT_BATCH = 8
FLAGS = {"eval_protocol": "--eval-protocol", "eval_size": "--eval-size", "val_set": "--val-set"}


@dataclass(kw_only=True)
class EvaluateOptions:
    """Everything ``incseg evaluate`` and ``api.evaluate`` take (the command adds where its
    output goes: --out, --per-class, --json)."""

    checkpoint: Path = option(required=True, argument=True, metavar="CHECKPOINT",
                              help="A run directory or its checkpoint.pt.")
    data: Path = option(required=True, help="Dataset root: VOC, COCO or ADE20K (docs/gpu-box.md), "
                                            "or your own (docs/own-data.md).")
    task: Optional[str] = option(help="Refuse the checkpoint unless it was trained on this task (a guard for scripts).")
    eval_protocol: Optional[str] = option(choices=EVAL_PROTOCOLS,
                                          help="crop: resize the shorter side to --eval-size and centre-crop (both "
                                               "papers); full: whole images. [the run's; crop without a manifest]")
    eval_size: Optional[int] = option(help="Evaluation resize/crop size in pixels. [the run's; 512 without a manifest]")
    val_set: Optional[str] = option(choices=("seen", "all"),
                                    help="seen: the val images with a class of steps 0..t (MiB, PLOP, ALIFE); all: "
                                         "every val image (WILSON). [the run's; the method's paper without a manifest]")
    batch_size: Optional[int] = option(help="Images per batch (crop protocol; full uses 1). "
                                            "[the run's; 8 without a manifest]")
    workers: Optional[int] = option(volatile=True, help="DataLoader worker processes (per process). [the CPUs of this "
                                                        "process / torchrun's processes on the node, 1 to 8]")
    device: str = option("auto", volatile=True, help="auto (CUDA if present), cpu, cuda or cuda:N.")
    amp: str = option("auto", choices=("auto", "bf16", "fp16", "off"),
                      help="Precision on CUDA. auto: fp32 for evaluation (training: the method's official "
                           "precision); bf16: the speed option; fp16; off (fp32). CPU runs are always fp32.")
    tf32: str = option("off", choices=TF32_CHOICES, help=TF32_HELP)
    save_predictions: Optional[Path] = option(
        metavar="DIR", help="Also write DIR/IMAGE_ID.png for every evaluated val image: the prediction as a palette "
                            "PNG of label ids in the dataset's palette at the image's size (crop protocol: 255, "
                            "void, outside the scored crop), and DIR/scores.tsv with each image's mIoU. [off]")
    overlay: bool = option(False, flag="--overlay",
                           help="With --save-predictions: also write DIR/overlays/IMAGE_ID.jpg, the whole image at its "
                                "own size with the prediction blended in (void pixels: the plain image).")


def evaluate(options: EvaluateOptions, side_outputs: list[tuple[str, Any, bool]] = ()) -> dict[str, Any]:
    """The metrics of ``incseg evaluate`` (what its ``--json`` prints) for ``options`` as the
    command and ``api.evaluate`` build them (ranges and choices checked there). ``side_outputs``:
    the caller's other outputs (``--out``), refused with ``--save-predictions`` before any work
    when they cannot be written or would land on the run."""
    workers = presets.workers_or_default(options.workers)
    check_side_outputs(options.checkpoint, [*side_outputs, ("--save-predictions", options.save_predictions, True)])
    return evaluate_checkpoint(options.checkpoint, options.data, options.eval_protocol, options.eval_size,
                               options.batch_size, workers, options.device, options.amp, options.task,
                               options.save_predictions, options.val_set, options.overlay, options.tf32)


@dataclass
class EvalPlan:
    """What an evaluation runs with, and where the values came from."""

    protocol: str
    size: int
    val_set: str
    batch_size: int
    splits: str | None  # the run's splits root: where the val label table is looked up
    settings_from: str
    differs: dict[str, dict[str, Any]] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"settings_from": self.settings_from, "differs_from_run": self.differs}


def run_manifest(path: str | Path, ckpt: Checkpoint) -> tuple[dict[str, Any] | None, Path]:
    """The manifest of the run directory that holds the checkpoint (None for a checkpoint
    that is not a run directory's ``checkpoint.pt``) and where it was looked for."""
    path = Path(path)
    run_dir = path if path.is_dir() else path.parent
    manifest_path = run_dir / "manifest.json"
    if ckpt.path.resolve() != (run_dir / "checkpoint.pt").resolve() or not manifest_path.is_file():
        return None, manifest_path
    return read_json_object(manifest_path, "run manifest"), manifest_path


def plan_evaluation(ckpt: Checkpoint, manifest: dict[str, Any] | None, manifest_path: Path,
                    given: dict[str, Any], batch_size: int | None = None, what: str = "these numbers") -> EvalPlan:
    """The run's protocol, size and val set unless ``given`` (None = not given), warning
    about and recording every given value that differs from the run's. Settings that are
    not keys of ``given`` are not the caller's concern (predict has no val set) and are left
    out of the warnings; ``what`` names the caller's results in them."""
    if manifest is None:
        method = ckpt.header.get("method", "?")
        run = {**DEFAULTS, "val_set": default_val_set(method)}
        source = f"defaults (no manifest.json beside {ckpt.path})"
        shown = {k: given[k] if given.get(k) is not None else v for k, v in run.items()}
        warn(f"{ckpt.path}: no run manifest beside it, so the run's evaluation settings are unknown; using "
             + ", ".join(f"{FLAGS[k]} {v}" for k, v in shown.items() if k in given)
             + " (defaults: the papers' 512 px crop" + (f", {method}'s val set)" if "val_set" in given else ")"))
        return EvalPlan(shown["eval_protocol"], int(shown["eval_size"]), shown["val_set"],
                        batch_size or DEFAULT_BATCH, None, source)
    options = manifest.get("options") or {}
    # A run made before --val-set was scored on every val image.
    run = {"eval_protocol": options.get("eval_protocol", DEFAULTS["eval_protocol"]),
           "eval_size": options.get("eval_size", DEFAULTS["eval_size"]),
           "val_set": options.get("val_set", "all")}
    used = {k: given[k] if given.get(k) is not None else v for k, v in run.items()}
    differs = {}
    for key, value in run.items():
        if key == "eval_size" and used["eval_protocol"] != "crop":
            continue  # the size only shapes the crop protocol
        if given.get(key) is not None and given[key] != value:
            differs[key] = {"run": value, "used": given[key]}
            warn(f"{FLAGS[key]} {given[key]} differs from the run's {value} ({manifest_path}): {what} "
                 "are not the run's own protocol; the output records the difference")
    run_batch = manifest.get("per_device_batch") or options.get("batch_size")
    return EvalPlan(used["eval_protocol"], int(used["eval_size"]), used["val_set"],
                    batch_size or int(run_batch or DEFAULT_BATCH), options.get("splits"),
                    f"run manifest {manifest_path}", differs)


# -- predictions ----------------------------------------------------------------------------------
SCORES_FILE = "scores.tsv"
OVERLAY_DIR = "overlays"


def label_ids(task: Task, step: int) -> np.ndarray:
    """uint8 [channels]: the label id of each model channel at ``step``, the ids of the
    dataset's own masks (COCO ids for coco-voc): what a prediction PNG holds."""
    return np.array(task.order[: task.num_classes(step)], dtype=np.uint8)


def save_prediction(out_dir: Path, name: str, labels: np.ndarray, width: int, height: int, protocol: str,
                    size: int, palette: np.ndarray, image: Image.Image | None = None) -> np.ndarray:
    """Write ``out_dir/<name>.png``, the label ids of the evaluated view (``labels``) put back
    at the image's own size (``width`` x ``height``; under the crop protocol the pixels outside
    the scored crop are 255, void) as a palette PNG in ``palette``, and with ``image`` (the
    image as read) ``out_dir/overlays/<name>.jpg``, the image with the mask blended in.
    Both atomically, the overlay first: a mask on disk means its image is done. Returns the
    full-size mask. ``evaluate --save-predictions`` and ``predict`` write through here."""
    full = visual.at_image_size(labels, width, height, protocol, size)
    if image is not None:
        visual.save_jpeg(out_dir / OVERLAY_DIR / f"{name}.jpg", visual.overlay(image, full, palette=palette))
    visual.save_label_png(out_dir / f"{name}.png", full, palette)
    return full


class PredictionWriter:
    """``on_batch`` callback writing, per val image, ``DIR/<id>.png`` and with ``overlay``
    ``DIR/overlays/<id>.jpg`` (``save_prediction``, in the dataset's palette). ``finish``
    writes ``scores.tsv``: each image's mIoU (classes with ground truth in it)."""

    def __init__(self, out_dir: Path, layout: DatasetLayout, ids: list[str], task: Task, step: int,
                 protocol: str, size: int, palette: np.ndarray, overlay: bool = False) -> None:
        self.out_dir = out_dir
        self.layout = layout
        self.ids = ids
        self.num_classes = task.num_classes(step)
        self.to_label = label_ids(task, step)
        self.protocol, self.size, self.palette, self.overlay = protocol, size, palette, overlay
        self.scores: list[tuple[str, float | None]] = []

    def __call__(self, batch: dict[str, torch.Tensor], pred: torch.Tensor) -> None:
        for p, label, index in zip(pred.cpu().numpy(), batch["label"].numpy(), batch["index"].tolist()):
            image_id = self.ids[index]
            image_path = self.layout.image_path("val", image_id)
            image = self.layout.read_image("val", image_id) if self.overlay else None
            width, height = image.size if image is not None else image_size(image_path)
            save_prediction(self.out_dir, image_id.replace(os.sep, "_"), self.to_label[p], width, height,
                            self.protocol, self.size, self.palette, image)
            self.scores.append((image_id, image_miou(p, label, self.num_classes)))

    def finish(self) -> Path:
        world = distributed.world_from_env()
        # every process scores its own slice of the images
        name = SCORES_FILE if world.size == 1 else f"scores.rank{world.rank}.tsv"
        lines = ["image_id\tmiou"] + [f"{i}\t{'' if s is None else f'{s:.4f}'}" for i, s in self.scores]
        write_text(self.out_dir / name, "\n".join(lines) + "\n")
        return self.out_dir / name


def prediction_dir(path: str | Path) -> Path:
    """The ``--save-predictions`` directory, created; refused if it is a file."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UsageError(f"{path}: --save-predictions needs a directory, this is a file")
    path.mkdir(parents=True, exist_ok=True)
    return path


def evaluate_checkpoint(path: str | Path, data: str | Path, protocol: str | None = None, size: int | None = None,
                        batch_size: int | None = None, workers: int = 2, device: str = "auto",
                        amp: str = "auto", expect_task: str | None = None,
                        save_predictions: str | Path | None = None, val_set: str | None = None,
                        overlay: bool = False, tf32: str = "off") -> dict[str, Any]:
    """Metrics of a checkpoint on its dataset's val images, with the run's protocol, size
    and val set unless given; with ``save_predictions`` also one label PNG per image."""
    if overlay and save_predictions is None:
        raise UsageError("--overlay draws the saved predictions over their images; add --save-predictions DIR")
    ckpt = load_checkpoint(path)
    task, step = ckpt.task, ckpt.step
    if expect_task is not None:
        check_task(ckpt, get_task(task.dataset, expect_task), step)
    manifest, manifest_path = run_manifest(path, ckpt)
    plan = plan_evaluation(ckpt, manifest, manifest_path,
                           {"eval_protocol": protocol, "eval_size": size, "val_set": val_set}, batch_size)
    # The last step's images decide the label space the dataset root is read in.
    layout = open_layout(task.step_datasets[step], data, task.dataset)
    splits = plan.splits if plan.splits and Path(plan.splits).is_dir() else None
    chosen = select_val_ids(layout, task, step, plan.val_set, splits, workers)

    check_files(layout, "val", chosen.ids)
    out_dir = prediction_dir(save_predictions) if save_predictions is not None else None
    model = model_from_checkpoint(ckpt)
    dev = resolve_device(device, tf32)
    warn_tf32(dev, tf32)
    dtype = amp_dtype(amp, dev)
    distributed.init(dev)
    log(f"evaluating {ckpt.describe()} ({plan.protocol}"
        f"{f' {plan.size} px' if plan.protocol == 'crop' else ''}) on the {chosen.describe()}, on {dev}")
    model.to(dev)
    loader = make_eval_loader(layout, chosen.ids, task, step, plan.protocol, plan.size, plan.batch_size, workers, dev)
    writer = None
    if out_dir is not None:
        writer = PredictionWriter(out_dir, layout, loader.dataset.ids, task, step, plan.protocol, plan.size,
                                  datasets.for_header(ckpt.header).palette, overlay)
    metrics = evaluate_on(model, loader, task, step, plan.protocol, plan.size, dev, dtype,
                          layout.class_names, on_batch=writer, val_set=plan.val_set)
    if writer is not None:
        scores = writer.finish()
        extra = f", overlays in {out_dir / OVERLAY_DIR}" if overlay else ""
        log(f"wrote {len(writer.scores)} prediction PNGs (label ids, the dataset's palette) to {out_dir}{extra}; "
            f"per-image mIoU in {scores}")
    metrics["checkpoint"] = str(ckpt.path)
    metrics["method"] = ckpt.header["method"]
    metrics["evaluation"] = plan.to_json()
    metrics["precision"] = {"device": str(dev), **precision_record(dev, dtype, tf32)}
    metrics["warnings"] = unlearned_warnings(metrics, unlearned_advice(step, (manifest or {}).get("options", {})))
    return metrics
