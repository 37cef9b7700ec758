"""ALIFE's losses against hand-worked values and their closed-form gradients."""

import math

import pytest
import torch
import torch.nn.functional as F

from incseg_cli.losses.alife import (
    ali_loss,
    attention_prototypes,
    centre,
    correlation_scores,
    fid_loss,
    focal_loss,
    kd_loss,
    memory_ce,
    pseudo_labels,
    reg_loss,
    step1_losses,
)

D64 = torch.float64


def _pixels(n_old=3, n_new=2, b=2, h=3, w=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(b, n_old + n_new, h, w, generator=g, dtype=D64)
    old = torch.softmax(torch.randn(b, n_old, h, w, generator=g, dtype=D64), dim=1)  # p^{t-1}
    target = torch.randint(0, n_old + n_new, (b, h, w), generator=g)
    target[target < n_old] = 0  # training targets hold 0, new classes, 255
    target[0, 0, 0] = 255
    target[1, 2, 3] = 0
    target[0, 1, 1] = n_old  # at least one new-class pixel
    return logits, old, target


# -- ALI --------------------------------------------------------------------------------------------
def test_ali_hand_value_one_pixel():
    z = torch.tensor([1.0, 2.0, 0.5], dtype=D64).view(1, 3, 1, 1)  # 2 old classes (bg, 1), 1 new
    p_old = torch.tensor([0.25, 0.75], dtype=D64).view(1, 2, 1, 1)
    y = torch.zeros(1, 1, 1, dtype=torch.int64)
    lse = math.log(math.exp(1.0) + math.exp(2.0) + math.exp(0.5))
    expected = -(0.25 * (1.0 - lse) + 0.75 * (2.0 - lse))
    assert ali_loss(z, p_old, y).item() == pytest.approx(expected, abs=1e-12)


def test_ali_gradient_table_and_properties():
    logits, old, target = _pixels()
    n_old = old.shape[1]
    z = logits.clone().requires_grad_()
    loss = ali_loss(z, old, target)
    loss.backward()
    region = (target == 0).unsqueeze(1)
    n = region.sum()
    p = torch.softmax(logits, 1)
    p_old = old
    expected = p.clone()
    expected[:, :n_old] -= p_old
    expected = torch.where(region, expected / n, torch.zeros_like(expected))
    assert torch.allclose(z.grad, expected, atol=1e-12)
    # sums to zero over classes; new-class gradient > 0 on B; old-class gradient of both signs
    assert torch.allclose(z.grad.sum(1), torch.zeros_like(z.grad.sum(1)), atol=1e-12)
    on_b = z.grad.permute(0, 2, 3, 1)[target == 0]
    assert (on_b[:, n_old:] > 0).all()
    assert (on_b[:, :n_old] > 0).any() and (on_b[:, :n_old] < 0).any()
    # finite differences
    assert torch.autograd.gradcheck(lambda x: ali_loss(x, old, target), (logits.clone().requires_grad_(),))


def test_ali_bound_shift_invariance_region_and_stop_gradient():
    logits, old, target = _pixels(seed=1)
    loss = ali_loss(logits, old, target)
    entropy = -(old * old.log()).sum(1)[target == 0].mean()
    assert loss >= entropy - 1e-12
    assert ali_loss(logits + 3.7, old, target).item() == pytest.approx(loss.item(), abs=1e-10)
    changed = logits.clone()
    changed.permute(0, 2, 3, 1)[target != 0] += 5.0
    assert ali_loss(changed, old, target).item() == pytest.approx(loss.item(), abs=1e-12)
    # the minimum H(p_old) is reached with new mass 0 and the old distribution copied
    at_min = torch.cat([old.log(), torch.full_like(logits[:, :2], -1e4)], 1)
    assert ali_loss(at_min, old, target).item() == pytest.approx(entropy.item(), abs=1e-9)
    old_req = old.clone().requires_grad_()
    z = logits.clone().requires_grad_()
    ali_loss(z, old_req, target).backward()
    assert old_req.grad is None


def test_ali_and_kd_empty_regions_are_zero_not_nan():
    logits, old, _ = _pixels()
    for fn, target in ((ali_loss, torch.full((2, 3, 4), 3)), (kd_loss, torch.zeros(2, 3, 4, dtype=torch.int64))):
        z = logits.clone().requires_grad_()
        loss = fn(z, old, target)
        assert loss.item() == 0.0
        loss.backward()
        assert torch.equal(z.grad, torch.zeros_like(z))


# -- KD ---------------------------------------------------------------------------------------------
def test_kd_hand_value_and_gradient():
    z = torch.tensor([1.0, 2.0, 0.5], dtype=D64).view(1, 3, 1, 1)
    p_old = torch.tensor([0.25, 0.75], dtype=D64).view(1, 2, 1, 1)
    y = torch.full((1, 1, 1), 255)  # the ignore pixels are in KD's region (as coded)
    log_q = [1.0 - math.log(math.exp(1) + math.exp(2)), 2.0 - math.log(math.exp(1) + math.exp(2))]
    expected = -(0.25 * log_q[0] + 0.75 * log_q[1]) / 2
    assert kd_loss(z, p_old, y).item() == pytest.approx(expected, abs=1e-12)

    logits, old, target = _pixels(seed=2)
    n_old = old.shape[1]
    x = logits.clone().requires_grad_()
    kd_loss(x, old, target).backward()
    region = (target != 0).unsqueeze(1)
    q = torch.softmax(logits[:, :n_old], 1)
    expected = torch.zeros_like(logits)
    expected[:, :n_old] = (q - old) / n_old
    expected = torch.where(region, expected / region.sum(), torch.zeros_like(expected))
    assert torch.allclose(x.grad, expected, atol=1e-12)
    assert torch.equal(x.grad[:, n_old:], torch.zeros_like(x.grad[:, n_old:]))
    assert torch.autograd.gradcheck(lambda a: kd_loss(a, old, target), (logits.clone().requires_grad_(),))
    # logits at y == 0 pixels do not matter
    changed = logits.clone()
    changed.permute(0, 2, 3, 1)[target == 0] -= 4.0
    assert kd_loss(changed, old, target).item() == pytest.approx(kd_loss(logits, old, target).item(), abs=1e-12)


def test_step1_losses_equal_the_separate_losses():
    logits, old, target = _pixels(seed=5)
    x = logits.clone().requires_grad_()
    ce, ali, kd = step1_losses(x, old, target)
    (ce + 2 * ali + 3 * kd).backward()
    y = logits.clone().requires_grad_()
    new_pixels = target.masked_fill(target == 0, 255)
    ref_ce = F.cross_entropy(y, new_pixels, ignore_index=255, reduction="sum") / target.numel()  # over ALL pixels
    ref = (ref_ce, ali_loss(y, old, target), kd_loss(y, old, target))
    (ref[0] + 2 * ref[1] + 3 * ref[2]).backward()
    for got, want in zip((ce, ali, kd), ref):
        assert got.item() == pytest.approx(want.item(), abs=1e-12)
    assert torch.allclose(x.grad, y.grad, atol=1e-12)


# -- focal loss, pseudo-labels, memory CE ------------------------------------------------------------
def test_focal_loss_hand_value_normaliser_and_gradient():
    z = torch.tensor([[2.0, 0.0], [0.0, 1.0], [3.0, 3.0]], dtype=D64).T.reshape(1, 2, 1, 3)
    y = torch.tensor([[[0, 0, 255]]])
    p0 = math.exp(2) / (math.exp(2) + 1)
    p1 = 1 / (1 + math.e)
    expected = ((1 - p0) ** 2 * -math.log(p0) + (1 - p1) ** 2 * -math.log(p1) + 0.0) / 3
    assert focal_loss(z, y).item() == pytest.approx(expected, abs=1e-12)
    assert focal_loss(z, y, gamma=0).item() == pytest.approx(F.cross_entropy(z, y, ignore_index=255,
                                                                             reduction="sum").item() / 3)
    logits, _, target = _pixels(seed=3)
    assert torch.autograd.gradcheck(lambda a: focal_loss(a, target), (logits.clone().requires_grad_(),))


def test_pseudo_labels_take_the_old_argmax_only_where_unlabelled():
    _, old, target = _pixels(seed=4)
    out = pseudo_labels(target, old)
    argmax = old.argmax(1)
    assert torch.equal(out[target == 0], argmax[target == 0])
    assert torch.equal(out[target != 0], target[target != 0])
    assert out[target == 0].max() < old.shape[1]


def test_memory_ce_hand_value_and_empty():
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 0.0, 1.0]], dtype=D64)
    labels = torch.tensor([0, 2])
    expected = (-math.log(math.exp(2) / (math.exp(2) + 2)) - math.log(math.e / (math.e + 2))) / 2
    assert memory_ce(logits, labels).item() == pytest.approx(expected, abs=1e-12)
    empty = torch.zeros(0, 3, requires_grad=True)
    loss = memory_ce(empty, torch.zeros(0, dtype=torch.int64))
    assert loss.item() == 0.0
    loss.backward()


