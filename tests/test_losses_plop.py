"""PLOP's losses and thresholds (PLOP's ``train.py``): hand-worked values in float64, a table of
histograms and their thresholds against a literal transcription of the official ``find_median``
loop, float64 gradchecks of the CE and Local POD, and the edge cases of POD's region slicing."""

import math

import pytest
import torch
import torch.nn.functional as F

from incseg_cli.losses.plop import (
    EntropyThresholds,
    adaptive_cross_entropy,
    class_histogram,
    entropy_bins,
    fold_extra_logits,
    local_pod,
    local_pod_embedding,
    normalised_entropy,
    plop_losses,
    pod_distance,
    pod_factors,
    pseudo_labels,
    thresholds_from_histogram,
)


def _pixels(rows, dtype=torch.float64):
    """[[logit per channel] per pixel] -> logits [1, C, 1, P]."""
    return torch.tensor(rows, dtype=dtype).T.reshape(1, len(rows[0]), 1, len(rows))


def _hist(counts: dict[int, int], num_classes: int = 3) -> torch.Tensor:
    """A histogram [C_cur, 100] whose class 0 has ``counts`` (bin: count), the others none."""
    hist = torch.zeros(num_classes, 100, dtype=torch.long)
    for j, n in counts.items():
        hist[0, j] = n
    return hist


def _official_loop(row: torch.Tensor, floor: float = 0.001) -> torch.Tensor:
    """``Trainer.find_median`` (mode "entropy") for one class, statement by statement, with
    its own mix of Python doubles and torch tensors: the reference for the vectorised code."""
    thresholds = torch.zeros(1, dtype=torch.float32)
    total = row.sum()
    if total > 0:
        half = total / 2
        running = 0.0
        for lower in range(100):
            lower = lower / 100
            index = int(lower * 100)
            if half >= running and half <= running + row[index]:
                break
            running += lower * 100
        thresholds[0] = lower + ((half - running) / row[index].sum()) * (1 / 100)
    thresholds[0] = max(thresholds[0], floor)
    return thresholds[0]


# -- uncertainty (``entropy``) ------------------------------------------------------------------
def test_entropy_hand_value_and_float32():
    # C_old = 2, C_cur = 3; q = (1/4, 3/4), then a tie, then a near one-hot prediction
    old = _pixels([[0.0, math.log(3)], [1.0, 1.0], [0.0, 40.0]])
    u, pred = normalised_entropy(old, num_current=3)
    h = -(0.25 * math.log(0.25) + 0.75 * math.log(0.75)) / (2 * math.log(2))  # a mean over 2 channels
    assert u.dtype == torch.float32
    assert u[0, 0, 0].item() == pytest.approx(h / math.log(3), rel=1e-6)
    assert u[0, 0, 1].item() == pytest.approx(1 / (2 * math.log(3)), rel=1e-6)  # uniform: the bound
    assert abs(u[0, 0, 2].item()) < 1e-7 and entropy_bins(u)[0, 0, 2] == 0
    assert pred.flatten().tolist() == [1, 0, 1]  # the tie goes to the lowest class id


@pytest.mark.parametrize("num_old,num_current,bound", [(20, 21, 0.0164), (16, 21, 0.0205), (16, 17, 0.0221),
                                                       (11, 12, 0.0366), (101, 151, 0.00197), (101, 111, 0.00210)])
def test_entropy_upper_bound_table(num_old, num_current, bound):
    u, _ = normalised_entropy(torch.zeros(1, num_old, 1, 1), num_current)  # uniform old prediction
    assert u.item() == pytest.approx(1 / (num_old * math.log(num_current)), rel=1e-5)
    assert u.item() == pytest.approx(bound, abs=5e-5)


def test_entropy_refuses_bad_class_counts():
    with pytest.raises(ValueError, match="C_old"):
        normalised_entropy(torch.zeros(1, 3, 1, 1), num_current=3)


# -- histogram and thresholds (``find_median``) -------------------------------------------------
def test_bins_and_histogram_count_only_background_labels():
    u = torch.tensor([[[0.0099, 0.0151, 2.0, -1e-9, 0.5, 0.005]]])
    assert entropy_bins(u).flatten().tolist() == [0, 1, 99, 0, 50, 0]
    pred = torch.tensor([[[1, 1, 2, 0, 1, 1]]])
    label = torch.tensor([[[0, 0, 0, 0, 255, 4]]])  # the last two are not counted
    hist = class_histogram(u, pred, label, num_current=5)
    assert hist.shape == (5, 100) and hist.dtype == torch.long
    assert hist.sum() == 4
    assert hist[1, 0] == 1 and hist[1, 1] == 1 and hist[2, 99] == 1 and hist[0, 0] == 1


