"""Fully supervised segmentation losses (step 0, and the CE part of later steps).

Targets may come in any integer type (the loader hands over uint8); they are widened to
int64 here, on the device, where the kernels need it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from incseg_cli.datasets.base import IGNORE_INDEX


def cross_entropy(logits: torch.Tensor, target: torch.Tensor, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Pixel cross-entropy averaged over ALL pixels, ignored ones counting as 0.

    The normaliser is B·H·W, not the number of valid pixels: that is what both papers' code
    does (``reduction='none'`` then ``.mean()``), and it weights a crop by its labelled area.
    """
    loss = F.cross_entropy(logits, target.long(), ignore_index=ignore_index, reduction="none")
    return loss.mean()


def bce_one_hot(logits: torch.Tensor, target: torch.Tensor, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """WILSON's step-0 ``--bce``: per pixel, the sum over classes of BCE-with-logits against
    the one-hot target, averaged over all pixels.

    As coded, 255 is remapped to background before the loss (MiB's training remap), so
    object borders count as background here.

    Σ_c BCE(x_c, [c = t]) = Σ_c log(1 + e^{x_c}) − x_t, so no one-hot tensor is built (an
    int64 one at VOC's batch of 24 × 21 × 512² would take 1 GB): one softplus pass over the
    logits and one gather.
    """
    target = target.long()
    target = torch.where(target == ignore_index, torch.zeros_like(target), target)
    x = logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits
    softplus = torch.logaddexp(x, torch.zeros((), dtype=x.dtype, device=x.device)).sum(1)
    picked = x.gather(1, target.unsqueeze(1)).squeeze(1)
    return (softplus - picked).mean()
