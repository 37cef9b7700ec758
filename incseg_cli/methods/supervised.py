"""Step 0 (and joint training): full pixel supervision with CE or WILSON's one-hot BCE."""

from __future__ import annotations

import torch
from torch import nn

from incseg_cli.errors import UsageError
from incseg_cli.losses.supervised import bce_one_hot, cross_entropy
from incseg_cli.methods.base import Method, StepInfo

LOSSES = {"ce": cross_entropy, "bce": bce_one_hot}


class Supervised(Method):
    name = "base"

    @classmethod
    def val_set_for(cls, loss: str | None = None) -> str:
        # --loss bce is WILSON's step 0, and WILSON's code scores every val image
        return "all" if loss == "bce" else cls.val_set

    def __init__(self, loss: str = "ce") -> None:
        if loss not in LOSSES:
            raise UsageError(f"unknown loss {loss!r}; use ce or bce")
        self.loss = loss
        # --loss bce is WILSON's step 0, trained by its code in fp16 with a GradScaler;
        # ALIFE's and MiB's step 0 (ce) train in fp32.
        self.precision = "fp16" if loss == "bce" else "off"

    def losses(self, model: nn.Module, batch: dict[str, torch.Tensor], info: StepInfo) -> dict[str, torch.Tensor]:
        logits = model(batch["image"])["logits"]
        return {self.loss: LOSSES[self.loss](logits, batch["label"])}

    def header(self) -> dict:
        return {"loss": self.loss}