TABLE = [  # (bin: count) of class 0 -> τ, worked through the official loop
    ({0: 70, 1: 20, 2: 10}, 0.0071428571),
    ({0: 30, 1: 60, 3: 10}, 0.0183333326),
    ({0: 20, 1: 20, 2: 20, 5: 40}, 0.06),
    ({3: 2}, math.nan),
    ({0: 300, 1: 300, 2: 300, 28: 100}, 0.2994),  # k = 29 reads bin 28
    ({0: 400, 1: 400, 2: 400}, 0.001),
    ({0: 2600, 1: 2600, 2: 2600, 3: 2600}, math.inf),
    ({}, 0.001),
]


@pytest.mark.parametrize("counts,expected", TABLE)
def test_threshold_table(counts, expected):
    tau = thresholds_from_histogram(_hist(counts))
    assert tau.dtype == torch.float32 and tau.shape == (3,)
    if math.isnan(expected):
        assert math.isnan(tau[0].item())
    else:
        assert tau[0].item() == pytest.approx(expected, rel=1e-7)
    assert tau[0].item() == pytest.approx(_official_loop(_hist(counts)[0]).item(), rel=0, abs=0, nan_ok=True)
    assert tau[1:].tolist() == [pytest.approx(0.001)] * 2  # classes without counts get the floor


def test_thresholds_equal_the_official_loop_bit_for_bit():
    gen = torch.Generator().manual_seed(0)
    rows = []
    for scale in (1, 10, 300, 3000, 10 ** 6):  # below and above 9900 counted pixels (the walk may never stop)
        for _ in range(12):
            row = torch.zeros(100, dtype=torch.long)
            used = torch.randint(1, 8, (1,), generator=gen).item()
            row[:used] = torch.randint(0, scale + 1, (used,), generator=gen)
            row[torch.randint(0, 100, (1,), generator=gen)] += torch.randint(0, scale + 1, (1,), generator=gen)
            rows.append(row)
    hist = torch.stack(rows)
    expected = torch.stack([_official_loop(r) for r in hist])
    torch.testing.assert_close(thresholds_from_histogram(hist), expected, rtol=0, atol=0, equal_nan=True)


def test_corrected_median_is_an_ablation():
    hist = torch.cat([_hist({0: 30, 1: 60, 3: 10})[:1], _hist({0: 20, 1: 20, 2: 20, 5: 40})[:1]])
    assert thresholds_from_histogram(hist, median="corrected").tolist() == [pytest.approx(0.0133333, rel=1e-5),
                                                                            pytest.approx(0.025, rel=1e-5)]
    with pytest.raises(ValueError, match="median"):
        thresholds_from_histogram(hist, median="true")


def test_ade_regime_every_predicted_class_gets_0_005():
    # the ADE regime: with C_old = 101, C_cur = 151 every U < 0.0021 lands in bin 0
    gen = torch.Generator().manual_seed(1)
    acc = EntropyThresholds(num_current=151)
    old = torch.randn(2, 101, 8, 8, generator=gen) * 3
    acc.update(old, torch.zeros(2, 8, 8, dtype=torch.long))
    assert acc.histogram[:, 1:].sum() == 0
    predicted = torch.zeros(151, dtype=torch.bool)
    predicted[old.argmax(dim=1).unique()] = True
    tau = acc.thresholds()
    assert (tau[predicted] == torch.tensor(0.005, dtype=torch.float32)).all()
    assert (tau[~predicted] == torch.tensor(0.001, dtype=torch.float32)).all()


def test_accumulator_streams_batches():
    gen = torch.Generator().manual_seed(2)
    old = torch.randn(4, 3, 6, 6, generator=gen) * 4
    label = torch.randint(0, 2, (4, 6, 6), generator=gen) * 7  # 0 or a new id (7)
    whole, parts = EntropyThresholds(num_current=8), EntropyThresholds(num_current=8)
    whole.update(old, label)
    parts.update(old[:1], label[:1])
    parts.update(old[1:], label[1:])
    assert torch.equal(whole.histogram, parts.histogram)
    assert whole.histogram.sum() == (label == 0).sum()
    torch.testing.assert_close(whole.thresholds(), parts.thresholds(), equal_nan=True, rtol=0, atol=0)
    assert torch.equal(EntropyThresholds(num_current=4).thresholds(), torch.full((4,), 0.001))


