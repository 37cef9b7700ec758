"""WILSON (Cermelli et al., CVPR 2022; the official ``--weakly`` step): step t learns its
classes from image-level labels only.

Per iteration: the frozen old model and the current model at encoder resolution, the
localizer on the current encoder output (eval mode for the pseudo-labels, first, then train
mode for its own losses), L_CLS + L_LOC + L_ENC from the first iteration, and after the warm-up
(``--pseudo-epochs``) the soft pseudo-label segmentation loss L_SEG and the localizer's
self-training L_SSS on PAMR-refined seeds. Pixel labels of the step's images are never read.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn

from incseg_cli.datasets.base import IGNORE_INDEX
from incseg_cli.config import option
from incseg_cli.console import log
from incseg_cli.data.transforms import denormalize
from incseg_cli.errors import UsageError
from incseg_cli.losses import wilson as L
from incseg_cli.methods.base import StepInfo
from incseg_cli.methods.step import StepContext, StepData, StepDefaults, StepMethod, defaults_text
from incseg_cli.models.localizer import PAMR, Localizer
from incseg_cli.models.util import unwrap
from incseg_cli.tasks import Task
from incseg_cli.limits import FRACTION, NON_NEGATIVE, POSITIVE

# The head and classifiers learn 10× faster than the encoder (the official --lr_head 10 is a
# factor of --lr); with Adam on the toy data this also works far better than one rate for
# all (docs/methods/wilson.md).
HEAD_LR_FACTOR = 10.0

LABELS_NEW = "new classes (default masking)"
LABELS_RELAXED = "old and new classes (relaxed, --no_mask)"


def label_matrix(table: dict[str, list[int]], ids: list[str], task: Task, step: int,
                 allow_relaxed: bool = True) -> tuple[torch.Tensor, bool]:
    """[N, C-1] float image labels in model channel order (column k = channel k+1), and
    whether they are relaxed. Default masking keeps only the step's classes; a table given
    by the user (``allow_relaxed``) that lists old classes selects the relaxed setting, where
    they are kept. Future classes are background at this step and dropped either way."""
    new = set(task.new_classes(step)) - {0}
    old = set(task.old_classes(step)) - {0}
    relaxed = allow_relaxed and any(c in old for i in ids for c in table[i])
    keep = new | old if relaxed else new
    labels = torch.zeros(len(ids), task.num_classes(step) - 1)
    for row, image_id in enumerate(ids):
        for c in table[image_id]:
            if c in keep and c != IGNORE_INDEX:
                labels[row, task.model_index(c) - 1] = 1.0
    return labels, relaxed


def _defaults(name: str) -> str:
    return f"[{defaults_text(RECIPES, name)}]"


@dataclass(kw_only=True)
class WilsonOptions:
    alpha: Optional[float] = option(limit=FRACTION, help=lambda: "Pseudo-label smoothing α (1 = hard labels). "
                                    + _defaults("alpha"))
    pseudo_epochs: Optional[int] = option(limit=NON_NEGATIVE,
        help=lambda: "Warm-up epochs with only L_CLS + L_LOC + L_ENC (localizer and encoder train, the head "
                     "waits), at constant LR. " + _defaults("pseudo_epochs"))
    affinity: bool = option(True, help="Refine the localizer's self-training target with PAMR.")
    image_labels: Optional[Path] = option(
        help="Label table (IMAGE_ID TAB class ids) of the step's images. Listing old classes too selects the relaxed "
             "setting. [the splits' labels-train.tsv, new classes only]")
    lr_head: Optional[float] = option(limit=POSITIVE, help="LR of the ASPP/decoder and classifiers. [10 × --lr]")
    lr_localizer: Optional[float] = option(limit=POSITIVE, help=lambda: "LR of the localizer, absolute (the "
                                           "official --lr_pseudo). " + _defaults("lr_localizer"))
    lambda_enc: Optional[float] = option(limit=NON_NEGATIVE, help=lambda: "Weight of the encoder distillation "
                                         "L_ENC. " + _defaults("lambda_enc"))


# The released recipes of fcdl94/WILSON: run.sh for VOC, coco.sh for COCO-to-VOC. The
# localizer's rate is the official --lr_pseudo, an absolute 0.01 whatever --lr is.
PAPER_DEFAULTS = StepDefaults(options=WilsonOptions(alpha=0.5, pseudo_epochs=5, lambda_enc=1.0, lr_localizer=0.01),
                              epochs=40)
COCO_DEFAULTS = dataclasses.replace(PAPER_DEFAULTS, options=dataclasses.replace(PAPER_DEFAULTS.options, alpha=0.9),
                                    epochs=30)
# Toy CPU recipe (docs/methods/wilson.md): the toy step's 6 epochs with a one-epoch warm-up; the
# localizer's 0.01 is 10× the toy step's Adam 1e-3, the rate the toy numbers were measured at.
TOY_DEFAULTS = dataclasses.replace(PAPER_DEFAULTS, options=dataclasses.replace(PAPER_DEFAULTS.options,
                                                                               pseudo_epochs=1), epochs=6)
RECIPES = {"voc": PAPER_DEFAULTS, "coco": COCO_DEFAULTS, "toy": TOY_DEFAULTS}


def _head_parameters(model: nn.Module) -> list[nn.Parameter]:
    """ASPP, decoder and classifiers: what WILSON trains at ``--lr-head``."""
    return [*model.aspp.parameters(), *model.decoder.parameters(), *model.classifier.parameters()]


class Wilson(StepMethod):
    name = "wilson"
    summary = "WILSON: new classes from image-level labels only"
    val_set = "all"  # WILSON's code scores every val image
    head_init = "random"  # the released recipe: new heads keep PyTorch's default init
    reads_masks = False
    needs_image_labels = True
    Options = WilsonOptions
    # The head and classifiers get no gradient during the warm-up.
    ddp_find_unused_parameters = True
    # The official train.py runs torch.cuda.amp autocast with a GradScaler.
    precision = "fp16"

    def __init__(self, *, old_model: nn.Module, localizer: Localizer, labels: torch.Tensor, n_old: int,
                 alpha: float, pseudo_epochs: int, affinity: bool, lambda_enc: float, lr_head: float,
                 lr_localizer: float, relaxed: bool = False) -> None:
        self.old_model = old_model
        self.localizer = localizer
        self.labels = labels
        self.n_old = n_old
        self.n_new = labels.shape[1] + 1 - n_old
        self.alpha = alpha
        self.pseudo_epochs = pseudo_epochs
        self.constant_lr_epochs = pseudo_epochs  # the "warmup" LR policy: constant, then poly
        self.pamr = PAMR() if affinity else None
        self.lambda_enc = lambda_enc
        self.lr_head = lr_head
        self.lr_localizer = lr_localizer
        self.relaxed = relaxed

    # -- options ------------------------------------------------------------------------------
    @classmethod
    def defaults(cls, task: Task, step: int, preset: str) -> StepDefaults:
        if preset == "toy":
            return TOY_DEFAULTS
        return COCO_DEFAULTS if task.dataset == "coco" else PAPER_DEFAULTS

    @classmethod
    def prepare(cls, options: WilsonOptions, data: StepData) -> WilsonOptions:
        epochs = data.run.epochs
        if not 0 <= options.pseudo_epochs < epochs:
            raise UsageError(f"--pseudo-epochs {options.pseudo_epochs} (given, or the preset's warm-up) must be below "
                             f"--epochs {epochs}: pass --pseudo-epochs {max(epochs - 1, 0)} or fewer, or more --epochs")
        labels = data.image_labels
        _, relaxed = label_matrix(labels.table, data.train_ids, data.task, data.step,
                                  allow_relaxed=labels.source is not None)
        new = [c for c in data.task.new_classes(data.step) if c != 0]
        if len(new) == 1 and not relaxed:
            raise UsageError(
                f"wilson cannot learn step {data.step} of {data.task.dataset}/{data.task.key}: it adds the single "
                f"class {new[0]}, so every image has the same label and L_CLS has no negatives; give --image-labels "
                "listing old classes too (the relaxed setting)"
            )
        if options.lr_head is None:
            options = dataclasses.replace(options, lr_head=HEAD_LR_FACTOR * data.run.lr)
        return options

    @classmethod
    def from_context(cls, ctx: StepContext) -> "Wilson":
        o, labels = ctx.options, ctx.image_labels
        matrix, relaxed = label_matrix(labels.table, ctx.train_ids, ctx.task, ctx.step,
                                       allow_relaxed=labels.source is not None)
        source = labels.source or f"the label table of {ctx.splits_root / ctx.task.dataset / ctx.task.key}"
        log(f"wilson: image labels of {len(ctx.train_ids)} images from {source}: "
            f"{LABELS_RELAXED if relaxed else LABELS_NEW}")
        model = ctx.model
        localizer = Localizer(model.body_channels, model.num_classes, model.spec.head_channels)
        return cls(old_model=ctx.old_model, localizer=localizer, labels=matrix,
                   n_old=ctx.old_model.num_classes, alpha=o.alpha, pseudo_epochs=o.pseudo_epochs,
                   affinity=o.affinity, lambda_enc=o.lambda_enc, lr_head=o.lr_head,
                   lr_localizer=o.lr_localizer, relaxed=relaxed)

    # -- the loop's hooks -------------------------------------------------------------------
    def extra_modules(self) -> dict[str, nn.Module]:
        return {"localizer": self.localizer}

    def frozen_modules(self) -> dict[str, nn.Module]:
        return {"old_model": self.old_model}

    def to(self, device: torch.device) -> "Wilson":
        super().to(device)
        self.labels = self.labels.to(device)
        return self

    def param_groups(self, model: nn.Module, lr: float) -> list[dict[str, Any]]:
        return [
            {"name": "body", "params": list(model.backbone.parameters()), "lr": lr},
            {"name": "head", "params": _head_parameters(model), "lr": self.lr_head},
            {"name": "localizer", "params": list(self.localizer.parameters()), "lr": self.lr_localizer},
        ]

    def idle_parameters(self, model: nn.Module, info: StepInfo) -> list[nn.Parameter]:
        """The head and classifiers during the warm-up: their output enters no loss."""
        return [] if info.epoch >= self.pseudo_epochs else _head_parameters(model)

    def header(self) -> dict[str, Any]:
        return {
            "alpha": self.alpha, "pseudo_epochs": self.pseudo_epochs, "affinity": self.pamr is not None,
            "lambda_enc": self.lambda_enc, "image_labels": LABELS_RELAXED if self.relaxed else LABELS_NEW,
            "localizer": unwrap(self.localizer).describe(),
        }

    def losses(self, model: nn.Module, batch: dict[str, torch.Tensor], info: StepInfo) -> dict[str, torch.Tensor]:
        x = batch["image"]
        y = self.labels[batch["index"]]
        with torch.no_grad():
            old = self.old_model(x, upsample=False)
        out = model(x, upsample=False)
        warm_up = info.epoch < self.pseudo_epochs
        # The eval-mode pass comes before the training pass, as in the official train.py:
        # its BatchNorm running statistics are those before this batch moves them.
        pseudo = None if warm_up else self.pseudo_labels(x, out["body"], old["logits"], y)
        z = self.localizer(out["body"])
        losses = {
            "cls": L.cls_loss(z, y, self.n_new, self.relaxed),
            "loc": L.loc_loss(z, old["logits"]),
            "enc": self.lambda_enc * L.enc_loss(out["body"], old["body"]),
        }
        if pseudo is None:
            zero = torch.zeros((), device=x.device)
            return {**losses, "seg": zero, "sss": zero}
        target, gate, seeds = pseudo
        losses["seg"] = L.seg_loss(out["logits"], target, gate)
        losses["sss"] = L.sss_loss(z, seeds, y)
        return losses

    @torch.no_grad()
    def pseudo_labels(self, x: torch.Tensor, body: torch.Tensor, old_logits: torch.Tensor,
                      y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(q̂ for L_SEG, its image gate, the L_SSS seeds) from the eval-mode localizer.

        PAMR refines only the seeds' source; q̂ comes from the unrefined softmax (as coded)."""
        self.localizer.eval()  # BN running statistics, as the official int_masks pass
        z_eval = self.localizer(body).float()
        self.localizer.train()
        soft = torch.softmax(z_eval, dim=1)
        refined = soft if self.pamr is None else self.pamr(denormalize(x), soft)
        seeds = L.seed_masks(L.mask_classes(refined, y))
        q = L.smoothed_labels(L.mask_classes(soft, y), self.alpha)
        return L.seg_target(q, old_logits.float()), L.seg_image_gate(q, y, self.n_old), seeds
