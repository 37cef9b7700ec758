"""ALIFE's losses as the official code computes them (cvlab-yonsei/ALIFE: ``models/losses.py``,
``run_step1.py``, ``run_step3.py``, ``train_matrices.py``), as pure tensor functions.

Pixel losses take logits ``[B, C, H, W]`` of the current model, the frozen previous model's
softmax p^{t−1} ``[B, C_prev, H, W]`` (its channels are the first ``C_prev`` of the current
model; computed once per batch and shared by ALI and KD) and the training target ``[B, H, W]``
(0 = unlabelled, new-class channels, 255 = ignore; any integer type, the loader's uint8
is widened to int64 only for the kernels that need it). The rotation losses take
per-class prototypes ``[C, D]``.

Where the official code divides by the size of an empty region (ALI with no ``y = 0`` pixel,
KD with no ``y != 0`` pixel) and returns NaN, these return 0, still attached to the graph so
that ``backward`` works.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from incseg_cli.datasets.base import IGNORE_INDEX


def _full(x: torch.Tensor) -> torch.Tensor:
    """Half-precision logits (autocast) in float32; float32 and float64 stay as they are."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def _masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``values`` over ``mask``; 0 (with a zero gradient) when the mask is empty.

    ``torch.where`` rather than a product: an inf outside the region must not become NaN."""
    total = torch.where(mask, values, torch.zeros_like(values)).sum()
    return total / mask.sum().clamp(min=1).to(values.dtype)


def _old_channels(log_probs: torch.Tensor, n_old: int) -> torch.Tensor:
    """The first ``n_old`` channels as a ``split`` view: its gradient goes into the whole
    one once, where every slice would allocate a zero-filled gradient of the whole."""
    return log_probs.split([n_old, log_probs.shape[1] - n_old], dim=1)[0]


def _old_dot(log_probs: torch.Tensor, old_probs: torch.Tensor) -> torch.Tensor:
    """Σ_{k ∈ C_prev} p^{old}_k log p_k per pixel ``[B, H, W]``; ``log_probs`` may hold
    only the old channels already."""
    old = log_probs if log_probs.shape[1] == old_probs.shape[1] else _old_channels(log_probs, old_probs.shape[1])
    return (_full(old_probs.detach()) * old).sum(dim=1)


def ali_loss(logits: torch.Tensor, old_probs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Adaptive logit regularizer (the official ``LOSS.MY`` term), averaged over the pixels with ``target == 0``:

        log Σ_{k ∈ C_all} exp z_k − Σ_{k ∈ C_prev} p^{old}_k z_k  =  −Σ_{k ∈ C_prev} p^{old}_k log p_k

    i.e. cross-entropy from the old distribution ``old_probs`` (the previous model's softmax,
    a constant) to the *un-renormalised* new softmax. Gradient: p_d for new classes,
    p_d − p^{old}_d for old ones (background included)."""
    log_probs = torch.log_softmax(_full(logits), dim=1)
    return _masked_mean(-_old_dot(log_probs, old_probs), target == 0)


