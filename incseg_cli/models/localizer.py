"""WILSON's localizer (on the encoder output) and PAMR, the parameter-free mask refinement.

The localizer is the official "pseudolabeler" (WILSON's ``train.py``, ``Trainer.__init__``) with
BatchNorm + LeakyReLU in place of InPlace-ABN. PAMR follows Araslanov & Roth's ``PAMR(num_iter=10,
dilations=[1,2,4,8,12])`` (WILSON's ``wss/modules.py``), written as one gather over all neighbours.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

LEAKY_SLOPE = 0.01
PAMR_ITERATIONS = 10
PAMR_DILATIONS = (1, 2, 4, 8, 12)

# The 8 neighbours of a 3×3 window, in the official kernel order.
_OFFSETS = ((-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1))


class Localizer(nn.Sequential):
    """3×3 conv-BN-LeakyReLU(0.01) twice, then a 1×1 conv to every seen class.

    ``width`` is 256 in the paper; it is the model's head width here, which is 256 on the
    ResNet models and 64 on the toy CPU model."""

    def __init__(self, in_channels: int, num_classes: int, width: int = 256) -> None:
        super().__init__(
            nn.Conv2d(in_channels, width, 3, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.LeakyReLU(LEAKY_SLOPE, inplace=True),
            nn.Conv2d(width, width, 3, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.LeakyReLU(LEAKY_SLOPE, inplace=True),
            nn.Conv2d(width, num_classes, 1),
        )
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.width = width

    def describe(self) -> dict[str, int]:
        return {"in_channels": self.in_channels, "width": self.width, "classes": self.num_classes}


def neighbour_index(height: int, width: int, dilations: tuple[int, ...] = PAMR_DILATIONS,
                    device: torch.device | str = "cpu") -> torch.Tensor:
    """[P, h·w] flat index of each pixel's P = 8·len(dilations) neighbours; coordinates are
    clamped at the border, which is what replicate padding does."""
    base = torch.tensor(_OFFSETS, device=device)
    scale = torch.tensor(dilations, device=device)
    offsets = (scale[:, None, None] * base[None]).reshape(-1, 2)  # [P, 2], dilation-major
    rows = (torch.arange(height, device=device)[None, :, None] + offsets[:, 0, None, None]).clamp(0, height - 1)
    cols = (torch.arange(width, device=device)[None, None, :] + offsets[:, 1, None, None]).clamp(0, width - 1)
    return (rows * width + cols).flatten(1)


class PAMR(nn.Module):
    """Pixel-adaptive mask refinement: ``num_iter`` times, every pixel's mask becomes the
    affinity-weighted mean of its neighbours' masks.

    The affinity of pixel i to neighbour n is the softmax over the neighbours of
    −mean_k |I_k(i) − I_k(n)| / (1e-8 + 0.1 · σ_k(i)), σ_k(i) the unbiased std of channel k
    over the centre and its neighbours at every dilation (the centre counted once per
    dilation, 45 samples for 5 dilations). A convex combination: per-pixel channel sums and
    constant masks are preserved. No parameters, no gradient."""

    def __init__(self, num_iter: int = PAMR_ITERATIONS, dilations: tuple[int, ...] = PAMR_DILATIONS) -> None:
        super().__init__()
        self.num_iter = num_iter
        self.dilations = tuple(dilations)
        self._index: dict[tuple[int, int, str], torch.Tensor] = {}

    def _neighbours(self, height: int, width: int, device: torch.device) -> torch.Tensor:
        key = (height, width, str(device))
        if key not in self._index:
            self._index[key] = neighbour_index(height, width, self.dilations, device)
        return self._index[key]

    def affinity(self, image: torch.Tensor) -> torch.Tensor:
        """[B, P, h·w] weights over the neighbours of each pixel (they sum to 1)."""
        b, k, h, w = image.shape
        index = self._neighbours(h, w, image.device)
        flat = image.flatten(2)
        near = flat[:, :, index]  # [B, K, P, hw]
        centre = flat[:, :, None, :]
        samples = torch.cat([centre.expand(-1, -1, len(self.dilations), -1), near], dim=2)
        std = samples.std(dim=2, keepdim=True)
        kernel = -(near - centre).abs() / (1e-8 + 0.1 * std)
        return torch.softmax(kernel.mean(dim=1), dim=1)

    def transition(self, image: torch.Tensor) -> torch.Tensor:
        """[B, h·w, h·w] row-stochastic matrix W with W[b, i, n] the affinity of pixel i to
        pixel n (border neighbours clamped onto the same pixel add up).

        One propagation step is then a batched matmul: on the feature maps WILSON refines
        (h·w ≤ 56², the official sizes) that is far faster than gathering 40 neighbours per
        iteration, and takes at most 4·(h·w)² bytes per image."""
        b, _, h, w = image.shape
        weights = self.affinity(image).transpose(1, 2)  # [B, hw, P]
        index = self._neighbours(h, w, image.device).t().expand(b, -1, -1)
        matrix = torch.zeros(b, h * w, h * w, device=image.device, dtype=weights.dtype)
        return matrix.scatter_add_(2, index, weights)

    @torch.no_grad()
    def forward(self, image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Refine ``mask`` [B, C, h, w] with the colours of ``image`` [B, 3, H, W] (in [0, 1]),
        which is resized to h×w first (bilinear, align_corners=True, as WILSON does)."""
        b, c, h, w = mask.shape
        image = image.float()
        if image.shape[-2:] != (h, w):
            image = F.interpolate(image, size=(h, w), mode="bilinear", align_corners=True)
        step = self.transition(image).transpose(1, 2)
        out = mask.float().flatten(2)
        for _ in range(self.num_iter):
            out = torch.bmm(out, step)
        return out.view(b, c, h, w).to(mask.dtype)
