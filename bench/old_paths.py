"""The code paths before issue 13 ("Fast on a GPU box"), kept only so that the benchmarks
can time them side by side with the package's current ones in the same process (and the
tests can check that the new paths give the same values). Nothing in ``incseg_cli`` imports
this file.

- the data path: workers normalised images to float32 and widened labels to int64, and a
  step without masks got a full int64 "ignore" label;
- MiB's calibrated CE and distillation: log Z computed in each, ``torch.cat`` copies;
- WILSON's step-0 one-hot BCE: an int64 one-hot tensor, permuted and cast;
- fit-rotations' memory scan: a Python loop over classes and chunks, the memory normalised
  at every call.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from incseg_cli.datasets.base import IGNORE_INDEX
from incseg_cli.data.transforms import normalize
from incseg_cli.losses.alife import _full
from incseg_cli.losses.mib import _check_old, _reduce
from incseg_cli.methods.alife import RotationFitting


# -- data path ------------------------------------------------------------------------------------
class FloatItems(torch.utils.data.Dataset):
    """A ``SegmentationDataset`` whose items are what the workers handed over before: float32
    normalised images, int64 labels (a full 255 one without masks)."""

    def __init__(self, dataset: torch.utils.data.Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: Any) -> dict[str, Any]:
        item = self.dataset[key]
        image = normalize(item["image"]).to(torch.float32)
        label = item.get("label")
        label = torch.full(tuple(image.shape[-2:]), IGNORE_INDEX, dtype=torch.int64) if label is None else label.long()
        return {"image": image, "label": label, "index": item["index"]}


# -- MiB ------------------------------------------------------------------------------------------
def calibrated_cross_entropy(logits: torch.Tensor, target: torch.Tensor, num_old: int,
                             ignore_index: int = IGNORE_INDEX, reduction: str = "mean") -> torch.Tensor:
    _check_old(logits, num_old)
    log_z = torch.logsumexp(logits, dim=1, keepdim=True)
    log_bg = torch.logsumexp(logits[:, :num_old], dim=1, keepdim=True) - log_z
    log_p = torch.cat([log_bg, logits[:, num_old:] - log_z], dim=1)  # [B, 1 + |new|, H, W]
    valid = target != ignore_index
    index = torch.where(target < num_old, torch.zeros_like(target), target - num_old + 1)
    index = torch.where(valid, index, torch.zeros_like(index))
    loss = -log_p.gather(1, index.unsqueeze(1)).squeeze(1)
    return _reduce(torch.where(valid, loss, torch.zeros_like(loss)), reduction)


def calibrated_distillation(logits: torch.Tensor, old_logits: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    num_old = old_logits.shape[1]
    _check_old(logits, num_old)
    q = torch.softmax(old_logits.detach(), dim=1)
    log_z = torch.logsumexp(logits, dim=1)
    bg_and_new = torch.cat([logits[:, :1], logits[:, num_old:]], dim=1)
    log_p_bg = torch.logsumexp(bg_and_new, dim=1) - log_z
    log_p_old = logits[:, 1:num_old] - log_z.unsqueeze(1)
    loss = -(q[:, 0] * log_p_bg + (q[:, 1:] * log_p_old).sum(dim=1)) / num_old
    return _reduce(loss, reduction)


class OldMiB:
    """The MiB method's losses as computed before (the two functions above, int64 labels)."""

    def __init__(self, method: Any) -> None:
        self.method = method

    def __getattr__(self, name: str) -> Any:
        return getattr(self.method, name)

    def losses(self, model: torch.nn.Module, batch: dict[str, torch.Tensor], info: Any) -> dict[str, torch.Tensor]:
        image, m = batch["image"], self.method
        logits = model(image)["logits"]
        label = batch["label"].long()
        losses = {"cce": calibrated_cross_entropy(logits, label, m.num_old)}
        with torch.no_grad():
            old_logits = m.old_model(image)["logits"]
        losses["ckd"] = m.lambda_kd * calibrated_distillation(logits, old_logits)
        return losses


# -- WILSON's step-0 BCE -------------------------------------------------------------------------
def bce_one_hot(logits: torch.Tensor, target: torch.Tensor, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    target = torch.where(target == ignore_index, torch.zeros_like(target), target)
    one_hot = F.one_hot(target, logits.shape[1]).permute(0, 3, 1, 2).to(logits.dtype)
    loss = F.binary_cross_entropy_with_logits(logits, one_hot, reduction="none")
    return loss.sum(1).mean()


# -- fit-rotations' memory scan ------------------------------------------------------------------
def correlation_scores(features: torch.Tensor, memory: torch.Tensor, counts: list[int],
                       chunk: int = 1024) -> torch.Tensor:
    f = F.normalize(_full(features), dim=1, eps=1e-8)
    out = torch.zeros(len(counts), f.shape[0], dtype=f.dtype, device=f.device)
    start = 0
    for c, n in enumerate(counts):
        for lo in range(start, start + n, chunk):
            m = F.normalize(_full(memory[lo : min(lo + chunk, start + n)]), dim=1, eps=1e-8)
            out[c] += torch.relu(m @ f.T).sum(dim=0)
        start += n
    return out


class OldRotationFitting(RotationFitting):
    """fit-rotations with the memory scan as it was: the raw memory, re-normalised and
    scanned class by class at every iteration."""

    def __init__(self, fe_prev: Any, fe_curr: Any, memory: torch.Tensor, counts: list[int], *args: Any) -> None:
        super().__init__(fe_prev, fe_curr, memory, counts, *args)
        self.memory = memory
        self.counts = list(counts)

    def to(self, device: torch.device) -> "OldRotationFitting":
        super().to(device)
        self.memory = self.memory.to(device)
        return self

    def scores(self, f_prev: torch.Tensor) -> torch.Tensor:
        return correlation_scores(f_prev, self.memory, self.counts, max(1, (1 << 22) // f_prev.shape[0]))
