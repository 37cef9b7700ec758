"""PAMR (WILSON's ``wss/modules.py``) and the localizer."""

import torch
import torch.nn.functional as F

from incseg_cli.models.localizer import PAMR, Localizer, neighbour_index

DILATIONS = (1, 2, 4, 8, 12)


def _shifted(t: torch.Tensor, centre: bool) -> torch.Tensor:
    """[B, K, P, H, W]: every 3×3 neighbour at every dilation, by replicate padding, the way
    the official LocalAffinity convolutions read them."""
    h, w = t.shape[-2:]
    out = []
    for d in DILATIONS:
        padded = F.pad(t, [d] * 4, mode="replicate")
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                if dy == dx == 0 and not centre:
                    continue
                out.append(padded[:, :, d + dy * d : d + dy * d + h, d + dx * d : d + dx * d + w])
    return torch.stack(out, 2)


def reference_pamr(image: torch.Tensor, mask: torch.Tensor, iterations: int = 10) -> torch.Tensor:
    std = _shifted(image, centre=True).std(2, keepdim=True)
    kernel = -(image[:, :, None] - _shifted(image, centre=False)).abs() / (1e-8 + 0.1 * std)
    aff = torch.softmax(kernel.mean(1), dim=1)
    for _ in range(iterations):
        mask = (_shifted(mask, centre=False) * aff[:, None]).sum(2)
    return mask


def _inputs(seed: int, b: int = 2, c: int = 5, h: int = 7, w: int = 9):
    g = torch.Generator().manual_seed(seed)
    image = torch.rand(b, 3, h, w, generator=g, dtype=torch.float64)
    mask = torch.softmax(3 * torch.randn(b, c, h, w, generator=g, dtype=torch.float64), 1)
    return image, mask


def test_matches_the_official_formulation():
    for seed in range(3):
        image, mask = _inputs(seed)
        assert torch.allclose(PAMR()(image, mask).double(), reference_pamr(image.float(), mask.float()).double(), atol=1e-5)


def test_no_parameters_and_no_gradient():
    pamr = PAMR()
    assert list(pamr.parameters()) == [] and list(pamr.buffers()) == []
    image, mask = _inputs(0)
    out = pamr(image, mask.requires_grad_(True))
    assert not out.requires_grad


def test_preserves_channel_sums_and_constant_masks():
    image, mask = _inputs(1, b=3, c=21, h=8, w=8)
    out = PAMR()(image, mask)
    assert torch.allclose(out.sum(1), torch.ones(3, 8, 8, dtype=out.dtype), atol=1e-5)
    assert ((out >= 0) & (out <= 1 + 1e-6)).all()
    const = torch.full((3, 4, 8, 8), 0.25)
    assert torch.allclose(PAMR()(image, const), const, atol=1e-6)
    assert not torch.allclose(out, mask, atol=1e-3)  # it does refine a non-constant mask


def test_constant_image_gives_uniform_affinities():
    image = torch.full((1, 3, 6, 6), 0.4)
    aff = PAMR().affinity(image)
    assert aff.shape == (1, 40, 36)
    assert torch.allclose(aff, torch.full_like(aff, 1 / 40))
    matrix = PAMR().transition(torch.rand(2, 3, 6, 6))
    assert torch.allclose(matrix.sum(2), torch.ones(2, 36))


def test_neighbour_index_is_replicate_padding():
    h, w = 5, 6
    grid = torch.arange(h * w, dtype=torch.float64).view(1, 1, h, w)
    index = neighbour_index(h, w, DILATIONS)
    expected = _shifted(grid, centre=False)[0, 0].flatten(1).long()
    assert sorted(map(tuple, index.t().tolist())) == sorted(map(tuple, expected.t().tolist()))


def test_image_is_resized_to_the_mask():
    g = torch.Generator().manual_seed(3)
    big = torch.rand(2, 3, 64, 64, generator=g)
    mask = torch.softmax(torch.randn(2, 4, 8, 8, generator=g), 1)
    small = F.interpolate(big, size=(8, 8), mode="bilinear", align_corners=True)
    assert torch.allclose(PAMR()(big, mask), PAMR()(small, mask))


def test_edges_hold_back_propagation():
    # two flat colour regions: mass of the left region must not leak across the edge much
    image = torch.zeros(1, 3, 8, 8)
    image[..., 4:] = 1.0
    image += 0.01 * torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    mask = torch.zeros(1, 2, 8, 8)
    mask[:, 0, :, :4] = 1.0
    mask[:, 1] = 1 - mask[:, 0]
    out = PAMR()(image, mask)
    assert out[0, 0, :, :4].min() > 0.9 and out[0, 0, :, 4:].max() < 0.1
    flat = PAMR()(torch.full((1, 3, 8, 8), 0.5), mask)  # without the edge it blurs
    assert flat[0, 0, :, 4:].max() > 0.2


def test_localizer_shapes_and_modes():
    loc = Localizer(128, 21, 64)
    body = torch.randn(4, 128, 8, 8)
    assert loc(body).shape == (4, 21, 8, 8)
    kinds = [type(m).__name__ for m in loc]
    assert kinds == ["Conv2d", "BatchNorm2d", "LeakyReLU", "Conv2d", "BatchNorm2d", "LeakyReLU", "Conv2d"]
    assert loc[2].negative_slope == 0.01 and loc[0].bias is None and loc[6].bias is not None
    assert loc.describe() == {"in_channels": 128, "width": 64, "classes": 21}
    loc.eval()
    with torch.no_grad():
        a = loc(body)
    loc.train()
    b = loc(body)
    assert not torch.allclose(a, b)  # eval uses running stats, train the batch's