# -- pseudo-labels and ν ------------------------------------------------------------------------
def test_pseudo_labels_hand_values():
    # C_old = 3; pixels: bg certain, bg uncertain, old id 2 (counts as bg), new 4, ignored
    label = torch.tensor([[[0, 0, 2, 4, 255]]])
    u = torch.tensor([[[0.001, 0.02, 0.003, 0.0, 0.0]]])
    pred = torch.tensor([[[1, 2, 1, 0, 0]]])
    tau = torch.tensor([0.01, 0.005, 0.01, 0.5, 0.5])
    target, nu = pseudo_labels(label, u, pred, tau, num_old=3)
    assert target.tolist() == [[[1, 255, 1, 4, 255]]]
    assert nu.dtype == torch.float32
    assert nu.item() == pytest.approx(2 / (3 + 1e-6), rel=1e-7)


def test_nan_rejects_and_inf_accepts():
    label = torch.zeros(1, 2, 2, dtype=torch.long)
    u = torch.full((1, 2, 2), 0.5)
    pred = torch.tensor([[[1, 1], [2, 2]]])
    tau = torch.tensor([0.001, math.nan, math.inf, 0.001])
    target, nu = pseudo_labels(label, u, pred, tau, num_old=3)
    assert target.tolist() == [[[255, 255], [2, 2]]]
    assert nu.item() == pytest.approx(0.5, rel=1e-6)


def test_image_without_background_gets_zero_weight():
    # image 0 holds only new ids and 255: ν = 0 and its CE contributes 0 (and no gradient)
    label = torch.tensor([[[3, 255], [3, 3]], [[0, 0], [3, 0]]])
    u = torch.zeros(2, 2, 2)
    pred = torch.ones(2, 2, 2, dtype=torch.long)
    target, nu = pseudo_labels(label, u, pred, torch.full((4,), 0.01), num_old=3)
    assert nu[0].item() == 0.0 and nu[1].item() == pytest.approx(1.0, rel=1e-6)
    logits = torch.randn(2, 4, 2, 2, dtype=torch.float64, requires_grad=True)
    loss = adaptive_cross_entropy(logits, target, nu)
    alone = F.cross_entropy(logits[1:].detach(), target[1:], ignore_index=255, reduction="sum") / 8
    assert loss.item() == pytest.approx(alone.item() * nu[1].item(), rel=1e-6)
    loss.backward()
    assert (logits.grad[0] == 0).all() and (logits.grad[1] != 0).any()


# -- the cross-entropy --------------------------------------------------------------------------
def test_cross_entropy_hand_value_full_pixel_denominator():
    # softmax (1/6, 3/6, 2/6) everywhere; 2 images × 1×2 pixels, one ignored
    logits = torch.tensor([0.0, math.log(3), math.log(2)], dtype=torch.float64).view(1, 3, 1, 1).expand(2, 3, 1, 2)
    target = torch.tensor([[[2, 255]], [[1, 0]]])
    nu = torch.tensor([0.5, 1.0])
    expected = (0.5 * math.log(3) + 1.0 * (math.log(2) + math.log(6))) / 4  # B·H·W = 4, 255 included
    assert adaptive_cross_entropy(logits, target, nu).item() == pytest.approx(expected)


def test_cross_entropy_gradcheck():
    gen = torch.Generator().manual_seed(3)
    logits = torch.randn(2, 4, 3, 3, dtype=torch.float64, generator=gen, requires_grad=True)
    target = torch.randint(0, 4, (2, 3, 3), generator=gen)
    target[0, 0] = 255
    nu = torch.tensor([0.3, 0.9])
    assert torch.autograd.gradcheck(lambda z: adaptive_cross_entropy(z, target, nu), (logits,))


# -- Local POD (``features_distillation``) ------------------------------------------------------
def test_embedding_hand_values():
    x = torch.tensor([[1.0, 2.0], [3.0, 4.0]], dtype=torch.float64).view(1, 1, 2, 2)
    # scale 1: row means (1.5, 3.5), column means (2, 3); scale 2: each 1×1 region twice;
    # scale 4: k = ⌊2/4⌋ = 0 adds nothing
    expected = [1.5, 3.5, 2.0, 3.0, 1, 1, 2, 2, 3, 3, 4, 4]
    assert local_pod_embedding(x).flatten().tolist() == expected