# -- rotation training ----------------------------------------------------------------------------------
def test_correlation_scores_by_hand_and_chunking():
    f = torch.tensor([[1.0, 0.0], [0.0, 2.0], [0.0, 0.0]])
    memory = torch.tensor([[1.0, 1.0], [1.0, 0.0], [-1.0, 0.0]])  # class 0: two rows, class 1: one
    v = correlation_scores(f, memory, [2, 1])
    s = 1 / math.sqrt(2)
    expected = torch.tensor([[s + 1.0, s + 0.0, 0.0], [0.0, 0.0, 0.0]])
    assert torch.allclose(v, expected, atol=1e-6)
    g = torch.Generator().manual_seed(0)
    f = torch.rand(50, 8, generator=g)
    memory = torch.rand(37, 8, generator=g)
    counts = [10, 20, 7]
    whole = correlation_scores(f, memory, counts, chunk=1000)
    assert torch.allclose(correlation_scores(f, memory, counts, chunk=3), whole, atol=1e-5)
    assert (whole >= 0).all() and (whole <= torch.tensor(counts).unsqueeze(1).float() + 1e-5).all()


def test_attention_prototypes_and_centring():
    g = torch.Generator().manual_seed(1)
    scores = torch.rand(4, 30, generator=g) * 5
    f_prev = torch.rand(30, 6, generator=g)
    f_curr = torch.rand(30, 6, generator=g)
    r_prev, r_curr = attention_prototypes(scores, f_prev, f_curr, tau=10.0)
    sigma = torch.softmax(10 * scores, 1)
    assert torch.allclose(sigma.sum(1), torch.ones(4))
    assert torch.allclose(r_prev, sigma @ f_prev) and torch.allclose(r_curr, sigma @ f_curr)
    assert (r_prev >= 0).all() and (r_prev <= f_prev.max(0).values + 1e-6).all()  # convex hull
    centred, mu = centre(r_prev)
    assert torch.allclose(centred.sum(0), torch.zeros(6), atol=1e-6)
    assert torch.allclose(centred + mu, r_prev)


