"""The image replay memory of a training step (``train-step --replay-images M``).

Candidates (DKD's ``get_memory`` in ``train_voc.py``, with two documented differences,
docs/methods/dkd.md):

- step 1: every step-0 training image, listed for the step-0 classes it shows. incseg reads
  them from the split's label table (the whole image) where the official code reads the
  classes of one random training crop, which may miss a class;
- step t >= 2: the step t-1 memory (``memory.json`` of ``--prev``), then every step t-1
  training image, listed for the classes of its step t-1 label map plus the classes the
  **trained** step t-1 model predicts with confidence >= 0.9 on its background pixels (the
  official code asks a model whose weights are not loaded yet).

The memory is chosen once per run: a resumed run reads it back from its own directory.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from incseg_cli import signals
from incseg_cli.console import log
from incseg_cli.data.dataset import SegmentationDataset
from incseg_cli.data.splits import load_labels, load_split
from incseg_cli.data.transforms import EvalTransform, normalize_on_device
from incseg_cli.datasets.base import IGNORE_INDEX
from incseg_cli.engine.speed import loader_speed_options
from incseg_cli.errors import InputError
from incseg_cli.models.decision import confident_channel
from incseg_cli.replay import Candidate, ReplayMemory, memory_of_run, select_memory
from incseg_cli.tasks import Task

# DKD's pseudo-label confidence (train_voc.py: ``pseudo_label_threshold``... ``>= 0.9``).
PSEUDO_CONFIDENCE = 0.9


@torch.no_grad()
def confident_classes(model: torch.nn.Module, layout: Any, ids: list[str], task: Task, step: int,
                      device: torch.device, size: int, batch_size: int, workers: int,
                      threshold: float = PSEUDO_CONFIDENCE) -> dict[str, list[int]]:
    """Per image of ``ids`` (training images of ``step``): the label ids its step-``step``
    label map shows, and those the model (trained through ``step``) predicts with confidence
    >= ``threshold`` on pixels that map leaves as background. Confidence: the largest sigmoid
    score over channels 1.. for a DKD model, the softmax probability of the argmax otherwise.
    Images are resized and centre-cropped as in evaluation (``size``)."""
    dataset = SegmentationDataset(layout, "train", ids, EvalTransform("crop", size), lut=task.train_lut(step))
    loader = signals.Loader(dataset, batch_size=batch_size, shuffle=False, **loader_speed_options(workers, device))
    model.eval()
    out: dict[str, list[int]] = {}
    for batch in loader:
        logits = model(normalize_on_device(batch["image"], device))["logits"].float()
        confidence, channel = confident_channel(logits, model.spec.decision)
        label = batch["label"].to(device).long()
        pseudo = (label == 0) & (confidence >= threshold) & (channel >= 1)
        merged = torch.where(pseudo, channel, label)
        for row, index in enumerate(batch["index"].tolist()):
            values = [int(v) for v in merged[row].unique().tolist() if v not in (0, IGNORE_INDEX)]
            out[ids[index]] = sorted(task.order[v] for v in values)
    return out


def step_candidates(task: Task, step: int, splits_root: Path, prev_memory: ReplayMemory | None,
                    labeller: Any = None) -> list[Candidate]:
    """The candidates of step ``step``'s memory. ``labeller(ids)`` lists the classes of the
    step ``step - 1`` images (``confident_classes`` with the old model), needed from step 2."""
    previous = step - 1
    ids = load_split(splits_root, task, previous)
    if previous == 0:
        keep = {c for c in task.new_classes(0) if c != 0}
        table = load_labels(splits_root, task, 0)
        return [(i, sorted(c for c in table[i] if c in keep)) for i in ids]
    if prev_memory is None:
        raise InputError(f"--replay-images at step {step}: the step {previous} run given as --prev has no "
                         "memory.json (it was trained without --replay-images); train it with replay first")
    labels = labeller(ids)
    return prev_memory.entries + [(i, labels[i]) for i in ids]


def build_memory(task: Task, step: int, size: int, seed: int, splits_root: Path, prev_run: Path | None,
                 labeller: Any = None) -> ReplayMemory:
    """Select step ``step``'s replay memory of ``size`` images (``select_memory``) over the
    classes of steps before it."""
    prev_memory = memory_of_run(prev_run) if prev_run is not None and step >= 2 else None
    candidates = step_candidates(task, step, splits_root, prev_memory, labeller)
    classes = sorted(c for c in task.old_classes(step) if c != 0)
    memory = ReplayMemory(step, size, seed, select_memory(candidates, classes, size, seed))
    counts = ", ".join(f"{c}: {len(e)}" for c, e in memory.by_class.items())
    log(f"replay memory: {len(memory.ids)} images of steps < {step} from {len(candidates)} candidates "
        f"(per class {counts})")
    return memory
