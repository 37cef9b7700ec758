"""report --examples K: a grid of K val images, their ground truth and every run's prediction.

One row per image: the image and its ground truth as the evaluation sees them (the run's
protocol: the centre crop at its size, or the whole image), then each run's prediction,
class-coloured in the VOC palette (label ids, as the dataset's own masks), with the image's
mIoU under it (the run's seen classes with ground truth in the image, as ``evaluate``
scores). A legend names every class that appears. Images come from their files, never
from normalised tensors.

The images: evenly spaced over the first run's val set at the latest step in the report,
taken from those holding a class of that step when there are enough, so that the grid shows
what the step added.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from incseg_cli import datasets
from incseg_cli.console import warn
from incseg_cli.data.valsets import select_val_ids, val_image_classes
from incseg_cli.datasets import open_layout
from incseg_cli.datasets.base import IGNORE_INDEX
from incseg_cli.engine.checkpoint import load_checkpoint, model_from_checkpoint
from incseg_cli.engine.evaluate import image_miou, run_evaluation
from incseg_cli.engine.examplegrid import spread
from incseg_cli.engine.stage import make_eval_loader
from incseg_cli.errors import UsageError
from incseg_cli.fileio import atomic_path
from incseg_cli.stages.evaluate import FLAGS, run_manifest, plan_evaluation
from incseg_cli.stages.report.plots import pyplot
from incseg_cli.stages.report.runs import Run
from incseg_cli.visual import PALETTE, colourise, eval_view

EXAMPLES_FILE = "examples.png"
MAX_EXAMPLES = 64


def choose_images(layout: Any, run: Run, k: int, splits: str | None) -> list[str]:
    task, step = run.task, run.step
    ids = select_val_ids(layout, task, step, run.val_set, splits).ids
    new = set(task.new_classes(step)) - {0}
    table = val_image_classes(layout, splits).table
    showing = [i for i in ids if new.intersection(table[i])]
    return spread(showing if len(showing) >= k else ids, k)


@torch.no_grad()
def predict(run: Run, layout: Any, ids: list[str], protocol: str, size: int) -> list[tuple[np.ndarray, float | None]]:
    """(label-id prediction, image mIoU) of ``run`` for each of ``ids``, in order, on the CPU."""
    ckpt = load_checkpoint(run.checkpoint)
    task, step = ckpt.task, ckpt.step
    model = model_from_checkpoint(ckpt)
    loader = make_eval_loader(layout, ids, task, step, protocol, size, 8, 0, torch.device("cpu"))
    to_label = np.array(task.order[: task.num_classes(step)], dtype=np.uint8)
    out: list[Any] = [None] * len(ids)

    def keep(batch: dict[str, torch.Tensor], pred: torch.Tensor) -> None:
        for p, label, index in zip(pred.numpy(), batch["label"].numpy(), batch["index"].tolist()):
            out[index] = (to_label[p], image_miou(p, label, task.num_classes(step)))

    run_evaluation(model, loader, task.num_classes(step), torch.device("cpu"), total=len(ids),
                   description=f"examples: {run.label}", on_batch=keep)
    return out


def example_grid(runs: list[Run], data: str | Path, k: int, path: str | Path, protocol: str | None = None,
                 size: int | None = None) -> Path:
    """Draw the grid of ``k`` val images of ``data`` for ``runs`` into ``path`` (PNG)."""
    if not 1 <= k <= MAX_EXAMPLES:
        raise UsageError(f"--examples must be in 1..{MAX_EXAMPLES}, got {k}")
    first = runs[0]
    source = (first.task.step_datasets[first.step], first.dataset)
    shown = [r for r in runs if (r.task.step_datasets[r.step], r.dataset) == source]
    for r in runs:
        if r not in shown:
            warn(f"{r.path}: evaluated on {r.task.step_datasets[r.step]} images in {r.dataset} labels, "
                 f"not like {first.path}; left out of the examples")
    missing = [r for r in shown if not r.checkpoint.is_file()]
    for r in missing:
        warn(f"{r.path}: no checkpoint.pt; left out of the examples")
    shown = [r for r in shown if r not in missing]
    if not shown:
        raise UsageError("--examples: none of the runs has a checkpoint to predict with")
    # The settings of the first run, unless given; a run that was scored otherwise is named.
    manifest, manifest_path = run_manifest(shown[0].path, load_checkpoint(shown[0].checkpoint))
    plan = plan_evaluation(load_checkpoint(shown[0].checkpoint), manifest, manifest_path,
                           {"eval_protocol": protocol, "eval_size": size, "val_set": None})
    for r in shown[1:]:
        theirs = {"eval_protocol": r.options.get("eval_protocol"), "eval_size": r.options.get("eval_size")}
        for key, value in theirs.items():
            used = plan.protocol if key == "eval_protocol" else plan.size
            if value is not None and value != used and not (key == "eval_size" and plan.protocol != "crop"):
                warn(f"{r.path}: was scored with {FLAGS[key]} {value}; its examples use {used}")
    layout = open_layout(source[0], data, source[1])
    latest = max(shown, key=lambda r: r.step)
    splits = plan.splits if plan.splits and Path(plan.splits).is_dir() else None
    ids = choose_images(layout, latest, k, splits)
    views = []
    for image_id in ids:
        image, mask = eval_view(layout.read_image("val", image_id), layout.read_mask("val", image_id),
                                plan.protocol, plan.size)
        views.append((image, mask))
    predictions = [predict(r, layout, ids, plan.protocol, plan.size) for r in shown]
    path = Path(path)
    _draw(ids, views, shown, predictions, layout.class_names, path,
          f"{plan.protocol}{f' {plan.size} px' if plan.protocol == 'crop' else ''}",
          datasets.get(layout.label_space).palette)
    return path


def _draw(ids: list[str], views: list[tuple[Any, np.ndarray]], runs: list[Run],
          predictions: list[list[tuple[np.ndarray, float | None]]], names: list[str], path: Path,
          protocol: str, palette: np.ndarray = PALETTE) -> None:
    from matplotlib.patches import Patch


    plt = pyplot()
    cols, rows = 2 + len(runs), len(ids)
    panel, caption, header, legend_row = 1.9, 0.3, 0.75, 0.22  # inches
    names_of = {}
    present: set[int] = set()
    for (_, mask), preds in zip(views, zip(*predictions)):
        present.update(np.unique(mask).tolist())
        for labels, _ in preds:
            present.update(np.unique(labels).tolist())
    for label in sorted(present):
        names_of[label] = ("void (not scored)" if label == IGNORE_INDEX
                           else f"{label} {names[label] if label < len(names) else ''}".strip())
    per_row = max(cols, 4)
    legend = legend_row * (len(present) // per_row + 1) + 0.15
    width, height = panel * cols, header + rows * (panel + caption) + legend
    fig, axes = plt.subplots(rows, cols, figsize=(width, height), squeeze=False)
    fig.subplots_adjust(left=0.01, right=0.99, top=1 - header / height, bottom=legend / height,
                        wspace=0.06, hspace=caption / panel)
    for i, (image_id, (image, mask)) in enumerate(zip(ids, views)):
        panels = [(np.asarray(image), image_id), (colourise(mask, palette), "")]
        for preds in predictions:
            labels, score = preds[i]
            panels.append((colourise(labels, palette), "mIoU –" if score is None else f"mIoU {100 * score:.1f}"))
        for j, (pixels, text) in enumerate(panels):
            ax = axes[i][j]
            ax.imshow(pixels, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_xlabel(text, fontsize=7, labelpad=2)
    heads = ["image", "ground truth"] + [f"{r.label}\n{r.metrics['task']} step {r.step}" for r in runs]
    for j, head in enumerate(heads):
        axes[0][j].set_title(head, fontsize=8)
    handles = [Patch(facecolor=palette[label] / 255.0, edgecolor="black", linewidth=0.3, label=name)
               for label, name in names_of.items()]
    fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), per_row), fontsize=7,
               frameon=False, bbox_to_anchor=(0.5, 0.0))
    fig.suptitle(f"val images ({protocol}), ground truth and each run's prediction; under it the image's mIoU\n"
                 "over the run's seen classes (classes of later steps count as background, as evaluate scores)",
                 fontsize=8, y=1 - 0.08 / height)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