def kd_loss(logits: torch.Tensor, old_probs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """MiB's plain KD at temperature 1 as ALIFE applies it (``kd``): on every pixel with
    ``target != 0`` (new classes *and* 255), −(1/|C_prev|) Σ_{k ∈ C_prev} p^{old}_k log q_k,
    q = softmax over the old channels only (new logits get no gradient)."""
    n_old = old_probs.shape[1]
    log_q = torch.log_softmax(_full(logits)[:, :n_old], dim=1)
    return _masked_mean(-_old_dot(log_q, old_probs) / n_old, target != 0)


def step1_losses(logits: torch.Tensor, old_probs: torch.Tensor,
                 target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(CE, ALI, KD) of a Step-1 batch (``run_step1.py``), equal to ``cross_entropy`` with
    the y = 0 pixels ignored (normalised over all pixels), ``ali_loss`` and ``kd_loss``, but
    sharing one log-softmax and one Σ p^{old} log p between them: log q_k = log p_k −
    log Σ_{j ∈ C_prev} p_j, so KD = (logsumexp_{C_prev}(log p) − Σ p^{old} log p)/|C_prev|."""
    n_old = old_probs.shape[1]
    log_probs = torch.log_softmax(_full(logits), dim=1)
    new_only = target.long().masked_fill(target == 0, IGNORE_INDEX)
    ce = F.nll_loss(log_probs, new_only, ignore_index=IGNORE_INDEX, reduction="none").mean()
    old_log_probs = _old_channels(log_probs, n_old)
    dot = _old_dot(old_log_probs, old_probs)
    ali = _masked_mean(-dot, target == 0)
    kd = _masked_mean((torch.logsumexp(old_log_probs, dim=1) - dot) / n_old, target != 0)
    return ce, ali, kd


def focal_loss(logits: torch.Tensor, target: torch.Tensor, gamma: float = 2.0,
               ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Focal loss with α = 1 (Step 3, ``run_step3.py``): (1 − p_y)^γ · (−log p_y) per pixel, averaged over ALL
    pixels, ignored ones counting 0 (the normaliser of the official ``fl``)."""
    ce = F.cross_entropy(_full(logits), target.long(), ignore_index=ignore_index, reduction="none")
    return ((1.0 - torch.exp(-ce)) ** gamma * ce).mean()


def pseudo_labels(target: torch.Tensor, old_scores: torch.Tensor) -> torch.Tensor:
    """Step-3 target (``run_step3.py``): the old model's argmax (of its logits or probabilities) where
    ``target == 0``, ``target`` elsewhere."""
    return torch.where(target == 0, old_scores.argmax(dim=1).to(target.dtype), target)


def memory_ce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Replay loss (Step 3's memory ``ce``): mean cross-entropy of the memory vectors' logits ``[N, C_all]``
    against their class channels ``[N]``; 0 for an empty memory."""
    if labels.numel() == 0:
        return logits.sum() * 0.0
    return F.cross_entropy(_full(logits), labels)


# -- rotation training (Step 2-2, ``train_matrices.py``) -----------------------------------------
def _normalized(x: torch.Tensor) -> torch.Tensor:
    return F.normalize(_full(x), dim=1, eps=1e-8)


def _class_blocks(classes: int, rows: int, chunk: int) -> list[tuple[int, int, int, int]]:
    """(class from, class to, row from, row to) blocks of a ``[classes, rows]`` grid with at
    most ``max(chunk, 1)`` grid cells each: whole classes together when a class fits."""
    chunk = max(1, chunk)
    if rows <= chunk:
        step = chunk // max(rows, 1)
        return [(c, min(c + step, classes), 0, rows) for c in range(0, classes, step)]
    return [(c, c + 1, r, min(r + chunk, rows)) for c in range(classes) for r in range(0, rows, chunk)]


class MemoryScan:
    """v_c(p) = Σ_s ReLU(cos(f(p), m_c(s))) of features ``[P, D]`` against a fixed memory,
    prepared once: every row L2-normalised, the rows grouped by class.

    With ``features_nonnegative`` (the decoder features end in a ReLU), a memory row without
    a negative entry has a non-negative cosine with every feature, so the ReLU does nothing
    and Σ_s cos(f, m_c(s)) = f̂ · Σ_s m̂_c(s): such rows (every extracted vector, region means
    of ReLU features) are summed once per class here and cost one ``[C, D] × [D, P]``
    product per call. Rows with a negative entry (rotated vectors) keep the ReLU: one
    batched product over all classes at a time (zero rows pad the classes to the same
    count, cos 0 adds nothing), at most ``chunk`` memory rows per product, so memory use is
    ``chunk · P`` whatever the bank size and the sum order is fixed (deterministic on GPU)."""

    def __init__(self, memory: torch.Tensor, counts: list[int], features_nonnegative: bool) -> None:
        if sum(counts) != memory.shape[0]:
            raise ValueError(f"counts add up to {sum(counts)} rows, the memory has {memory.shape[0]}")
        m = _normalized(memory)
        owner = torch.repeat_interleave(torch.arange(len(counts)), torch.tensor(counts, dtype=torch.int64))
        linear = (m >= 0).all(dim=1) if features_nonnegative else torch.zeros(len(m), dtype=torch.bool)
        self.summed = torch.zeros(len(counts), m.shape[1], dtype=m.dtype).index_add_(0, owner[linear], m[linear])
        rest = ~linear
        per_class = torch.bincount(owner[rest], minlength=len(counts))
        self.scanned_classes = per_class.nonzero().flatten()
        width = int(per_class.max()) if rest.any() else 0
        self.scanned = torch.zeros(len(self.scanned_classes), width, m.shape[1], dtype=m.dtype)
        for row, c in enumerate(self.scanned_classes.tolist()):
            rows = m[rest & (owner == c)]
            self.scanned[row, : len(rows)] = rows

    def to(self, device: torch.device | str) -> "MemoryScan":
        for name in ("summed", "scanned", "scanned_classes"):
            setattr(self, name, getattr(self, name).to(device))
        return self

    def __call__(self, features: torch.Tensor, chunk: int = 1024) -> torch.Tensor:
        """``[C, P]`` scores of ``features [P, D]``; ``chunk`` memory rows per product."""
        f = _normalized(features).to(self.summed.dtype)
        out = self.summed @ f.T
        classes, rows = self.scanned.shape[:2]
        for c0, c1, r0, r1 in _class_blocks(classes, rows, chunk):
            block = self.scanned[c0:c1, r0:r1]
            dots = torch.relu(block.reshape(-1, block.shape[2]) @ f.T)
            out.index_add_(0, self.scanned_classes[c0:c1], dots.view(c1 - c0, r1 - r0, -1).sum(dim=1))
        return out


def correlation_scores(features: torch.Tensor, memory: torch.Tensor, counts: list[int],
                       chunk: int = 1024) -> torch.Tensor:
    """v_c(p) = Σ_s ReLU(cos(f(p), m_c(s))) for features ``[P, D]`` and a memory ``[N, D]``
    whose rows are grouped by class, ``counts[c]`` rows for class c; returns ``[C, P]``.

    The ``[N, P]`` cosine matrix is never built whole: at most ``chunk`` rows at a time.
    Every row goes through the ReLU here (nothing is assumed of the signs); a
    training loop builds a ``MemoryScan`` once instead."""
    return MemoryScan(memory, counts, features_nonnegative=False)(features, chunk)


def attention_prototypes(scores: torch.Tensor, features_prev: torch.Tensor, features_curr: torch.Tensor,
                         tau: float) -> tuple[torch.Tensor, torch.Tensor]:
    """σ_c = softmax over every position of the batch of τ·v_c; returns the prototypes
    (Σ_p σ_c(p) f^{t−1}(p), Σ_p σ_c(p) f^t(p)), both ``[C, D]``, with the same σ (as ``train_matrices.py``)."""
    sigma = torch.softmax(tau * scores, dim=1)
    return sigma @ _full(features_prev), sigma @ _full(features_curr)


def centre(prototypes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(r − μ, μ) with μ the mean over classes (as ``train_matrices.py`` does; absent from the poster)."""
    mu = prototypes.mean(dim=0)
    return prototypes - mu, mu


def fid_loss(rotated: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """L_FID = mean over classes of 1 − cos(R_c r̄_c^{t−1}, r̄_c^t)."""
    return (1.0 - F.cosine_similarity(rotated, target, dim=1, eps=1e-8)).mean()


def reg_loss(rotated: torch.Tensor, offset: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
             channels: torch.Tensor) -> torch.Tensor:
    """L_REG = mean over classes of −log softmax(W (R_c r̄_c + μ^t) + b)_c with the current
    model's frozen classifier ``weight [K, D]``, ``bias [K]``; ``channels [C]`` is each
    prototype's logit channel."""
    logits = (rotated + offset) @ weight.T + bias
    return F.cross_entropy(logits, channels)
