"""How a model turns logits into a class per pixel: the decision rule its spec records.

``argmax`` (softmax models: MiB, PLOP, ALIFE, WILSON): the channel of the largest logit.
``sigmoid`` (DKD, ``cvlab-yonsei/DKD`` ``trainer/trainer_voc.py``, ``_valid_epoch`` and
``_test``): every class has its own sigmoid score, channel 0 is an auxiliary classifier that
is never read, and a pixel is background where no class scores above 0.5.
"""

from __future__ import annotations

import torch

ARGMAX = "argmax"
SIGMOID = "sigmoid"
DECISIONS = (ARGMAX, SIGMOID)


def confident_channel(logits: torch.Tensor, rule: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(score, channel) per pixel of the most likely class under ``rule``: the largest
    sigmoid score over channels 1.. (channel 0, DKD's auxiliary classifier, never read) for
    ``sigmoid``, the softmax probability of the argmax channel for ``argmax``. Ties go to the
    lowest channel. In float32 or wider (fp16/bf16 logits are upcast first)."""
    if logits.dtype in (torch.float16, torch.bfloat16):  # no cast otherwise: an exported program would
        logits = logits.float()                            # record the tracing device beside it
    if rule == SIGMOID:
        best, channel = torch.sigmoid(logits[:, 1:]).max(dim=1)  # the first maximal index on ties
        return best, channel + 1
    if rule == ARGMAX:
        return torch.softmax(logits, 1).max(dim=1)
    raise ValueError(f"unknown decision rule {rule!r}; known: {', '.join(DECISIONS)}")


def sigmoid_decision(logits: torch.Tensor) -> torch.Tensor:
    """DKD's rule: ``s = σ(logits[:, 1:])``, the channel of the largest ``s`` (ties: the
    lowest channel), and 0 (background) wherever no ``s`` is strictly above 0.5. Channel 0
    is never read. float32's σ is exactly 1.0 from a logit of about 16.6, so among saturated
    channels the lowest wins, not the largest logit, as in the official code."""
    best, channel = confident_channel(logits, SIGMOID)
    return torch.where(best > 0.5, channel, torch.zeros_like(channel))


def decide(logits: torch.Tensor, rule: str) -> torch.Tensor:
    """Channel per pixel ``[N, H, W]`` of ``logits`` ``[N, C, H, W]`` under ``rule``."""
    if rule == SIGMOID:
        return sigmoid_decision(logits)
    if rule == ARGMAX:
        return logits.argmax(1)
    raise ValueError(f"unknown decision rule {rule!r}; known: {', '.join(DECISIONS)}")
