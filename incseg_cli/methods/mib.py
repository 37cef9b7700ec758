"""MiB (Cermelli et al., CVPR 2020): calibrated CE on the step's labels + λ_KD · calibrated
distillation from the frozen step t-1 model, new head initialised from the background row.

Epochs and LR come from the step presets, which are MiB's own recipe for VOC (30 epochs,
lr 1e-3) and ADE (60, 1e-3) and, for the toy data, the settings measured on it (6 epochs,
Adam 1e-3).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from incseg_cli.config import option
from incseg_cli.losses.mib import calibrated_cross_entropy, mib_losses
from incseg_cli.methods.base import StepInfo
from incseg_cli.methods.step import StepContext, StepMethod
from incseg_cli.limits import NON_NEGATIVE


@dataclass(kw_only=True)
class MiBOptions:
    # MiB's VOC recipe (and the measured toy runs) weigh the distillation by 10.
    lambda_kd: float = option(10.0, limit=NON_NEGATIVE, help="Weight of the calibrated distillation from the step t-1 model.")


class MiB(StepMethod):
    name = "mib"
    summary = "MiB: unbiased cross-entropy and distillation"
    head_init = "mib"
    Options = MiBOptions

    def __init__(self, old_model: nn.Module, num_old: int, lambda_kd: float) -> None:
        self.old_model = old_model
        self.num_old = num_old
        self.lambda_kd = float(lambda_kd)

    @classmethod
    def from_context(cls, ctx: StepContext) -> "MiB":
        return cls(ctx.old_model, len(ctx.task.old_classes(ctx.step)), ctx.options.lambda_kd)

    def frozen_modules(self) -> dict[str, nn.Module]:
        return {"old_model": self.old_model}

    def losses(self, model: nn.Module, batch: dict[str, torch.Tensor], info: StepInfo) -> dict[str, torch.Tensor]:
        image = batch["image"]
        logits = model(image)["logits"]
        if self.lambda_kd <= 0:
            return {"cce": calibrated_cross_entropy(logits, batch["label"], self.num_old)}
        with torch.no_grad():
            old_logits = self.old_model(image)["logits"]
        cce, ckd = mib_losses(logits, old_logits, batch["label"])  # one log-partition for both
        return {"cce": cce, "ckd": self.lambda_kd * ckd}

    def header(self) -> dict[str, Any]:
        return {"lambda_kd": self.lambda_kd, "num_old": self.num_old}