def test_embedding_size_of_a_square_map():
    # 2·C·w per scale and scale s (s² regions of side w/s): 2·C·w·(1 + 2 + 4) = 14·C·w.
    # Not 6·C·w (196 608 for layer 1), a count that does not fit these regions.
    for c, w in ((3, 8), (2, 16)):
        assert local_pod_embedding(torch.randn(2, c, w, w)).shape == (2, 14 * c * w)


def test_pod_hand_value():
    a = torch.tensor([[1.0, 2.0], [3.0, 4.0]], dtype=torch.float64).view(1, 1, 2, 2)
    b = torch.zeros_like(a)
    # Ψ(a²) = [2.5, 12.5, 5, 10, 1, 1, 4, 4, 9, 9, 16, 16], Ψ(b²) = 0
    d = math.sqrt(2.5 ** 2 + 12.5 ** 2 + 5 ** 2 + 10 ** 2 + 2 * (1 + 16 + 81 + 256))
    assert pod_distance(a, b).item() == pytest.approx(d)
    # one map: λ·√(C_cur/C_new)·d / 1, with C_cur = 4, C_new = 1
    assert local_pod([a], [b], num_current=4, num_new=1, factor=0.5).item() == pytest.approx(0.5 * 2 * d)
    assert local_pod([a], [b], 4, 1, 0.5, schedule=False).item() == pytest.approx(0.5 * d)


def test_fold_keeps_old_channels():
    new = torch.arange(5 * 2, dtype=torch.float64).view(1, 5, 1, 2)  # C_cur = 5, C_old = 3
    folded = fold_extra_logits(new, num_old=3)
    assert folded.shape == (1, 3, 1, 2)
    assert torch.equal(folded[:, 1:], new[:, 1:3])
    assert folded[0, 0, 0].tolist() == [0 + 6 + 8, 1 + 7 + 9]  # logits summed, not probabilities


def test_only_the_last_map_gets_the_logits_factor():
    assert pod_factors(6, 0.01, 0.0005) == [0.01] * 5 + [0.0005]
    assert pod_factors(5, 0.001) == [0.001] * 5  # no pod_options: the plain factor everywhere
    gen = torch.Generator().manual_seed(4)
    maps = [torch.randn(2, 3, 4, 4, dtype=torch.float64, generator=gen) for _ in range(2)]
    moved = [m + 1 for m in maps]
    d = [pod_distance(a, b).mean().item() for a, b in zip(maps, moved)]
    w = math.sqrt(5 / 2)
    total = local_pod(maps, moved, num_current=5, num_new=2, factor=0.1, last_factor=0.003).item()
    assert total == pytest.approx((0.1 * d[0] + 0.003 * d[1]) * w / 2)
    # a map with λ = 0 adds nothing but still counts in the 1/L
    assert local_pod(maps, moved, 5, 2, 0.1, 0.0).item() == pytest.approx(0.1 * d[0] * w / 2)


def test_logits_are_folded_before_the_distance():
    gen = torch.Generator().manual_seed(5)
    old = torch.randn(1, 3, 4, 4, dtype=torch.float64, generator=gen)
    new = torch.randn(1, 5, 4, 4, dtype=torch.float64, generator=gen)
    expected = pod_distance(old, fold_extra_logits(new, 3)).item() * math.sqrt(5 / 2)
    assert local_pod([old], [new], 5, 2, factor=1.0).item() == pytest.approx(expected)
    with pytest.raises(ValueError, match="differ"):  # only the last map may differ in channels
        local_pod([old, old], [new, new], 5, 2, factor=1.0)


def test_identical_maps_give_zero_and_zero_gradient():
    gen = torch.Generator().manual_seed(6)
    old = [torch.randn(2, 3, 8, 8, dtype=torch.float64, generator=gen), torch.randn(2, 3, 4, 4, dtype=torch.float64, generator=gen)]
    new = [m.clone().requires_grad_() for m in old]
    loss = local_pod(old, new, num_current=4, num_new=1, factor=0.01, last_factor=0.0005)
    loss.backward()
    assert loss.item() == 0.0
    assert all(torch.equal(m.grad, torch.zeros_like(m)) for m in new)


