"""ALIFE (Oh et al., NeurIPS 2022; official code cvlab-yonsei/ALIFE): Step 1
(``train-step --method alife``), the rotation fitting of Step 2-2 (``fit-rotations``) and the
classifier fine-tuning with replay of Step 3 (``finetune-classifier``). Each is a method of the
shared training loop; only the losses, the trainable parameters and the train/eval modes differ.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple, Optional

import torch
from torch import nn

from incseg_cli.config import option
from incseg_cli.console import log
from incseg_cli.losses.alife import (
    MemoryScan,
    ali_loss,
    attention_prototypes,
    centre,
    fid_loss,
    focal_loss,
    memory_ce,
    pseudo_labels,
    reg_loss,
    step1_losses,
)
from incseg_cli.methods.base import Method, StepInfo
from incseg_cli.methods.step import StepContext, StepDefaults, StepMethod
from incseg_cli.models.deeplab import IncrementalDeepLab
from incseg_cli.models.util import eval_frozen, unwrap
from incseg_cli.tasks import Task
from incseg_cli.limits import NON_NEGATIVE


class Setting(NamedTuple):
    """One incremental step's values in ALIFE's official Step-1 and Step-3 configs and ``--lamb``."""

    s1_epochs: int
    s1_ali: float
    s1_kd: float
    s3_ali: float
    s3_mem: float
    rot_lambda: float


# ALIFE's configs/<ds>/<task>/{t_step1,Mt_step3}.yml and the --lamb of scripts/{voc,ade}/alife-m.sh,
# per step 1, 2, ... (VOC "15-5s" is our 15-1).
PAPER_SETTINGS: dict[tuple[str, str], list[Setting]] = {
    ("voc", "15-5"): [Setting(10, 2, 1, 1, 10, 0.95)],
    ("voc", "19-1"): [Setting(5, 1, 1, 1, 1, 0.95)],
    ("voc", "15-1"): [Setting(10, 3, 1, 3, 1, 0.99), Setting(5, 5, 10, 5, 20, 0.99), Setting(5, 2, 1, 2, 1, 0.99),
                      Setting(5, 3, 10, 3, 2, 0.99), Setting(5, 2, 1, 1, 1, 0.99)],
    ("ade", "100-50"): [Setting(60, 1, 1, 0, 0.5, 0.99)],
    ("ade", "100-10"): [Setting(60, 1, 1, 5, 2, 0.99), Setting(60, 1, 1, 5, 1, 0.99), Setting(60, 1, 1, 2, 1, 0.99),
                        Setting(60, 1, 1, 0, 0.1, 0.99), Setting(60, 1, 1, 0, 0.5, 0.99)],
    ("ade", "50-50"): [Setting(60, 1, 20, 0, 0.1, 0.99), Setting(60, 1, 20, 0, 0.5, 0.99)],
}
# The toy preset (measured on toy 10-10-ov, docs/methods/alife.md): epochs come from the preset.
TOY_SETTING = Setting(6, 0.5, 1, 0, 1, 0.99)
# ALIFE's model (models/deeplabv3.py) upsamples its logits with align_corners=True, from the
# base stage on. Here the upsampling belongs to the model: chosen at step 0 (train-base
# --align-corners, as the alife-voc-* targets do) and inherited by every later step and
# stage through the checkpoint's model spec. Switching it in the middle of a chain moves
# every logit the model learned to place: on the toy data an ALIFE Step 1 that switched lost
# 4 points of old-class mIoU (64.7 -> 60.8), so Step 1 keeps its model's and says so.
ALIGN_CORNERS = True


def note_upsampling(model: IncrementalDeepLab, preset: str) -> None:
    if preset != "toy" and model.spec.align_corners != ALIGN_CORNERS:
        log("alife: this chain upsamples its logits with align_corners=False, as its step 0 was trained; "
            "ALIFE's code uses True from step 0 on (train-base --align-corners; docs/reproducing.md)")


def paper_setting(task: Task, step: int, preset: str) -> Setting:
    """The official configs' row of ``task``'s ``step``; tasks the paper did not run get the most common
    values (λ 1, λ_ROT 0.99; 10 Step-1 epochs at step 1 and 5 later, 60 on ADE)."""
    if preset == "toy":
        return TOY_SETTING
    rows = PAPER_SETTINGS.get((task.dataset, task.name))
    if rows and step - 1 < len(rows):
        return rows[step - 1]
    epochs = 60 if task.dataset == "ade" else (10 if step == 1 else 5)
    return Setting(epochs, 1, 1, 1, 1, 0.99)


def freeze_batchnorm(modules: list[nn.Module]) -> None:
    """BN affine parameters stop training (they stay nn.BatchNorm2d, so checkpoints keep
    their layout); ``eval_frozen`` keeps their running statistics fixed."""
    for root in modules:
        for m in root.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                for p in m.parameters():
                    p.requires_grad_(False)


def classifier_weights(model: IncrementalDeepLab) -> tuple[torch.Tensor, torch.Tensor]:
    """Every head of the classifier as one linear map: weight ``[K, D]``, bias ``[K]``."""
    heads = model.classifier.heads
    return (torch.cat([h.weight.detach().flatten(1) for h in heads]),
            torch.cat([h.bias.detach() for h in heads]))


def features_end_in_relu(model: IncrementalDeepLab) -> bool:
    """Whether the model's decoder features come out of a ReLU (so are never negative),
    which lets ``MemoryScan`` skip the ReLU for memory rows without a negative entry."""
    layers = list(unwrap(model).decoder.children())
    return bool(layers) and isinstance(layers[-1], nn.ReLU)


def _logits_and_old(model: nn.Module, old_model: nn.Module, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The current model's logits and the old model's class probabilities p^{t-1} (float32)."""
    logits = model(image)["logits"]
    with torch.no_grad():
        old = torch.softmax(old_model(image)["logits"].float(), dim=1)
    return logits, old


