"""Fully supervised segmentation losses (step 0, and the CE part of later steps)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from incseg_cli.classnames import IGNORE_INDEX


def cross_entropy(logits: torch.Tensor, target: torch.Tensor, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Pixel cross-entropy averaged over ALL pixels, ignored ones counting as 0.

    The normaliser is B·H·W, not the number of valid pixels: that is what both papers' code
    does (``reduction='none'`` then ``.mean()``), and it weights a crop by its labelled area.
    """
    loss = F.cross_entropy(logits, target, ignore_index=ignore_index, reduction="none")
    return loss.mean()


def bce_one_hot(logits: torch.Tensor, target: torch.Tensor, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """WILSON's step-0 ``--bce``: per pixel, the sum over classes of BCE-with-logits against
    the one-hot target, averaged over all pixels.

    As coded, 255 is remapped to background before the loss (MiB's training remap), so
    object borders count as background here.
    """
    target = torch.where(target == ignore_index, torch.zeros_like(target), target)
    one_hot = F.one_hot(target, logits.shape[1]).permute(0, 3, 1, 2).to(logits.dtype)
    loss = F.binary_cross_entropy_with_logits(logits, one_hot, reduction="none")
    return loss.sum(1).mean()
