"""MiB's calibrated losses (Cermelli et al., CVPR 2020; ``uce`` and ``ukd`` in ALIFE's
``models/losses.py``): the background of step t also stands for the old classes (in the
targets) and for the new classes (in the old model's outputs).

Channel layout: ``[background, old classes ..., new classes ...]`` with ``num_old`` =
|C_prev| channels (background included) coming first, as the incremental classifier
concatenates its heads in step order.

Both losses need log Σ over every channel, over the old ones and over background + new
ones. They come from one logsumexp over the old channels and one over the new channels
(each channel read once), combined per pixel; no channel subset is copied out with
``torch.cat``, and ``mib_losses`` shares them between CE and distillation.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from incseg_cli.datasets.base import IGNORE_INDEX


def _reduce(loss: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "mean":
        return loss.mean()
    if reduction == "none":
        return loss
    raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")


def _check_old(logits: torch.Tensor, num_old: int) -> None:
    if not 1 <= num_old < logits.shape[1]:
        raise ValueError(f"num_old must be in 1..{logits.shape[1] - 1} for {logits.shape[1]} channels, got {num_old}")


def _logaddexp(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """log(e^a + e^b) of two per-pixel maps. A logsumexp over the stacked pair: as stable
    (and -inf-safe) as ``torch.logaddexp`` and several times faster on the CPU."""
    return torch.logsumexp(torch.stack([a, b]), dim=0)


class _Split(NamedTuple):
    """The logits as views of their channel groups, and the per-pixel log-partitions
    ``[B, H, W]`` over them. Working on the views, the gradient of each group is written
    once into the logits' gradient (slices of the whole would each allocate a zero-filled
    gradient the size of the logits)."""

    bg: torch.Tensor  # [B, H, W] background logit
    old_fg: torch.Tensor  # [B, num_old - 1, H, W] old classes (may be empty)
    new: torch.Tensor  # [B, |new|, H, W] new classes
    log_old: torch.Tensor  # log Σ_{k < num_old} e^{z_k} (background + old classes)
    log_new: torch.Tensor  # log Σ_{k ≥ num_old} e^{z_k}
    log_all: torch.Tensor  # log Σ_k e^{z_k}


def _split(logits: torch.Tensor, num_old: int) -> _Split:
    bg, old_fg, new = logits.split([1, num_old - 1, logits.shape[1] - num_old], dim=1)
    bg = bg.squeeze(1)
    log_new = torch.logsumexp(new, dim=1)
    log_old = _logaddexp(bg, torch.logsumexp(old_fg, dim=1))  # no old class: that logsumexp is -inf
    return _Split(bg, old_fg, new, log_old, log_new, _logaddexp(log_old, log_new))


def _cce_per_pixel(part: _Split, target: torch.Tensor, num_old: int, ignore_index: int) -> torch.Tensor:
    target = target.long()
    valid = target != ignore_index
    new = valid & (target >= num_old)
    # −log p_y = log Z − z_y for a new class y; − log Σ_{k<num_old} p_k = log Z − log Z_old otherwise
    index = torch.where(new, target - num_old, torch.zeros_like(target))
    z_y = part.new.gather(1, index.unsqueeze(1)).squeeze(1)
    loss = part.log_all - torch.where(new, z_y, part.log_old)
    return torch.where(valid, loss, torch.zeros_like(loss))


def _ckd_per_pixel(part: _Split, old_logits: torch.Tensor) -> torch.Tensor:
    num_old = old_logits.shape[1]
    q = torch.softmax(old_logits.detach(), dim=1)
    # log(p_bg + Σ_new p_j) = log(e^{z_bg} + Z_new) − log Z; log p_k = z_k − log Z
    log_p_bg = _logaddexp(part.bg, part.log_new) - part.log_all
    dot_old = (q[:, 1:] * (part.old_fg - part.log_all.unsqueeze(1))).sum(dim=1)
    return -(q[:, 0] * log_p_bg + dot_old) / num_old


def _check_pair(logits: torch.Tensor, old_logits: torch.Tensor) -> None:
    _check_old(logits, old_logits.shape[1])
    if old_logits.shape[0] != logits.shape[0] or old_logits.shape[2:] != logits.shape[2:]:
        raise ValueError(f"old logits {tuple(old_logits.shape)} do not match logits {tuple(logits.shape)}")


def calibrated_cross_entropy(logits: torch.Tensor, target: torch.Tensor, num_old: int,
                             ignore_index: int = IGNORE_INDEX, reduction: str = "mean") -> torch.Tensor:
    """MiB's unbiased CE (``uce``): a background pixel may be any old class, so its
    probability is Σ_{k<num_old} p_k; a new-class pixel y costs −log p_y.

    Targets below ``num_old`` count as background (the step's labels have only background
    and new classes, but a caller may pass raw ones). ``reduction="mean"`` averages over all
    B·H·W pixels, ignored ones counting 0, as MiB's ``reduction='none'`` + ``.mean()``;
    ``"none"`` returns the per-pixel loss [B, H, W].
    """
    _check_old(logits, num_old)
    return _reduce(_cce_per_pixel(_split(logits, num_old), target, num_old, ignore_index), reduction)


def calibrated_distillation(logits: torch.Tensor, old_logits: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """MiB's unbiased KD (``ukd``): the old model's background probability is matched by the
    new model's background plus new classes, the other old classes one to one, and the
    per-pixel sum is divided by |C_prev| (= old_logits' channels, background included):

        −(1/|C_prev|)·[ q_bg·log(p_bg + Σ_new p_j) + Σ_{k ∈ C_prev \\ bg} q_k·log p_k ]

    with p = softmax(logits), q = softmax(old_logits) (the old model's output is a target:
    no gradient flows into it). ``"mean"`` averages over all pixels, ``"none"`` gives [B, H, W].
    """
    _check_pair(logits, old_logits)
    return _reduce(_ckd_per_pixel(_split(logits, old_logits.shape[1]), old_logits), reduction)


def mib_losses(logits: torch.Tensor, old_logits: torch.Tensor, target: torch.Tensor,
               ignore_index: int = IGNORE_INDEX) -> tuple[torch.Tensor, torch.Tensor]:
    """(``calibrated_cross_entropy``, ``calibrated_distillation``), both means over all
    pixels, with the log-partitions computed once for the two (``num_old`` = the old
    logits' channels)."""
    _check_pair(logits, old_logits)
    num_old = old_logits.shape[1]
    part = _split(logits, num_old)
    return _cce_per_pixel(part, target, num_old, ignore_index).mean(), _ckd_per_pixel(part, old_logits).mean()
