"""Streaming confusion matrix and the mIoU groups every stage reports.

Groups (the output says which classes each one holds):
- all: every class seen so far, background included (both papers' "All");
- old: classes of earlier steps, background excluded (WILSON's "1-15");
- new: classes of the current step (background excluded at step 0);
- background: class 0 alone;
- base / added: step-0 classes without background / every class added after step 0, the
  "0-15 | 16-20" convention of multi-step tables (MiB, PLOP, ALIFE).
A class without ground-truth pixels has IoU null and is left out of every mean.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable

import numpy as np
import torch
import torch.distributed as dist

from incseg_cli.datasets.base import IGNORE_INDEX
from incseg_cli import datasets
from incseg_cli.console import ProgressBar, warn
from incseg_cli.data.transforms import normalize_on_device
from incseg_cli.models.util import unwrap
from incseg_cli.reporting import harmonic_iou
from incseg_cli.tasks import Task, class_ranges


class ConfusionMatrix:
    """Counts kept on the device in one flat buffer: n·n cells and an extra one where ignored
    (255) pixels land, so an update neither selects pixels by a mask nor waits for the device.
    A fixed-size scatter-add fills it rather than ``torch.bincount``, which on CUDA reads its
    input's min and max on the host to size the output (two syncs per batch). ``numpy`` is
    the one host copy."""

    def __init__(self, num_classes: int, device: torch.device | str = "cpu") -> None:
        self.n = num_classes
        self.counts = torch.zeros(num_classes * num_classes + 1, dtype=torch.int64, device=device)

    @property
    def mat(self) -> torch.Tensor:
        """Rows are ground truth, columns predictions."""
        return self.counts[: self.n * self.n].view(self.n, self.n)

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        t = target.reshape(-1).long()
        cells = torch.where(t == IGNORE_INDEX, self.n * self.n, t * self.n + pred.reshape(-1).long())
        self.counts.index_add_(0, cells, torch.ones((), dtype=torch.int64, device=cells.device).expand(cells.shape))

    def all_reduce(self) -> None:
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(self.counts)

    def numpy(self) -> np.ndarray:
        return self.mat.cpu().numpy()


def iou_per_class(mat: np.ndarray) -> np.ndarray:
    tp = np.diag(mat).astype(np.float64)
    gt = mat.sum(1).astype(np.float64)
    pred = mat.sum(0).astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = tp / (gt + pred - tp)
    iou[gt == 0] = np.nan
    return iou


def image_miou(pred: np.ndarray, target: np.ndarray, num_classes: int) -> float | None:
    """mIoU of one image scored as ``evaluate`` scores a set (classes with ground-truth pixels
    in it, 255 skipped): the per-image score of ``--save-predictions`` and example grids."""
    keep = target != IGNORE_INDEX
    t = target[keep].astype(np.int64)
    p = pred[keep].astype(np.int64)
    mat = np.bincount(t * num_classes + p, minlength=num_classes * num_classes).reshape(num_classes, num_classes)
    return _mean(iou_per_class(mat))


def _mean(values: Iterable[float]) -> float | None:
    vals = [v for v in values if not np.isnan(v)]
    return float(np.mean(vals)) if vals else None


def unlearned_classes(classes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The classes of this step (new at a step; every class at step 0) that the val set
    shows but the model never predicts, or never predicts right (IoU 0): a 0 in a table that
    is the sign of a class not learned, not of a hard one."""
    out = []
    for c in classes:
        # metrics.json files of older incseg versions may lack the pixel counts: nothing to say
        if "pred_pixels" not in c or "gt_pixels" not in c:
            continue
        if c.get("group") == "new" and c["gt_pixels"] > 0 and (c["pred_pixels"] == 0 or not c.get("iou")):
            out.append({"label": c["label"], "name": c["name"], "iou": c["iou"], "pred_pixels": c["pred_pixels"],
                        "gt_pixels": c["gt_pixels"], "never_predicted": c["pred_pixels"] == 0})
    return out


