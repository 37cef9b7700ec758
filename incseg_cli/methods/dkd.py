"""DKD (Baek et al., "Decomposed Knowledge Distillation for Class-Incremental Semantic
Segmentation", NeurIPS 2022; ``cvlab-yonsei/DKD``) and DKD-M, the same method with image
replay (``train-step --replay-images``, ``stages/replay.py``).

A DKD model (trained at step 0 with ``train-base --loss dkd``) gives every class its own
sigmoid score; row 0 of the first head is an auxiliary classifier on detached features, and
the model predicts with the sigmoid rule (``models/decision.py``). At step t >= 1 the new head
copies the auxiliary row (``head_init = "aux"``), every BatchNorm and dropout is frozen, and
the loss is ``1·Σ mbce + 5·Σ kd + 5·Σ pos + 5·Σ neg + 1·ac`` (``losses/dkd.py``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from incseg_cli.config import option
from incseg_cli.errors import IncompatibleError
from incseg_cli.limits import NON_NEGATIVE, POSITIVE
from incseg_cli.losses.dkd import WEIGHTS, step_losses
from incseg_cli.methods.base import StepInfo
from incseg_cli.methods.step import StepContext, StepDefaults, StepMethod
from incseg_cli.models.decision import SIGMOID
from incseg_cli.models.util import eval_frozen, unwrap
from incseg_cli.tasks import Task

# -- step 0 (train-base --loss dkd, methods/supervised.py) ----------------------------------------
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


@dataclass(kw_only=True)
class DKDOptions:
    lambda_kd: float = option(WEIGHTS["kd"], limit=NON_NEGATIVE, help="Weight of the old classes' logit distillation.")
    lambda_dkd_pos: float = option(WEIGHTS["dkd_pos"], limit=NON_NEGATIVE,
                                   help="Weight of the positive part's distillation (W⁺·f).")
    lambda_dkd_neg: float = option(WEIGHTS["dkd_neg"], limit=NON_NEGATIVE,
                                   help="Weight of the negative part's distillation (W⁻·f).")
    lambda_ac: float = option(WEIGHTS["ac"], limit=NON_NEGATIVE, help="Weight of the auxiliary classifier's loss.")
    pos_weight: float | None = option(limit=POSITIVE, help="The new classes' BCE weight of positive pixels. "
                                                           "[ade: 35, else 1]")


# DKD's recipes (configs/config_{voc,ade}.json, scripts/*/overlapped): steps t >= 1.
VOC_RECIPE = StepDefaults(options=DKDOptions(pos_weight=1.0), epochs=60, lr=1e-4, batch_size=32)
ADE_RECIPE = StepDefaults(options=DKDOptions(pos_weight=35.0), epochs=100, lr=2.5e-4, batch_size=24, lr_warmup=0.2)
# The toy preset keeps its optimiser and rate; 20 epochs where its 6 leave the sigmoid heads of the
# new classes unlearned (measured on toy 10-5-5-ov: new 5.7 % mIoU at 6 epochs, 31.9 % at 20;
# DKD's VOC recipe also trains twice as long as MiB's), docs/methods/dkd.md.
TOY_RECIPE = StepDefaults(options=DKDOptions(pos_weight=1.0), epochs=20)
# DKD-M's memory: 100 images on VOC, 300 on ADE (the scripts' MEMORY_SIZE).
MEMORY_SIZE = {"ade": 300}
DEFAULT_MEMORY_SIZE = 100


def dkd_step_param_groups(model: nn.Module, lr: float) -> list[dict[str, Any]]:
    """``train_voc.py`` at t >= 1: backbone convolutions at ``lr``, ASPP and decoder
    convolutions and the old heads (the auxiliary row's included) at 10·lr, all without
    weight decay; the new head at 10·lr with the optimiser's weight decay. BatchNorm
    parameters are in no group: frozen, they never change."""
    def convs(module: nn.Module) -> list[nn.Parameter]:
        return [p for m in module.modules() if not isinstance(m, nn.modules.batchnorm._BatchNorm)
                for p in m.parameters(recurse=False)]

    heads = model.classifier.heads
    return [
        {"name": "backbone", "params": convs(model.backbone), "lr": lr, "weight_decay": 0.0},
        {"name": "aspp", "params": convs(model.aspp) + convs(model.decoder), "lr": HEAD_LR_FACTOR * lr,
         "weight_decay": 0.0},
        {"name": "old_heads", "params": [p for h in heads[:-1] for p in h.parameters()], "lr": HEAD_LR_FACTOR * lr,
         "weight_decay": 0.0},
        {"name": "new_head", "params": list(heads[-1].parameters()), "lr": HEAD_LR_FACTOR * lr},
    ]


class DKD(StepMethod):
    name = "dkd"
    summary = "DKD: decomposed knowledge distillation, sigmoid heads"
    head_init = "aux"
    Options = DKDOptions
    # The official runs are fp16 autocast with a GradScaler (config use_amp).
    precision = "fp16"

    def __init__(self, old_model: nn.Module, pos_weight: float, weights: dict[str, float]) -> None:
        self.old_model = old_model
        self.pos_weight = float(pos_weight)
        self.weights = weights

    @classmethod
    def recipe(cls, task: Task, preset: str) -> StepDefaults:
        if preset == "toy":
            return TOY_RECIPE
        return ADE_RECIPE if task.dataset == "ade" else VOC_RECIPE

    @classmethod
    def defaults(cls, task: Task, step: int, preset: str) -> StepDefaults:
        return cls.recipe(task, preset)

    @classmethod
    def from_context(cls, ctx: StepContext) -> "DKD":
        if ctx.old_model.spec.decision != SIGMOID:
            raise IncompatibleError(f"--method {cls.name} continues a DKD model: train step 0 with "
                                    "`incseg train-base --loss dkd` (this --prev predicts by argmax)")
        for m in ctx.model.modules():  # frozen: no gradient, in no optimiser group
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                for p in m.parameters():
                    p.requires_grad_(False)
        o = ctx.options
        weights = {"mbce": WEIGHTS["mbce"], "kd": o.lambda_kd, "dkd_pos": o.lambda_dkd_pos,
                   "dkd_neg": o.lambda_dkd_neg, "ac": o.lambda_ac}
        return cls(ctx.old_model, o.pos_weight, weights)

    def frozen_modules(self) -> dict[str, nn.Module]:
        return {"old_model": self.old_model}

    def train_mode(self, model: nn.Module) -> None:
        model.train()
        eval_frozen([unwrap(model)])  # freeze_all_bn: every BatchNorm and dropout, every epoch

    def param_groups(self, model: nn.Module, lr: float) -> list[dict[str, Any]]:
        return dkd_step_param_groups(unwrap(model), lr)

    def losses(self, model: nn.Module, batch: dict[str, torch.Tensor], info: StepInfo) -> dict[str, torch.Tensor]:
        image = batch["image"]
        new = model(image, decomposed=True)
        with torch.no_grad():
            old = self.old_model(image, decomposed=True)
        # the losses widen to float32 themselves; autocast stays off so that they run so under --amp
        with torch.autocast(image.device.type, enabled=False):
            return step_losses(new["logits"], old["logits"], new["pos_small"], old["pos_small"], new["neg_small"],
                               old["neg_small"], batch["label"], self.pos_weight, self.weights)

    def header(self) -> dict[str, Any]:
        return {"pos_weight": self.pos_weight, **{f"lambda_{k}": v for k, v in self.weights.items()}}


class DKDM(DKD):
    """DKD with its image memory on by default (``--replay-images``: 100 on VOC, 300 on ADE)."""

    name = "dkd-m"
    summary = "DKD-M: DKD with image replay"

    @classmethod
    def defaults(cls, task: Task, step: int, preset: str) -> StepDefaults:
        return dataclasses.replace(cls.recipe(task, preset),
                                   replay_images=MEMORY_SIZE.get(task.dataset, DEFAULT_MEMORY_SIZE))
