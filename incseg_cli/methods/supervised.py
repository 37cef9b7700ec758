"""Step 0 (and joint training): full pixel supervision with CE, WILSON's one-hot BCE, or
DKD's per-class sigmoid BCE with its auxiliary classifier."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from incseg_cli.errors import UsageError
from incseg_cli.losses.dkd import step0_losses
from incseg_cli.losses.supervised import bce_one_hot, cross_entropy
from incseg_cli.methods.base import Method, StepInfo
from incseg_cli.methods.dkd import DKD_BACKBONE_BN_MOMENTUM, DKD_BASE_RECIPES, dkd_param_groups
from incseg_cli.models.decision import ARGMAX, SIGMOID

LOSSES = {"ce": cross_entropy, "bce": bce_one_hot, "dkd": step0_losses}


class Supervised(Method):
    name = "base"

    @classmethod
    def recipe(cls, loss: str, preset: str) -> dict[str, Any]:
        """Values of the step-0 options this loss changes from the preset's (DKD's recipe)."""
        if loss != "dkd":
            return {}
        return dict(DKD_BASE_RECIPES.get(preset, DKD_BASE_RECIPES["voc"]))

    @classmethod
    def val_set_for(cls, loss: str | None = None) -> str:
        # --loss bce is WILSON's step 0, and WILSON's code scores every val image
        return "all" if loss == "bce" else cls.val_set

    def __init__(self, loss: str = "ce", pos_weight: float | None = None) -> None:
        if loss not in LOSSES:
            raise UsageError(f"unknown loss {loss!r}; use {', '.join(LOSSES)}")
        if pos_weight is not None and loss != "dkd":
            raise UsageError(f"--pos-weight is DKD's (--loss dkd), not used by --loss {loss}")
        self.loss = loss
        self.pos_weight = pos_weight
        # --loss bce is WILSON's step 0 and --loss dkd DKD's, both trained by their code in fp16
        # with a GradScaler; ALIFE's and MiB's step 0 (ce) train in fp32.
        self.precision = "off" if loss == "ce" else "fp16"

    @property
    def decision(self) -> str:
        """The decision rule of the model this loss trains (models/decision.py)."""
        return SIGMOID if self.loss == "dkd" else ARGMAX

    def prepare_model(self, model: nn.Module) -> None:
        """DKD: the backbone's BatchNorm momentum (the ASPP's and decoder's keep 0.1)."""
        if self.loss == "dkd":
            for module in model.backbone.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.momentum = DKD_BACKBONE_BN_MOMENTUM

    def param_groups(self, model: nn.Module, lr: float) -> list[dict[str, Any]]:
        return dkd_param_groups(model, lr) if self.loss == "dkd" else super().param_groups(model, lr)

    def losses(self, model: nn.Module, batch: dict[str, torch.Tensor], info: StepInfo) -> dict[str, torch.Tensor]:
        logits = model(batch["image"])["logits"]
        if self.loss == "dkd":
            return step0_losses(logits, batch["label"], self.pos_weight)
        return {self.loss: LOSSES[self.loss](logits, batch["label"])}

    def header(self) -> dict:
        return {"loss": self.loss, **({"pos_weight": self.pos_weight} if self.loss == "dkd" else {})}