def metrics_from_confusion(mat: np.ndarray, task: Task, step: int, protocol: dict[str, Any],
                           class_names: list[str] | None = None) -> dict[str, Any]:
    names = class_names or task.class_names
    seen = task.seen_classes(step)
    iou = iou_per_class(mat)
    index = {label: task.model_index(label) for label in seen}
    groups = task.class_groups(step)
    classes = []
    for label in seen:
        i = index[label]
        group = "background" if label == 0 else ("new" if label in groups["new"] else "old")
        classes.append({
            "label": label,
            "channel": i,
            "name": names[label] if label < len(names) else str(label),
            "group": group,
            "iou": None if np.isnan(iou[i]) else float(iou[i]),
            "gt_pixels": int(mat[i].sum()),
            "pred_pixels": int(mat[:, i].sum()),
        })
    total = mat.sum()
    miou = {g: _mean(iou[index[c]] for c in labels) for g, labels in groups.items()}
    return {
        "dataset": task.dataset,
        **datasets.header_entry(task.dataset),  # a dataset of one's own: its description, for report
        "task": task.key,
        **task.order_entry(),  # a named class order's sequence, for report
        "step": step,
        "protocol": protocol,
        "miou": miou,
        "hiou": harmonic_iou(miou.get("base_bg"), miou.get("added")),
        "groups": {g: class_ranges(labels) for g, labels in groups.items()},
        "pixel_accuracy": float(np.trace(mat) / total) if total else None,
        "pixels": int(total),
        "unlearned": unlearned_classes(classes),
        "classes": classes,
        "confusion": mat.tolist(),
    }


# Called with each batch as the loader gave it (on the CPU) and its predicted channels.
BatchCallback = Callable[[dict[str, torch.Tensor], torch.Tensor], None]


def predict_batch(model: torch.nn.Module, images: torch.Tensor, device: torch.device,
                  amp_dtype: torch.dtype | None = None) -> torch.Tensor:
    """The predicted channel of every pixel of a loader's image batch (uint8 [N, 3, H, W])
    under the model's decision rule (argmax, or DKD's sigmoid rule, ``spec.decision``): the
    one forward pass of evaluate, predict and the Python API, so that they agree."""
    image = normalize_on_device(images, device)
    with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
        logits = model(image)["logits"]
    return unwrap(model).decide(logits)


@torch.no_grad()
def run_evaluation(model: torch.nn.Module, loader: Iterable[dict[str, torch.Tensor]], num_classes: int,
                   device: torch.device, amp_dtype: torch.dtype | None = None, total: int | None = None,
                   description: str = "evaluate", on_batch: BatchCallback | None = None) -> ConfusionMatrix:
    """Confusion matrix of the predictions over ``loader``; ``on_batch`` sees every
    batch with its predictions (``evaluate --save-predictions``)."""
    was_training = model.training
    model.eval()
    cm = ConfusionMatrix(num_classes, device)
    with ProgressBar(total or 0, description) as bar:
        for batch in loader:
            target = batch["label"].to(device, non_blocking=True)
            pred = predict_batch(model, batch["image"], device, amp_dtype)
            cm.update(pred, target)
            if on_batch is not None:
                on_batch(batch, pred)
            bar.advance(pred.shape[0])
    cm.all_reduce()
    model.train(was_training)
    return cm


UNLEARNED_ADVICE = {
    "step0": "too few epochs for it, or objects too thin for the crop and output stride (void borders can cover "
             "them); try more --epochs, a larger --crop-size, or check its masks",
    "mib-init": "its head starts as a copy of the background row (the MiB initialisation) and the encoder has not "
                "separated it from the background: on small data or a small encoder try --head-init random, more "
                "--epochs or a higher --lr",
    "step": "try more --epochs or a higher --lr, and check that the step's training images show it",
}


def unlearned_warnings(metrics: dict[str, Any], advice: str) -> list[str]:
    """One warning per class of ``metrics['unlearned']``, with the likely cause and what to try
    (``advice``: a key of ``UNLEARNED_ADVICE``); logged, and returned for the JSON."""
    lines = []
    for c in metrics.get("unlearned", []):
        what = "never predicted" if c["never_predicted"] else f"predicted on {c['pred_pixels']} pixels, none right"
        lines.append(f"class {c['label']} {c['name']} of step {metrics['step']} is {what} on the val set (IoU 0 over "
                     f"{c['gt_pixels']} pixels): not learned; {UNLEARNED_ADVICE[advice]}")
    for line in lines:
        warn(line)
    return lines


def unlearned_advice(step: int, options: dict[str, Any]) -> str:
    """Which advice fits a run's unlearned classes, from its step and recorded options."""
    if step == 0:
        return "step0"
    return "mib-init" if options.get("head_init") == "mib" else "step"