def test_fid_and_reg_by_hand_and_gradients():
    a = torch.tensor([[1.0, 0.0], [0.0, 2.0]], dtype=D64)
    b = torch.tensor([[3.0, 0.0], [1.0, 0.0]], dtype=D64)
    assert fid_loss(a, b).item() == pytest.approx((0.0 + 1.0) / 2)
    assert fid_loss(a, a).item() == pytest.approx(0.0, abs=1e-12)  # FEprev ≡ FEcurr and R = I: minimum
    weight = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], dtype=D64)
    bias = torch.tensor([0.0, 0.5, -1.0], dtype=D64)
    offset = torch.tensor([0.5, 0.0], dtype=D64)
    channels = torch.tensor([0, 2])
    logits = (a + offset) @ weight.T + bias
    expected = -(torch.log_softmax(logits, 1)[0, 0] + torch.log_softmax(logits, 1)[1, 2]) / 2
    assert reg_loss(a, offset, weight, bias, channels).item() == pytest.approx(expected.item(), abs=1e-12)
    x = torch.randn(3, 4, dtype=D64, requires_grad=True)
    target = torch.randn(3, 4, dtype=D64)
    w, bb = torch.randn(5, 4, dtype=D64), torch.randn(5, dtype=D64)
    mu = torch.randn(4, dtype=D64)
    ch = torch.tensor([0, 3, 4])
    assert torch.autograd.gradcheck(lambda r: 0.9 * fid_loss(r, target) + 0.1 * reg_loss(r, mu, w, bb, ch), (x,))