@dataclass(kw_only=True)
class ALIFEStep1Options:
    lambda_ali: Optional[float] = option(limit=NON_NEGATIVE,
        help="Weight of the adaptive logit regularizer. [per task, docs/methods/alife.md; 15-5: 2, 19-1: 1, 15-1: 3,5,2,3,2; "
             "other tasks: 1; toy: 0.5]")
    lambda_kd: Optional[float] = option(limit=NON_NEGATIVE, help="Weight of the KD term. [per task, docs/methods/alife.md; 1 or 10; toy: 1]")


@dataclass(kw_only=True)
class ALIFEFinetuneOptions:
    lambda_ali: Optional[float] = option(limit=NON_NEGATIVE,
        help="Weight of ALI against --prev. [per task, docs/methods/alife.md; 15-5: 1, 19-1: 1, 15-1: 3,5,2,3,1; other tasks: 1; "
             "toy: 0]")
    lambda_mem: Optional[float] = option(limit=NON_NEGATIVE,
        help="Weight of the memory cross-entropy. [per task, docs/methods/alife.md; 15-5: 10, 19-1: 1, 15-1: 1,20,1,2,1; "
             "other tasks: 1; toy: 1]")


class ALIFEStep1(StepMethod):
    """Step 1 (``run_step1.py``): CE on new-class pixels + λ_ALI·ALI + λ_KD·KD, MiB head init,
    backbone and ASPP BatchNorms frozen, ASPP dropout off, everything else trains."""

    name = "alife"
    summary = "ALIFE step 1: adaptive logit regularizer"
    head_init = "mib"
    Options = ALIFEStep1Options

    def __init__(self, old_model: IncrementalDeepLab, lambda_ali: float, lambda_kd: float) -> None:
        self.old_model = old_model
        self.lambda_ali = float(lambda_ali)
        self.lambda_kd = float(lambda_kd)

    @classmethod
    def defaults(cls, task: Task, step: int, preset: str) -> StepDefaults:
        s = paper_setting(task, step, preset)
        return StepDefaults(options=ALIFEStep1Options(lambda_ali=s.s1_ali, lambda_kd=s.s1_kd),
                            epochs=None if preset == "toy" else s.s1_epochs)

    @classmethod
    def from_context(cls, ctx: StepContext) -> "ALIFEStep1":
        note_upsampling(ctx.model, ctx.preset)
        freeze_batchnorm([ctx.model.backbone, ctx.model.aspp])
        return cls(ctx.old_model, ctx.options.lambda_ali, ctx.options.lambda_kd)

    def frozen_modules(self) -> dict[str, nn.Module]:
        return {"old": self.old_model}

    def train_mode(self, model: nn.Module) -> None:
        model.train()
        inner = unwrap(model)  # the loop may hand over a DDP or compiled wrapper
        eval_frozen([inner.backbone, inner.aspp])

    def losses(self, model: nn.Module, batch: dict[str, torch.Tensor], info: StepInfo) -> dict[str, torch.Tensor]:
        logits, old = _logits_and_old(model, self.old_model, batch["image"])
        # CE only on the new classes (unlabelled pixels are ALI's), normalised over all pixels.
        ce, ali, kd = step1_losses(logits, old, batch["label"])
        out = {"ce": ce}
        # A zero weight drops the term (the official code multiplies, and 0·NaN is NaN).
        if self.lambda_ali:
            out["ali"] = self.lambda_ali * ali
        if self.lambda_kd:
            out["kd"] = self.lambda_kd * kd
        return out

    def header(self) -> dict[str, Any]:
        return {"lambda_ali": self.lambda_ali, "lambda_kd": self.lambda_kd, "freeze": "step1"}


