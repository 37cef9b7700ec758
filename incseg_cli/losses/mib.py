"""MiB's calibrated losses (alife.md §3.8): the background of step t also stands for the old
classes (in the targets) and for the new classes (in the old model's outputs).

Channel layout: ``[background, old classes ..., new classes ...]`` with ``num_old`` =
|C_prev| channels (background included) coming first, as the incremental classifier
concatenates its heads in step order.
"""

from __future__ import annotations

import torch

from incseg_cli.classnames import IGNORE_INDEX


def _reduce(loss: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "mean":
        return loss.mean()
    if reduction == "none":
        return loss
    raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")


def _check_old(logits: torch.Tensor, num_old: int) -> None:
    if not 1 <= num_old < logits.shape[1]:
        raise ValueError(f"num_old must be in 1..{logits.shape[1] - 1} for {logits.shape[1]} channels, got {num_old}")


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
    log_z = torch.logsumexp(logits, dim=1, keepdim=True)
    log_bg = torch.logsumexp(logits[:, :num_old], dim=1, keepdim=True) - log_z
    log_p = torch.cat([log_bg, logits[:, num_old:] - log_z], dim=1)  # [B, 1 + |new|, H, W]
    valid = target != ignore_index
    # background (and any old label) -> channel 0 of log_p, new class c -> c - num_old + 1
    index = torch.where(target < num_old, torch.zeros_like(target), target - num_old + 1)
    index = torch.where(valid, index, torch.zeros_like(index))
    loss = -log_p.gather(1, index.unsqueeze(1)).squeeze(1)
    return _reduce(torch.where(valid, loss, torch.zeros_like(loss)), reduction)


def calibrated_distillation(logits: torch.Tensor, old_logits: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """MiB's unbiased KD (``ukd``): the old model's background probability is matched by the
    new model's background plus new classes, the other old classes one to one, and the
    per-pixel sum is divided by |C_prev| (= old_logits' channels, background included):

        −(1/|C_prev|)·[ q_bg·log(p_bg + Σ_new p_j) + Σ_{k ∈ C_prev \\ bg} q_k·log p_k ]

    with p = softmax(logits), q = softmax(old_logits) (the old model's output is a target:
    no gradient flows into it). ``"mean"`` averages over all pixels, ``"none"`` gives [B, H, W].
    """
    num_old = old_logits.shape[1]
    _check_old(logits, num_old)
    if old_logits.shape[0] != logits.shape[0] or old_logits.shape[2:] != logits.shape[2:]:
        raise ValueError(f"old logits {tuple(old_logits.shape)} do not match logits {tuple(logits.shape)}")
    q = torch.softmax(old_logits.detach(), dim=1)
    log_z = torch.logsumexp(logits, dim=1)
    bg_and_new = torch.cat([logits[:, :1], logits[:, num_old:]], dim=1)
    log_p_bg = torch.logsumexp(bg_and_new, dim=1) - log_z
    log_p_old = logits[:, 1:num_old] - log_z.unsqueeze(1)
    loss = -(q[:, 0] * log_p_bg + (q[:, 1:] * log_p_old).sum(dim=1)) / num_old
    return _reduce(loss, reduction)

