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
from incseg_cli.models.decision import ARGMAX, SIGMOID

LOSSES = {"ce": cross_entropy, "bce": bce_one_hot, "dkd": step0_losses}
# DKD's step-0 positive weight: --pos_weight 2 in the VOC scripts, 35 in the ADE config.
DKD_POS_WEIGHT = {"ade": 35.0}
DKD_DEFAULT_POS_WEIGHT = 2.0
# DKD's models/model.py _set_bn_momentum: the backbone's BatchNorm momentum at step 0.
DKD_BACKBONE_BN_MOMENTUM = 0.01
HEAD_LR_FACTOR = 10.0  # DKD: every group but the backbone learns 10× faster
# DKD's step-0 recipes (configs/config_{voc,ade}.json and the scripts; torchvision's ResNet
# dilation, whose layer4 first block is not dilated), by preset. COCO takes VOC's. The toy
# preset keeps its own rate and optimiser with 2.5× its 12 epochs, as DKD's VOC recipe has
# 2× MiB's: on the toy data its sigmoid heads need them (docs/methods/dkd.md).
DKD_BASE_RECIPES: dict[str, dict[str, Any]] = {
    "voc": {"epochs": 60, "batch_size": 32, "lr": 1e-3, "optimizer": "sgd", "weight_decay": 1e-4,
            "dilate_first_block": False},
    "ade": {"epochs": 100, "batch_size": 24, "lr": 2.5e-3, "optimizer": "sgd", "weight_decay": 1e-4,
            "lr_warmup": 0.2, "dilate_first_block": False},
    "toy": {"epochs": 30},
}


def dkd_param_groups(model: nn.Module, lr: float) -> list[dict[str, Any]]:
    """DKD's step-0 groups (``train_voc.py``): the backbone at ``lr``; ASPP, decoder and every
    classifier at 10·lr; the optimiser's weight decay on all."""
    return [
        {"name": "backbone", "params": list(model.backbone.parameters()), "lr": lr},
        {"name": "head", "params": [*model.aspp.parameters(), *model.decoder.parameters(),
                                    *model.classifier.parameters()], "lr": HEAD_LR_FACTOR * lr},
    ]


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
