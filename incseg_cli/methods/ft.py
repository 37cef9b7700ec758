"""Fine-tuning: plain cross-entropy on the step's labels (old classes seen as background)."""

from __future__ import annotations

import torch
from torch import nn

from incseg_cli.losses.supervised import cross_entropy
from incseg_cli.methods.base import StepInfo
from incseg_cli.methods.step import StepMethod


class FineTuning(StepMethod):
    name = "ft"
    summary = "fine-tuning, no protection of old classes"
    head_init = "random"

    def losses(self, model: nn.Module, batch: dict[str, torch.Tensor], info: StepInfo) -> dict[str, torch.Tensor]:
        return {"ce": cross_entropy(model(batch["image"])["logits"], batch["label"])}
