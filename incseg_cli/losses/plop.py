"""PLOP's step-t losses and thresholds, as the official code computes them (PLOP's ``train.py``:
``Trainer.train``, ``Trainer.find_median``, ``entropy``, ``features_distillation``, ``_local_pod``).

Every function is pure: tensors in, tensors out, no model and no data. Shapes and names:
``logits`` [B, C_cur, H, W] and ``old_logits`` [B, C_old, H, W] are the new and old models'
outputs upsampled to the crop (Z, Z′); ``label`` [B, H, W] is the step's label (0 background,
new ids, 255). Channel k is class k in step order, background first, so C_old = old_logits'
channels and the new classes are channels C_old..C_cur−1.

The official arithmetic is kept on purpose, numerical traps included: the entropy
is normalised three times, the threshold "median" adds bin indices instead of counts, and the
thresholds and U are float32 values. Do not "fix" them: the recipe's values were tuned on them.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F

from incseg_cli.datasets.base import IGNORE_INDEX

NUM_BINS = 100  # pre-pass histogram bins (``--pseudo_nb_bins`` unset)
THRESHOLD_FLOOR = 0.001  # ``--threshold``: a floor (Python ``max``), not a cap
LOG_EPS = 1e-8  # inside both logs of the official ``entropy``
NU_EPS = 1e-6  # b70fb8f: an image without background pixels gets ν = 0, not NaN
POD_SCALES = (1, 2, 4)  # ``spp_scales``
MEDIANS = ("official", "corrected")


def _at_least_float32(x: torch.Tensor) -> torch.Tensor:
    """Half-precision maps overflow once squared; float64 stays for gradchecks."""
    return x if x.dtype == torch.float64 else x.float()


# -- uncertainty (``entropy``) ------------------------------------------------------------------
def normalised_entropy(old_logits: torch.Tensor, num_current: int) -> tuple[torch.Tensor, torch.Tensor]:
    """U and ĉ per pixel, both [B, H, W]; U is float32 whatever the input dtype.

    H is the official ``entropy``: a *mean* over the C_old channels scaled by 1/ln(C_old + 1e-8),
    then U = H / ln(C_cur) with ln(C_cur) a float32 value. ĉ is the argmax of the old softmax
    (ties to the lowest class id)."""
    num_old = old_logits.shape[1]
    if not 2 <= num_old < num_current:
        raise ValueError(f"need 2 <= C_old < C_cur, got C_old={num_old}, C_cur={num_current}")
    q = torch.softmax(old_logits.detach().float(), dim=1)
    scale = -1.0 / math.log(num_old + LOG_EPS)
    h = scale * torch.mean(q * torch.log(q + LOG_EPS), dim=1)
    mu = torch.log(torch.tensor(float(num_current), dtype=torch.float32, device=q.device))
    return h / mu, q.argmax(dim=1)


# -- thresholds from the pre-pass (``Trainer.before`` → ``find_median``) ------------------------
def entropy_bins(u: torch.Tensor, num_bins: int = NUM_BINS) -> torch.Tensor:
    """bin = min(trunc(num_bins·U), num_bins − 1); a slightly negative U lands in bin 0."""
    return (u * num_bins).long().clamp(min=0, max=num_bins - 1)


def class_histogram(u: torch.Tensor, pred: torch.Tensor, label: torch.Tensor, num_current: int,
                    num_bins: int = NUM_BINS) -> torch.Tensor:
    """int64 counts h[c, j] [C_cur, num_bins] of the pixels labelled 0 (the official pre-pass
    counts y == 0, its training loop relabels y < C_old), by predicted class c and U-bin j."""
    keep = label == 0
    flat = pred[keep] * num_bins + entropy_bins(u[keep], num_bins)
    return torch.bincount(flat, minlength=num_current * num_bins).view(num_current, num_bins)


def _official_walk(num_bins: int) -> tuple[list[float], list[int], list[float], float]:
    """The constants of ``find_median``'s loop, the same for every class: for k = 0..K−1 the
    lower border λ_k = k/K, the bin it reads j_k = int(λ_k·K) (28 for k = 29: float rounding)
    and the running sum r_k before step k, which adds λ_k·K ≈ k (the bin index, not its
    count); plus r after the last step, used when the loop never stops."""
    lams, bins, before = [], [], []
    running = 0.0  # a Python double, as in the official loop
    for k in range(num_bins):
        lam = k / num_bins
        lams.append(lam)
        bins.append(int(lam * num_bins))
        before.append(running)
        running += lam * num_bins
    return lams, bins, before, running


def thresholds_from_histogram(hist: torch.Tensor, floor: float = THRESHOLD_FLOOR,
                              median: str = "official") -> torch.Tensor:
    """τ [C_cur] float32 (on the CPU) from the pre-pass histogram [C_cur, K].

    ``official`` reproduces ``find_median`` literally, in float32: stop at the first k with
    r_k ≤ T/2 ≤ r_k + h[j_k], raw = λ_k + (T/2 − r_k)/h[j_k]·(1/K), with ±inf (never stops)
    and NaN (stops at an empty bin) kept; raw = 0 for a class with no count; then
    τ = max(raw, floor) with Python's ``max`` semantics (NaN stays NaN). ``corrected`` is an
    ablation (r_k = the counts below bin k, a true histogram median), off by default."""
    if median not in MEDIANS:
        raise ValueError(f"median must be one of {MEDIANS}, got {median!r}")
    hist = hist.detach().cpu().long()
    num_classes, num_bins = hist.shape
    counts = hist.to(torch.float32)
    total = hist.sum(dim=1)
    half = total.to(torch.float32) / 2
    if median == "official":
        lams, bins, before, after = _official_walk(num_bins)
        read = torch.tensor(bins)
        r = torch.tensor(before, dtype=torch.float32).expand(num_classes, num_bins)
    else:
        lams, read, after = [k / num_bins for k in range(num_bins)], torch.arange(num_bins), 0.0
        r = (hist.cumsum(dim=1) - hist).to(torch.float32)
    stop = (half[:, None] >= r) & (half[:, None] <= r + counts[:, read])
    stopped = stop.any(dim=1)
    k = torch.where(stopped, stop.int().argmax(dim=1), torch.full_like(total, num_bins - 1))
    r_k = torch.where(stopped, r.gather(1, k[:, None]).squeeze(1), torch.tensor(after, dtype=torch.float32))
    h_k = counts.gather(1, read[k][:, None]).squeeze(1)
    lam = torch.tensor(lams, dtype=torch.float32)[k]
    raw = lam + ((half - r_k) / h_k) * torch.tensor(1 / num_bins, dtype=torch.float32)
    raw = torch.where(total > 0, raw, torch.zeros_like(raw))
    floor32 = torch.tensor(floor, dtype=torch.float32)
    return torch.where(raw < floor32, floor32, raw)


class EntropyThresholds:
    """``find_median``'s thresholds, streamed: feed every batch of the pre-pass to ``update``, then read ``thresholds``.

    ``histogram`` stays on the logits' device (int64), so a distributed caller can all-reduce
    it before ``thresholds()``."""

    def __init__(self, num_current: int, num_bins: int = NUM_BINS, floor: float = THRESHOLD_FLOOR,
                 median: str = "official") -> None:
        if median not in MEDIANS:
            raise ValueError(f"median must be one of {MEDIANS}, got {median!r}")
        self.num_current = num_current
        self.num_bins = num_bins
        self.floor = floor
        self.median = median
        self.histogram: torch.Tensor | None = None

    @torch.no_grad()
    def update(self, old_logits: torch.Tensor, label: torch.Tensor) -> None:
        """Count one batch: ``old_logits`` [B, C_old, H, W] upsampled, ``label`` [B, H, W]."""
        u, pred = normalised_entropy(old_logits, self.num_current)
        counts = class_histogram(u, pred, label.to(pred.device), self.num_current, self.num_bins)
        self.histogram = counts if self.histogram is None else self.histogram + counts

    def thresholds(self) -> torch.Tensor:
        """τ [C_cur] float32 on the CPU; every class gets the floor if nothing was counted."""
        hist = self.histogram
        if hist is None:
            hist = torch.zeros(self.num_current, self.num_bins, dtype=torch.long)
        return thresholds_from_histogram(hist, self.floor, self.median)


# -- pseudo-labels and the adaptive factor (``Trainer.train``) ----------------------------------
def pseudo_labels(label: torch.Tensor, u: torch.Tensor, pred: torch.Tensor, thresholds: torch.Tensor,
                  num_old: int, ignore_index: int = IGNORE_INDEX) -> tuple[torch.Tensor, torch.Tensor]:
    """The target ỹ [B, H, W] and ν [B] (float32, no gradient).

    Background pixels (y < C_old) take ĉ where U < τ_ĉ (a NaN τ rejects, +inf accepts) and
    ``ignore_index`` otherwise; new-class and ignored pixels keep y.
    ν_b = accepted / (background + 1e-6): 0 for an image without background (PLOP's fix b70fb8f)."""
    background = label < num_old
    accepted = background & (u < thresholds.to(device=u.device, dtype=torch.float32)[pred])
    rejected = torch.full_like(label, ignore_index)
    target = torch.where(background, torch.where(accepted, pred.to(label.dtype), rejected), label)
    nu = accepted.float().sum(dim=(1, 2)) / (background.float().sum(dim=(1, 2)) + NU_EPS)
    return target, nu


# -- the cross-entropy --------------------------------------------------------------------------
def adaptive_cross_entropy(logits: torch.Tensor, target: torch.Tensor, nu: torch.Tensor,
                           ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """(1/(B·H·W))·Σ_b ν_b·Σ_p ℓ(Z_b(p), ỹ_b(p)), plain softmax CE over all channels; the
    ignored pixels count 0 but stay in the denominator; ν scales the whole image's CE."""
    # .long(): the loader hands labels over as uint8 (issue 13), cross_entropy wants int64
    loss = F.cross_entropy(_at_least_float32(logits), target.long(), ignore_index=ignore_index, reduction="none")
    return (nu.detach().to(loss.dtype)[:, None, None] * loss).mean()


# -- Local POD (``features_distillation``, ``_local_pod``) --------------------------------------
def fold_extra_logits(new_logits: torch.Tensor, num_old: int) -> torch.Tensor:
    """C_cur logit channels to C_old: channel 0 gets the sum of itself and every
    channel ≥ C_old (logits, not probabilities); channels 1..C_old−1 are unchanged."""
    extra = new_logits[:, num_old:].sum(dim=1, keepdim=True)
    return torch.cat([new_logits[:, :1] + extra, new_logits[:, 1:num_old]], dim=1)


def _check_regions(x: torch.Tensor, scales: Sequence[int]) -> None:
    """A map shorter than wide can leave a region without rows, whose mean is NaN (the
    official assert stops training there); refuse it before computing anything."""
    h, w = x.shape[-2:]
    for s in scales:
        k = w // s
        if k > 0 and (s - 1) * k >= h:
            raise ValueError(f"Local POD: a {h}x{w} map leaves empty regions at scale {s} (region side {k} from the width)")


def local_pod_embedding(x: torch.Tensor, scales: Sequence[int] = POD_SCALES) -> torch.Tensor:
    """Ψ: [B, C, h, w] → [B, D]. For each scale s, region side k = ⌊w/s⌋ (from
    the width, for both axes); for each region in row-major order its mean over columns
    (C × rows) then over rows (C × cols). D = 2·C·w·Σs = 14·C·w for a square map whose side is
    a multiple of 4. Rows and columns past s·k are ignored; a scale with k = 0 adds nothing."""
    _check_regions(x, scales)
    b, w = x.shape[0], x.shape[-1]
    parts = []
    for s in scales:
        k = w // s
        if k == 0:
            continue
        for i in range(s):
            for j in range(s):
                region = x[..., i * k:(i + 1) * k, j * k:(j + 1) * k]
                parts.append(region.mean(dim=3).reshape(b, -1))
                parts.append(region.mean(dim=2).reshape(b, -1))
    return torch.cat(parts, dim=1) if parts else x.new_zeros(b, 0)


def pod_distance(old: torch.Tensor, new: torch.Tensor, scales: Sequence[int] = POD_SCALES) -> torch.Tensor:
    """d_b = ‖Ψ(a_b²) − Ψ(b_b²)‖₂ per image [B], the plain (unsquared) norm,
    with a zero subgradient where the maps are equal."""
    a = local_pod_embedding(_at_least_float32(old.detach()).pow(2), scales)
    b = local_pod_embedding(_at_least_float32(new).pow(2), scales)
    return torch.linalg.vector_norm(a - b, ord=2, dim=1)


def pod_factors(num_maps: int, factor: float, last_factor: float | None = None) -> list[float]:
    """λ_ℓ for each map; the last map of the list (the logits when present, else the
    decoder output) gets ``last_factor`` (``pod_options.switch.after.factor``), or ``factor``
    when there is none."""
    last = factor if last_factor is None else last_factor
    return [factor] * (num_maps - 1) + [last]


def local_pod(old_maps: Sequence[torch.Tensor], new_maps: Sequence[torch.Tensor], num_current: int,
              num_new: int, factor: float, last_factor: float | None = None,
              scales: Sequence[int] = POD_SCALES, schedule: bool = True) -> torch.Tensor:
    """L_pod = (1/L)·Σ_ℓ λ_ℓ·√(C_cur/C_new)·mean_b d_b(ℓ).

    Only the last map may have more channels in ``new_maps`` (the logits, C_cur vs C_old):
    they are folded first. A map with λ ≤ 0 adds nothing but still counts in L.
    ``schedule=False`` drops √(C_cur/C_new) (``--no_pod_schedule``)."""
    if len(old_maps) != len(new_maps) or not old_maps:
        raise ValueError(f"Local POD needs two equal, non-empty map lists, got {len(old_maps)} and {len(new_maps)}")
    if not 0 < num_new < num_current:
        raise ValueError(f"need 0 < C_new < C_cur, got C_new={num_new}, C_cur={num_current}")
    num_old = num_current - num_new
    weight = math.sqrt(num_current / num_new) if schedule else 1.0
    last = len(old_maps) - 1
    total = new_maps[0].new_zeros((), dtype=torch.float64 if new_maps[0].dtype == torch.float64 else torch.float32)
    for i, (a, b, lam) in enumerate(zip(old_maps, new_maps, pod_factors(len(old_maps), factor, last_factor))):
        if i == last and a.shape[1] != b.shape[1]:
            if a.shape[1] != num_old or b.shape[1] != num_current:
                raise ValueError(f"last POD map: old {a.shape[1]} / new {b.shape[1]} channels, expected {num_old} / {num_current}")
            b = fold_extra_logits(b, num_old)
        if a.shape != b.shape:
            raise ValueError(f"POD map {i + 1}: old {tuple(a.shape)} and new {tuple(b.shape)} differ")
        if lam <= 0:
            continue
        total = total + lam * weight * pod_distance(a, b, scales).mean()
    return total / len(old_maps)


# -- the whole step-t loss ----------------------------------------------------------------------
def plop_losses(logits: torch.Tensor, old_logits: torch.Tensor, label: torch.Tensor,
                thresholds: torch.Tensor, new_maps: Sequence[torch.Tensor], old_maps: Sequence[torch.Tensor],
                factor: float, last_factor: float | None = None) -> dict[str, torch.Tensor]:
    """{"ce": L_ce, "pod": L_pod} and nothing else; L = their sum. C_cur and C_old come from the
    two logits' channels; the maps are in the official order (stages, decoder, small logits)."""
    num_current, num_old = logits.shape[1], old_logits.shape[1]
    u, pred = normalised_entropy(old_logits, num_current)
    target, nu = pseudo_labels(label, u, pred, thresholds, num_old)
    return {
        "ce": adaptive_cross_entropy(logits, target, nu),
        "pod": local_pod(old_maps, new_maps, num_current, num_current - num_old, factor, last_factor),
    }
