"""DKD's losses (Baek et al., "Decomposed Knowledge Distillation for Class-Incremental
Semantic Segmentation", NeurIPS 2022), as ``cvlab-yonsei/DKD``'s ``models/loss.py``
(``WBCELoss``, ``KDLoss``, ``ACLoss``) and ``trainer/trainer_voc.py`` (``_train_epoch`` of
``Trainer_base`` and ``Trainer_incremental``) compute them.

Channel layout of a DKD model: channel 0 is the **auxiliary classifier** (it reads the
features detached and is trained to say "no" everywhere), channel k >= 1 is class k in step
order; there is no background channel. ``n_old`` counts the old **foreground** classes, so
the old model has ``1 + n_old`` channels.

Every term is a per-class mean over all pixels of the batch, and the classes are then
**summed** (``class_sum``): the official weights (1, 5, 5, 5, 1) were tuned for that
reduction. Terms are computed in at least float32 (fp16 logits under autocast are upcast, as
``binary_cross_entropy_with_logits`` is under CUDA autocast; float64 stays float64, which
the official code would round through its float32 targets, about 1e-7 relative).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# hyperparameter.{mbce, kd, dkd_pos, dkd_neg, ac} of configs/config_{voc,ade}.json
WEIGHTS = {"mbce": 1.0, "kd": 5.0, "dkd_pos": 5.0, "dkd_neg": 5.0, "ac": 1.0}


def _wide(x: torch.Tensor) -> torch.Tensor:
    return x.to(torch.promote_types(x.dtype, torch.float32))


def _per_class_mean(loss: torch.Tensor) -> torch.Tensor:
    """[B, K, H, W] -> [K]: the mean over every pixel of the batch, per channel."""
    return loss.mean(dim=(0, 2, 3))


def new_class_targets(target: torch.Tensor, first: int, count: int) -> torch.Tensor:
    """[B, count, H, W] float: channel j is 1 where ``target == first + j``. Background,
    every other id and **255** (void) are 0 on every channel: DKD's BCE counts void pixels as
    negatives (``WBCELoss`` builds its target from ``label.unique()`` without ignoring 255)."""
    channels = torch.arange(first, first + count, device=target.device).view(1, count, 1, 1)
    return (target.unsqueeze(1) == channels).float()


def mbce(logits: torch.Tensor, target: torch.Tensor, n_old: int, pos_weight: float) -> torch.Tensor:
    """L_mbce per new class, ``[n_new]``: ``WBCELoss(pos_weight, n_old_classes=1 + n_old)``
    with reduction 'none', then the mean over batch and pixels of each class.

    ``logits`` [B, C, H, W] (upsampled, every channel); the new classes are channels
    ``1 + n_old ..`` (at step 0, ``n_old = 0``: every class). ``target`` [B, H, W] holds
    channel ids (the step's classes), 0 and 255. Per pixel
    ``-(w·T·log σ(Z) + (1 - T)·log(1 - σ(Z)))`` with ``w = pos_weight``."""
    if not 0 <= n_old < logits.shape[1] - 1:
        raise ValueError(f"n_old must be in 0..{logits.shape[1] - 2} for {logits.shape[1]} channels, got {n_old}")
    new = _wide(logits[:, 1 + n_old:])
    targets = new_class_targets(target, 1 + n_old, new.shape[1]).to(new.dtype)
    weight = torch.full((new.shape[1], 1, 1), float(pos_weight), dtype=new.dtype, device=new.device)
    loss = F.binary_cross_entropy_with_logits(new, targets, pos_weight=weight, reduction="none")
    return _per_class_mean(loss)


def soft_bce(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Per channel mean of ``BCE(student, σ(teacher))``, ``[K]``; the teacher is a constant.
    Per pixel ``sp(x) - σ(x')·x``: identical inputs give the binary entropy of σ(x'), not 0
    (with zero gradient)."""
    student = _wide(student)
    target = torch.sigmoid(_wide(teacher.detach())).to(student.dtype)
    return _per_class_mean(F.binary_cross_entropy_with_logits(student, target, reduction="none"))


def kd(logits: torch.Tensor, old_logits: torch.Tensor, n_old: int) -> torch.Tensor:
    """L_kd per old class, ``[n_old]`` (``KDLoss``): channels ``1 .. n_old`` of the new
    model's upsampled logits against the old model's; the auxiliary channel 0 and the new
    channels take no part."""
    return soft_bce(logits[:, 1:1 + n_old], old_logits[:, 1:1 + n_old])


def decomposed_kd(part: torch.Tensor, old_part: torch.Tensor, n_old: int) -> torch.Tensor:
    """L_pos (or L_neg) per old class, ``[n_old]``: the positive (or negative) part of the
    new model's old-class logits against the old model's, at feature resolution.

    ``part`` [B, C - 1, h, w] and ``old_part`` [B, n_old, h, w] are the models'
    ``pos_small`` (or ``neg_small``): ``W⁺·f`` (or ``W⁻·f``) without bias, channel j = class
    j + 1 (``forward_class_prediction_positive/_negative``)."""
    return soft_bce(part[:, :n_old], old_part[:, :n_old])


def ac(logits: torch.Tensor) -> torch.Tensor:
    """L_ac (``ACLoss``): the mean of ``sp(Z₀)`` over every pixel, whatever its label: the
    auxiliary classifier learns that no pixel is its class. ``logits`` [B, C, H, W], channel
    0 computed from detached features (``IncrementalDeepLab`` with ``spec.decision ==
    "sigmoid"``), so this term reaches only the auxiliary row's weight and bias."""
    aux = _wide(logits[:, :1])
    return F.binary_cross_entropy_with_logits(aux, torch.zeros_like(aux))


def step0_losses(logits: torch.Tensor, target: torch.Tensor, pos_weight: float) -> dict[str, torch.Tensor]:
    """Step 0 (``Trainer_base``): ``{"mbce": Σ_c L_mbce[c] over every class, "ac": L_ac}``."""
    return {"mbce": mbce(logits, target, 0, pos_weight).sum(), "ac": ac(logits)}


def step_losses(logits: torch.Tensor, old_logits: torch.Tensor, pos: torch.Tensor, old_pos: torch.Tensor,
                neg: torch.Tensor, old_neg: torch.Tensor, target: torch.Tensor, pos_weight: float,
                weights: dict[str, float] = WEIGHTS) -> dict[str, torch.Tensor]:
    """Step t >= 1 (``Trainer_incremental``), each term weighted and summed over its classes:
    ``1·Σ mbce + 5·Σ kd + 5·Σ pos + 5·Σ neg + 1·ac`` with the default ``weights``. A zero
    weight drops its term (0·NaN is NaN)."""
    n_old = old_logits.shape[1] - 1
    terms = {
        "mbce": lambda: mbce(logits, target, n_old, pos_weight).sum(),
        "kd": lambda: kd(logits, old_logits, n_old).sum(),
        "dkd_pos": lambda: decomposed_kd(pos, old_pos, n_old).sum(),
        "dkd_neg": lambda: decomposed_kd(neg, old_neg, n_old).sum(),
        "ac": lambda: ac(logits),
    }
    return {name: weights[name] * term() for name, term in terms.items() if weights[name]}

