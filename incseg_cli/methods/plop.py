"""PLOP (Douillard et al., CVPR 2021): old-class pseudo-labels from the frozen step t-1 model,
kept where its normalised entropy is below a per-class threshold, an adaptive factor ν on the
CE, and Local POD distillation over every backbone stage, the decoder and the logits
(official code: arthurdouillard/CVPR2021_PLOP; losses in ``incseg_cli/losses/plop.py``).

The thresholds come from one pass of the old model over the step's training data before the
first epoch (``before_train``); they are saved in ``last.pt`` so that a resumed run reuses
them instead of drawing new random crops (docs/methods/baselines.md, PLOP).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable, Optional

import torch
from torch import nn

from incseg_cli.config import option
from incseg_cli.limits import NON_NEGATIVE, Limit
from incseg_cli.console import log
from incseg_cli.losses.plop import MEDIANS, NUM_BINS, THRESHOLD_FLOOR, EntropyThresholds, plop_losses
from incseg_cli.methods.base import StepInfo
from incseg_cli.methods.step import StepContext, StepDefaults, StepMethod
from incseg_cli.tasks import Task

# PLOP's recipes (--method PLOP in scripts/voc/plop_*.sh; scripts/ade/plop_ade_*.sh): λ on the POD of
# the feature maps / of the logits. VOC's factors also serve COCO and toy, which have no official recipe.
POD_FACTORS = {"ade": (0.001, 1e-5)}
VOC_POD_FACTORS = (0.01, 0.0005)


def pod_map_list(out: dict[str, Any]) -> list[torch.Tensor]:
    """The official map order of Local POD: every backbone stage (pre-ReLU), the decoder, the small logits."""
    return [*out["stages"], out["features"], out["logits_small"]]


def _json_float(x: float) -> float | str:
    """τ may hold NaN or +inf (PLOP's ``find_median``): spelled as strings so manifest.json stays plain JSON."""
    return x if math.isfinite(x) else str(x)


@dataclass(kw_only=True)
class PLOPOptions:
    pod_factor: Optional[float] = option(
        limit=NON_NEGATIVE, help="Local POD weight of the backbone stages and decoder, scaled by √(C_cur/C_new). [voc/coco/toy: 0.01, ade: 0.001]")
    pod_logits_factor: Optional[float] = option(
        limit=NON_NEGATIVE, help="Local POD weight of the logits, scaled by √(C_cur/C_new). [voc/coco/toy: 0.0005, ade: 1e-5]")
    pseudo_floor: float = option(THRESHOLD_FLOOR, limit=Limit(0, 1, why="entropies are normalised"), help="Lowest per-class entropy threshold of the old-class "
                                                       "pseudo-labels (the official --threshold).")
    pseudo_median: str = option("official", choices=MEDIANS,
                                help="Median of the threshold pre-pass: official (the code's bin walk) or corrected "
                                     "(docs/methods/baselines.md#plop).")


class PLOP(StepMethod):
    name = "plop"
    summary = "PLOP: pseudo-labels and Local POD"
    head_init = "mib"  # PLOP's ``--init_balanced`` is MiB's
    Options = PLOPOptions

    def __init__(self, old_model: nn.Module, num_current: int, pod_factor: float, pod_logits_factor: float,
                 pseudo_floor: float = THRESHOLD_FLOOR, pseudo_median: str = "official") -> None:
        self.old_model = old_model
        self.num_current = num_current
        self.pod_factor = float(pod_factor)
        self.pod_logits_factor = float(pod_logits_factor)
        self.pseudo_floor = float(pseudo_floor)
        self.pseudo_median = pseudo_median
        self.thresholds: torch.Tensor | None = None  # τ [C_cur] float32, on the device once set
        self.thresholds_all_reduced = False

    @classmethod
    def defaults(cls, task: Task, step: int, preset: str) -> StepDefaults:
        maps, logits = POD_FACTORS.get(preset, VOC_POD_FACTORS)
        # PLOP's VOC 10-1 script trains its steps t >= 1 for 10 epochs; every other recipe keeps the
        # step preset's (VOC 30, ADE 60; toy its own).
        return StepDefaults(options=PLOPOptions(pod_factor=maps, pod_logits_factor=logits),
                            epochs=10 if preset == "voc" and task.key.startswith("10-1") else None)

    @classmethod
    def from_context(cls, ctx: StepContext) -> "PLOP":
        o = ctx.options
        return cls(ctx.old_model, sum(ctx.model.classifier.head_sizes),  # C_cur, new head included
                   o.pod_factor, o.pod_logits_factor, o.pseudo_floor, o.pseudo_median)

    def frozen_modules(self) -> dict[str, nn.Module]:
        return {"old_model": self.old_model}

    # -- the pre-pass (PLOP's ``Trainer.before`` → ``find_median``) ------------------------------
    @torch.no_grad()
    def before_train(self, batches: Iterable[dict[str, torch.Tensor]], device: torch.device) -> None:
        acc = EntropyThresholds(self.num_current, NUM_BINS, self.pseudo_floor, self.pseudo_median)
        self.old_model.eval()
        for batch in batches:
            acc.update(self.old_model(batch["image"])["logits"].float(), batch["label"])
        if acc.histogram is None:
            acc.histogram = torch.zeros(self.num_current, NUM_BINS, dtype=torch.long, device=device)
        # Every rank gets the same τ from the summed histogram (the official code keeps each
        # rank's own: a deviation the manifest records).
        self.thresholds_all_reduced = torch.distributed.is_available() and torch.distributed.is_initialized()
        if self.thresholds_all_reduced:
            torch.distributed.all_reduce(acc.histogram, op=torch.distributed.ReduceOp.SUM)
        self.thresholds = acc.thresholds().to(device)
        log("plop thresholds: " + " ".join(f"{t:.4f}" for t in self.thresholds.tolist()))

    def state_dict(self) -> dict[str, Any]:
        if self.thresholds is None:
            return {}
        return {"thresholds": self.thresholds.detach().cpu(), "all_reduced": self.thresholds_all_reduced}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "thresholds" not in state:
            return
        device = next(self.old_model.parameters()).device
        self.thresholds = state["thresholds"].to(device=device, dtype=torch.float32)
        self.thresholds_all_reduced = bool(state.get("all_reduced", False))

    # -- per iteration ---------------------------------------------------------------------------
    def losses(self, model: nn.Module, batch: dict[str, torch.Tensor], info: StepInfo) -> dict[str, torch.Tensor]:
        if self.thresholds is None:
            raise RuntimeError("PLOP.losses before before_train: the entropy thresholds are not set")
        image = batch["image"]
        with torch.no_grad():
            old = self.old_model(image, stages=True)
        # a keyword through the DDP wrapper, so its hooks stay in place; BN keeps batch statistics
        new = model(image, stages=True)
        # The loss functions upcast to float32 themselves; autocast is left so that they run
        # in float32 under --amp too.
        with torch.autocast(image.device.type, enabled=False):
            return plop_losses(new["logits"], old["logits"], batch["label"], self.thresholds,
                               pod_map_list(new), pod_map_list(old), self.pod_factor, self.pod_logits_factor)

    def header(self) -> dict[str, Any]:
        return {"pod_factor": self.pod_factor, "pod_logits_factor": self.pod_logits_factor,
                "pseudo_floor": self.pseudo_floor, "pseudo_median": self.pseudo_median,
                "thresholds": None if self.thresholds is None else [_json_float(t) for t in self.thresholds.tolist()],
                "thresholds_all_reduced": self.thresholds_all_reduced}
