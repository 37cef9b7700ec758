"""The example grid that ``--log-to`` sends with every validation: ``EXAMPLES`` fixed val
images, one row each: the image as the evaluation sees it (read from its file, the run's
protocol and size), its ground truth (the file's label ids) and the model's prediction (label
ids through the task's class order), both in the dataset's palette (void 255 as the palette
colours it).

The predictions are those of the validation pass itself, kept by its ``on_batch``: the grid
costs no forward pass of its own, shows the model's decision rule exactly as it was scored,
and adds no collective operation. Under torchrun each process evaluates its slice of the val
set, so the images are chosen over the slice of the process that tracks (rank 0): evenly
spaced over it, which is every ``world size``-th val image.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

from incseg_cli import datasets
from incseg_cli.tasks import Task
from incseg_cli.visual import colourise, eval_view

EXAMPLES = 4


def spread(items: Sequence[Any], k: int) -> list[Any]:
    """``k`` items evenly spaced over ``items`` (all of them when there are fewer)."""
    if len(items) <= k:
        return list(items)
    return [items[round(i * (len(items) - 1) / max(k - 1, 1))] for i in range(k)]


class ExampleGrid:
    """Keeps the predictions of the chosen images as a validation pass goes (``on_batch``)
    and draws them (``grid``). ``ids`` are the val ids of this process's eval loader, in its
    order: a batch's ``index`` is a position in them."""

    def __init__(self, layout: Any, ids: Sequence[str], task: Task, step: int, protocol: str, size: int,
                 k: int = EXAMPLES) -> None:
        self.layout = layout
        self.protocol, self.size = protocol, size
        self.ids = spread(list(ids), k)
        position = {image_id: n for n, image_id in enumerate(ids)}
        self.rows = {position[image_id]: row for row, image_id in enumerate(self.ids)}
        self.to_label = np.asarray(task.order[: task.num_classes(step)], dtype=np.int64)
        self.palette = datasets.get(layout.label_space).palette
        self.predictions: dict[int, np.ndarray] = {}
        self._views: list[np.ndarray] | None = None

    def on_batch(self, batch: dict[str, torch.Tensor], pred: torch.Tensor) -> None:
        """A ``run_evaluation`` callback: copies to the host only the chosen images' predictions."""
        for j, index in enumerate(batch["index"].tolist()):
            row = self.rows.get(index)
            if row is not None:
                self.predictions[row] = self.to_label[pred[j].cpu().numpy()]

    def _image_and_truth(self) -> list[np.ndarray]:
        # read once: the images and their ground truth never change during a run
        if self._views is None:
            self._views = []
            for image_id in self.ids:
                image, mask = eval_view(self.layout.read_image("val", image_id),
                                        self.layout.read_mask("val", image_id), self.protocol, self.size)
                self._views.append(np.concatenate([np.asarray(image.convert("RGB")),
                                                   colourise(mask, self.palette)], axis=1))
        return self._views

    def grid(self) -> np.ndarray | None:
        """uint8 [H, W, 3]: a row per image of image | ground truth | prediction, those of the
        last validation pass (then forgotten, so that a grid is never sent twice); None when
        that pass did not see every chosen image (nothing to draw yet)."""
        if not self.ids or len(self.predictions) < len(self.ids):
            return None
        rows = [np.concatenate([view, colourise(self.predictions[row], self.palette)], axis=1)
                for row, view in enumerate(self._image_and_truth())]
        self.predictions = {}
        # under the full protocol the images differ in size: narrower rows are padded with black
        width = max(r.shape[1] for r in rows)
        return np.ascontiguousarray(np.concatenate(
            [np.pad(r, ((0, 0), (0, width - r.shape[1]), (0, 0))) for r in rows], axis=0), dtype=np.uint8)