class ALIFEClassifierFinetune(StepMethod):
    """Step 3 (``run_step3.py``): only the classifier heads train, every BN and dropout in eval
    mode; focal loss on the old model's pseudo-labels, λ_ALI·ALI against the previous
    stage's final model, λ_MEM·CE over the whole rotated memory at every iteration."""

    name = "alife-m"
    continues = "alife"  # the last stage of an ALIFE-M chain: reports list it after ALIFE
    summary = "ALIFE step 3: classifier fine-tuning with the rotated feature memory"
    head_init = "none"  # no head is added: every head comes from the Step-1 run
    Options = ALIFEFinetuneOptions

    def __init__(self, old_model: IncrementalDeepLab, memory: torch.Tensor, memory_channels: torch.Tensor,
                 lambda_ali: float, lambda_mem: float) -> None:
        self.old_model = old_model
        self.memory = memory
        self.memory_channels = memory_channels
        self.lambda_ali = float(lambda_ali)
        self.lambda_mem = float(lambda_mem)

    @classmethod
    def defaults(cls, task: Task, step: int, preset: str) -> StepDefaults:
        s = paper_setting(task, step, preset)
        return StepDefaults(options=ALIFEFinetuneOptions(lambda_ali=s.s3_ali, lambda_mem=s.s3_mem), epochs=1, lr=1e-3)

    @classmethod
    def from_context(cls, ctx: StepContext) -> "ALIFEClassifierFinetune":
        """``ctx.extra["memory"]``: the rotated bank's vectors [N, D] and their labels [N],
        read by the stage."""
        for p in ctx.model.parameters():
            p.requires_grad_(False)
        for p in ctx.model.classifier.parameters():
            p.requires_grad_(True)
        features, labels = ctx.extra["memory"]
        channels = torch.tensor([ctx.task.model_index(int(c)) for c in labels.tolist()], dtype=torch.int64)
        return cls(ctx.old_model, features, channels, ctx.options.lambda_ali, ctx.options.lambda_mem)

    def frozen_modules(self) -> dict[str, nn.Module]:
        return {"old": self.old_model}

    def to(self, device: torch.device) -> "ALIFEClassifierFinetune":
        super().to(device)
        self.memory = self.memory.to(device)
        self.memory_channels = self.memory_channels.to(device)
        return self

    def param_groups(self, model: nn.Module, lr: float) -> list[dict[str, Any]]:
        return [{"name": "classifier", "params": list(model.classifier.parameters()), "lr": lr}]

    def train_mode(self, model: nn.Module) -> None:
        model.eval()

    def losses(self, model: nn.Module, batch: dict[str, torch.Tensor], info: StepInfo) -> dict[str, torch.Tensor]:
        label = batch["label"]
        logits, old = _logits_and_old(model, self.old_model, batch["image"])
        out = {"focal": focal_loss(logits, pseudo_labels(label, old))}
        if self.lambda_ali:
            out["ali"] = self.lambda_ali * ali_loss(logits, old, label)
        if self.lambda_mem:
            n, d = self.memory.shape
            mem_logits = unwrap(model).classifier(self.memory.view(n, d, 1, 1)).flatten(1)
            out["memory"] = self.lambda_mem * memory_ce(mem_logits, self.memory_channels)
        return out

    def header(self) -> dict[str, Any]:
        return {"lambda_ali": self.lambda_ali, "lambda_mem": self.lambda_mem, "freeze": "step3",
                "memory_vectors": int(self.memory.shape[0])}