def test_pod_gradcheck():
    gen = torch.Generator().manual_seed(7)
    old = [torch.randn(2, 2, 4, 4, dtype=torch.float64, generator=gen), torch.randn(2, 3, 4, 4, dtype=torch.float64, generator=gen)]
    new = [torch.randn(2, 2, 4, 4, dtype=torch.float64, generator=gen, requires_grad=True),
           torch.randn(2, 5, 4, 4, dtype=torch.float64, generator=gen, requires_grad=True)]
    assert torch.autograd.gradcheck(lambda a, b: local_pod(old, [a, b], 5, 2, 0.01, 0.0005), tuple(new))


def test_half_precision_maps_are_computed_in_float32():
    big = torch.full((1, 2, 4, 4), 300.0, dtype=torch.float16)  # 300² overflows float16
    loss = local_pod([big], [torch.zeros_like(big)], 3, 1, 1.0)
    assert loss.dtype == torch.float32 and math.isfinite(loss.item())


# -- edge cases of the region slicing -----------------------------------------------------------
def test_rows_past_the_regions_are_ignored():
    gen = torch.Generator().manual_seed(8)
    tall = torch.randn(1, 2, 12, 8, dtype=torch.float64, generator=gen)  # h > w: rows 8.. ignored
    changed = tall.clone()
    changed[..., 8:, :] += 5
    assert torch.equal(local_pod_embedding(tall), local_pod_embedding(changed))
    odd = torch.randn(1, 2, 7, 7, dtype=torch.float64, generator=gen)  # 7 = 4·1 + 3 at scale 4
    changed = odd.clone()
    changed[..., 6:, :] += 5  # past 2·3 at scale 2 and 1·4 at scale 4, but inside scale 1
    diff = local_pod_embedding(odd) - local_pod_embedding(changed)
    assert local_pod_embedding(odd).shape[1] == 2 * 2 * (7 + 4 * 3 + 16 * 1)  # 2·C·s²·k per scale
    assert (diff[:, 2 * 2 * 7:] == 0).all() and (diff[:, :2 * 2 * 7] != 0).any()


def test_tiny_maps_skip_scales_without_regions():
    x = torch.randn(1, 2, 3, 3)  # k = 3, 1, 0 at scales 1, 2, 4
    assert local_pod_embedding(x).shape == (1, 2 * 2 * (3 + 4 * 1))


def test_wide_maps_short_and_empty_regions():
    gen = torch.Generator().manual_seed(9)
    short = torch.randn(1, 2, 7, 8, dtype=torch.float64, generator=gen)
    psi = local_pod_embedding(short)
    # bottom regions are shorter: scale 1 has 7 rows, scale 2 rows 4+3, scale 4 rows 2+2+2+1
    assert psi.shape == (1, 2 * (7 + 8) + 2 * 2 * (4 + 4 + 3 + 4) + 4 * 2 * (3 * (2 + 2) + (1 + 2)))
    assert torch.isfinite(psi).all()
    # the last entries: the column means of the last region (row 6 alone, columns 6-7)
    assert torch.equal(psi[0, -4:], short[0, :, 6, 6:8].flatten())
    with pytest.raises(ValueError, match="empty regions"):
        local_pod_embedding(torch.randn(1, 2, 4, 8))  # scale 4: rows 6-8 do not exist


# -- the whole loss -----------------------------------------------------------------------------
def test_step_loss_is_ce_plus_pod_and_nothing_else():
    gen = torch.Generator().manual_seed(10)
    logits = torch.randn(2, 5, 8, 8, generator=gen, requires_grad=True)
    old_logits = torch.randn(2, 3, 8, 8, generator=gen) * 3
    label = torch.randint(0, 2, (2, 8, 8), generator=gen) * 4
    label[0, 0] = 255
    tau = torch.tensor([0.02, 0.01, 0.03, 0.001, 0.001])
    old_maps = [torch.randn(2, 4, 4, 4, generator=gen), old_logits[..., ::2, ::2]]
    new_maps = [torch.randn(2, 4, 4, 4, generator=gen), logits[..., ::2, ::2]]
    losses = plop_losses(logits, old_logits, label, tau, new_maps, old_maps, 0.01, 0.0005)
    assert set(losses) == {"ce", "pod"}
    u, pred = normalised_entropy(old_logits, 5)
    target, nu = pseudo_labels(label, u, pred, tau, 3)
    assert torch.equal(losses["ce"], adaptive_cross_entropy(logits, target, nu))
    assert torch.equal(losses["pod"], local_pod(old_maps, new_maps, 5, 2, 0.01, 0.0005))
    assert 0 < nu.min() and nu.max() < 1  # some pixels accepted, some rejected
