"""evaluate: a checkpoint (or run directory) on the validation set of its dataset."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from incseg_cli.classnames import IGNORE_INDEX
from incseg_cli.console import log
from incseg_cli.data.layouts import open_layout
from incseg_cli.data.toy import voc_palette
from incseg_cli.data.transforms import denormalize
from incseg_cli.engine import distributed
from incseg_cli.engine.checkpoint import check_task, load_checkpoint, model_from_checkpoint
from incseg_cli.engine.stage import amp_dtype, evaluate_on, make_eval_loader, resolve_device
from incseg_cli.errors import UsageError
from incseg_cli.fileio import atomic_path
from incseg_cli.stages.common import check_files
from incseg_cli.tasks import Task, get_task

GAP = 2  # white pixels between the three panels


class PredictionWriter:
    """``on_batch`` callback writing DIR/<image id>.png: image | ground truth | prediction.

    Labels are drawn in the VOC palette by label id (not model channel, which differs for
    COCO), so a colour means the same class as in the dataset's own mask PNGs; void (255)
    keeps VOC's cream colour.
    """

    def __init__(self, out_dir: Path, ids: list[str], task: Task) -> None:
        self.out_dir = out_dir
        self.ids = ids
        palette = np.array(voc_palette(), dtype=np.uint8).reshape(256, 3)
        channel_to_label = np.full(256, IGNORE_INDEX, dtype=np.int64)
        channel_to_label[: len(task.order)] = task.order
        self.colours = palette[channel_to_label]  # model channel (or 255) -> RGB
        self.written = 0

    def __call__(self, batch: dict[str, torch.Tensor], pred: torch.Tensor) -> None:
        images = (denormalize(batch["image"]) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
        labels = batch["label"].numpy()
        preds = pred.cpu().numpy()
        for image, label, p, index in zip(images, labels, preds, batch["index"].tolist()):
            gap = np.full((image.shape[0], GAP, 3), 255, dtype=np.uint8)
            panel = np.concatenate([image, gap, self.colours[label], gap, self.colours[p]], axis=1)
            name = self.ids[index].replace(os.sep, "_") + ".png"
            with atomic_path(self.out_dir / name) as tmp:
                Image.fromarray(panel).save(tmp, format="PNG")
            self.written += 1


def prediction_dir(path: str | Path) -> Path:
    """The ``--save-predictions`` directory, created; refused if it is a file."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UsageError(f"{path}: --save-predictions needs a directory, this is a file")
    path.mkdir(parents=True, exist_ok=True)
    return path


def evaluate_checkpoint(path: str | Path, data: str | Path, protocol: str = "crop", size: int = 512,
                        batch_size: int = 8, workers: int = 2, device: str = "auto",
                        amp: str = "auto", expect_task: str | None = None,
                        save_predictions: str | Path | None = None) -> dict[str, Any]:
    """Metrics of a checkpoint on its dataset's val images; with ``save_predictions`` also
    one side-by-side PNG per image in that directory."""
    if protocol not in ("crop", "full"):
        raise UsageError(f"--eval-protocol must be crop or full, got {protocol!r}")
    ckpt = load_checkpoint(path)
    task, step = ckpt.task, ckpt.step
    if expect_task is not None:
        check_task(ckpt, get_task(task.dataset, expect_task), step)
    # The last step's images decide the label space the dataset root is read in.
    layout = open_layout(task.step_datasets[step], data, task.dataset)
    val_ids = layout.ids("val")
    check_files(layout, "val", val_ids)
    out_dir = prediction_dir(save_predictions) if save_predictions is not None else None
    model = model_from_checkpoint(ckpt)
    dev = resolve_device(device)
    distributed.init(dev)
    model.to(dev)
    loader = make_eval_loader(layout, val_ids, task, step, protocol, size, batch_size, workers, dev)
    writer = PredictionWriter(out_dir, loader.dataset.ids, task) if out_dir is not None else None
    metrics = evaluate_on(model, loader, task, step, protocol, size, dev, amp_dtype(amp, dev), layout.class_names,
                          on_batch=writer)
    if writer is not None:
        log(f"wrote {writer.written} prediction images (image | ground truth | prediction) to {out_dir}")
    metrics["checkpoint"] = str(ckpt.path)
    metrics["method"] = ckpt.header["method"]
    return metrics