class RotationFitting(Method):
    """Step 2-2 (``train_matrices.py``): the trainable "model" is a ``CayleyRotations``; both feature
    extractors are frozen. Per batch: attention of every position to each class's memory,
    prototypes under FEprev and FEcurr, centring, then λ·L_FID + (1−λ)·L_REG on the rotated
    prototypes. The losses are reported already weighted (``fid``, ``reg``)."""

    name = "alife-rotations"
    # Elements of one chunk of the [memory rows × positions] cosine matrix scanned at a time:
    # on a CPU 2 MiB in fp32, which stays in cache between the product and its ReLU-sum (16
    # MiB chunks made the scan twice as slow); on a GPU 64 MiB, reused by the allocator at
    # every iteration and large enough for few launches.
    chunk_elements = {"cpu": 1 << 19, "cuda": 1 << 24}

    def __init__(self, fe_prev: IncrementalDeepLab, fe_curr: IncrementalDeepLab, memory: torch.Tensor,
                 counts: list[int], channels: torch.Tensor, lambda_rot: float, tau: float) -> None:
        """``memory [N, D]`` holds ``counts[c]`` rows of class c in turn; ``channels[c]`` is
        the logit channel of class c. The memory is normalised and grouped here, once."""
        self.fe_prev = fe_prev
        self.fe_curr = fe_curr
        self.scan = MemoryScan(memory, counts, features_nonnegative=features_end_in_relu(fe_prev))
        self.channels = channels
        self.lambda_rot = float(lambda_rot)
        self.tau = float(tau)
        self.weight, self.bias = classifier_weights(fe_curr)

    def frozen_modules(self) -> dict[str, nn.Module]:
        return {"prev": self.fe_prev, "curr": self.fe_curr}

    def to(self, device: torch.device) -> "RotationFitting":
        super().to(device)
        self.scan.to(device)
        for name in ("channels", "weight", "bias"):
            setattr(self, name, getattr(self, name).to(device))
        return self

    @staticmethod
    def _positions(features: torch.Tensor) -> torch.Tensor:
        return features.float().permute(0, 2, 3, 1).reshape(-1, features.shape[1])

    def scores(self, f_prev: torch.Tensor) -> torch.Tensor:
        """``[C, P]`` attention scores of the positions ``f_prev [P, D]`` to each class's memory."""
        elements = self.chunk_elements.get(f_prev.device.type, self.chunk_elements["cpu"])
        return self.scan(f_prev, max(1, elements // f_prev.shape[0]))

    def losses(self, model: nn.Module, batch: dict[str, torch.Tensor], info: StepInfo) -> dict[str, torch.Tensor]:
        image = batch["image"]
        with torch.no_grad():
            # The frozen extractors run under the loop's autocast (bf16 with --amp bf16) ...
            f_prev = self._positions(self.fe_prev(image, upsample=False)["features"])
            f_curr = self._positions(self.fe_curr(image, upsample=False)["features"])
        # ... but scores sum up to |memory| cosines: float32 from here whatever the setting.
        with torch.no_grad(), torch.autocast(image.device.type, enabled=False):
            scores = self.scores(f_prev)
            r_prev, r_curr = attention_prototypes(scores, f_prev, f_curr, self.tau)
            centred_prev, _ = centre(r_prev)
            centred_curr, mu_curr = centre(r_curr)
        with torch.autocast(image.device.type, enabled=False):
            rotated = model(centred_prev)
            out = {"fid": self.lambda_rot * fid_loss(rotated, centred_curr)}
            if self.lambda_rot < 1:
                out["reg"] = (1 - self.lambda_rot) * reg_loss(rotated, mu_curr, self.weight, self.bias, self.channels)
        return out

    def header(self) -> dict[str, Any]:
        return {"lambda_rot": self.lambda_rot, "tau": self.tau}
