"""WILSON's step-t losses and pseudo-labels, as the official code (fcdl94/WILSON, ``--weakly``) computes them.

Every function is pure: tensors in, tensors out, no model and no data. Shapes:
``z`` localizer logits and ``p`` segmentation logits [B, C, h, w] over all seen classes;
``s`` old-model logits [B, C_old, h, w] (background + old classes); ``y`` image-level labels
[B, C-1] (column k = model class k+1; under the default masking only new classes can be 1).
All of them live at the encoder's resolution h×w.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from incseg_cli.datasets.base import IGNORE_INDEX

# Constants of the official code: nGWP ε, focal penalty λ and γ, ``pseudo_gtmask`` cutoffs, L_SEG's gate ε.
NGWP_EPS = 1.0
FOCAL_LAMBDA = 0.01
FOCAL_GAMMA = 3.0
SEED_TOP = 0.6
SEED_BKG = 0.7
SEED_LOW = 0.2
GATE_EPS = 1e-5


# -- L_CLS ------------------------------------------------------------------------------------
def ngwp_focal_scores(z: torch.Tensor, eps: float = NGWP_EPS, lam: float = FOCAL_LAMBDA,
                      gamma: float = FOCAL_GAMMA) -> torch.Tensor:
    """Image-level class logits [B, C]: normalised global weighted pooling of ``z`` with its
    own softmax as weights, plus the focal mask penalty (1 − m̄)^γ · log(λ + m̄)."""
    m = torch.softmax(z, dim=1)
    ngwp = (z * m).sum(dim=(2, 3)) / (eps + m.sum(dim=(2, 3)))
    mean = m.mean(dim=(2, 3))
    focal = (1.0 - mean).pow(gamma) * torch.log(lam + mean)
    return ngwp + focal


def cls_loss(z: torch.Tensor, y: torch.Tensor, n_new: int, relaxed: bool = False) -> torch.Tensor:
    """L_CLS: multi-label BCE of the nGWP+focal scores against the image labels.

    Default: only the last ``n_new`` channels (the new classes). ``relaxed`` (image labels
    of old classes too, the official ``--no_mask``, paper Table 5): every foreground channel. The
    background channel is never supervised directly."""
    scores = ngwp_focal_scores(z)
    if relaxed:
        return F.binary_cross_entropy_with_logits(scores[:, 1:], y.to(scores.dtype))
    return F.binary_cross_entropy_with_logits(scores[:, -n_new:], y[:, -n_new:].to(scores.dtype))


# -- L_LOC, L_ENC -----------------------------------------------------------------------------
def loc_loss(z: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """L_LOC: BCE of the localizer's background + old channels against σ(old logits)."""
    n_old = s.shape[1]
    return F.binary_cross_entropy_with_logits(z[:, :n_old], torch.sigmoid(s.detach()).to(z.dtype))


def enc_loss(body: torch.Tensor, body_old: torch.Tensor) -> torch.Tensor:
    """L_ENC: mean squared difference of the new and the old encoder outputs."""
    return F.mse_loss(body, body_old.detach())


# -- pseudo-labels ------------------------------------------------------------------------------
def mask_classes(m: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Zero every foreground channel whose class is not in the image label (background is
    kept); nothing is renormalised, so a pixel's channels then sum to at most 1."""
    keep = torch.cat([torch.ones_like(y[:, :1]), y], dim=1).to(m.dtype)
    return m * keep[:, :, None, None]


def seed_masks(r: torch.Tensor, top: float = SEED_TOP, bkg: float = SEED_BKG,
               low: float = SEED_LOW) -> torch.Tensor:
    """``pseudo_gtmask``: G[b,c,i] = 1 where r > max(low, κ_c · max_i r[b,c]) with κ_0 = bkg
    and κ_c = top for the foreground; pixels where more than one channel fires are cleared."""
    peak = r.flatten(2).amax(dim=2)
    factor = torch.full_like(peak[:1], top)
    factor[:, 0] = bkg
    threshold = torch.clamp(peak * factor, min=low)
    fired = (r > threshold[:, :, None, None]).to(r.dtype)
    ambiguous = fired.sum(dim=1, keepdim=True) > 1
    return fired.masked_fill(ambiguous, 0.0)


def sss_loss(z: torch.Tensor, seeds: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """L_SSS (``balanced_mask_loss_ce``): class-balanced CE of the localizer on the seeds.

    Pixel weight w_c = (N − N_c)/(1 + N) of its seed class; unseeded pixels count 0 but stay
    in the per-image mean. An image counts only if its seeds hold every labelled class plus
    the background; the batch mean is over all B images."""
    b, c = seeds.shape[:2]
    target = seeds.argmax(dim=1)
    target = target.masked_fill(seeds.sum(dim=1) < 1, IGNORE_INDEX)
    per_class = seeds.flatten(2).sum(dim=2)
    total = per_class.sum(dim=1, keepdim=True)
    class_weight = (total - per_class) / (1.0 + total)
    pixel_weight = (seeds * class_weight[:, :, None, None]).sum(dim=1).flatten(1)
    ce = F.cross_entropy(z, target, ignore_index=IGNORE_INDEX, reduction="none").flatten(1)
    present = (per_class > 0).sum(dim=1).to(ce.dtype)
    gate = (present == y.sum(dim=1).to(ce.dtype) + 1).to(ce.dtype)
    return (gate * (pixel_weight.to(ce.dtype) * ce).mean(dim=1)).mean()


def smoothed_labels(a: torch.Tensor, alpha: float) -> torch.Tensor:
    """q = α · one-hot(argmax a) + (1 − α) · a (ties keep every maximal channel, as coded)."""
    hard = (a >= a.amax(dim=1, keepdim=True)).to(a.dtype)
    return alpha * hard + (1.0 - alpha) * a


def seg_target(q: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """q̂: old classes from σ(old logits), new classes from q, background min(σ(s_0), q_0)."""
    n_old = s.shape[1]
    old = torch.sigmoid(s.detach()).to(q.dtype)
    background = torch.minimum(old[:, :1], q[:, :1])
    return torch.cat([background, old[:, 1:], q[:, n_old:]], dim=1)


def seg_image_gate(q: torch.Tensor, y: torch.Tensor, n_old: int) -> torch.Tensor:
    """v_b = 1 iff, for every new class, q has mass in image b exactly when the label says so."""
    mass = q[:, n_old:].flatten(2).sum(dim=2)
    agree = (mass > 0) == y[:, n_old - 1:].bool()
    return agree.all(dim=1).to(q.dtype)


def seg_loss(p: torch.Tensor, target: torch.Tensor, gate: torch.Tensor, eps: float = GATE_EPS) -> torch.Tensor:
    """L_SEG: per image, the mean over pixels of the BCE summed over all channels, averaged
    over the images whose gate is open."""
    bce = F.binary_cross_entropy_with_logits(p, target.to(p.dtype), reduction="none").sum(dim=1)
    per_image = bce.flatten(1).mean(dim=1)
    gate = gate.to(per_image.dtype)
    return (gate * per_image).sum() / (gate.sum() + eps)
