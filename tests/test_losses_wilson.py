"""WILSON's losses and pseudo-labels against hand-worked values, the official code's properties and autograd."""

import math

import pytest
import torch
import torch.nn.functional as F

from helpers import wilson_step
from incseg_cli.losses import wilson as L


def _bce(x: float, t: float) -> float:
    """BCE-with-logits of one logit, by hand."""
    s = 1 / (1 + math.exp(-x))
    return -(t * math.log(s) + (1 - t) * math.log(1 - s))


# -- nGWP + focal, L_CLS --------------------------------------------------------------------------
def test_ngwp_focal_on_uniform_logits():
    # z ≡ k over C channels and N pixels: m = 1/C.
    k, c, n = 0.7, 5, 12
    z = torch.full((2, c, 3, 4), k, dtype=torch.float64)
    scores = L.ngwp_focal_scores(z)
    expected = k * (n / c) / (1 + n / c) + (1 - 1 / c) ** 3 * math.log(0.01 + 1 / c)
    assert torch.allclose(scores, torch.full((2, c), expected, dtype=torch.float64))


def test_ngwp_focal_by_hand_on_two_pixels():
    # two pixels, two channels: softmax by hand, eps 1, λ 0.01, γ 3
    z = torch.tensor([[[[2.0, 0.0]], [[0.0, 0.0]]]], dtype=torch.float64)  # [1, 2, 1, 2]
    e = math.exp(2) / (math.exp(2) + 1)
    m0, m1 = [e, 0.5], [1 - e, 0.5]
    ngwp0 = (2 * m0[0] + 0 * m0[1]) / (1 + sum(m0))
    ngwp1 = 0.0
    foc = lambda m: (1 - sum(m) / 2) ** 3 * math.log(0.01 + sum(m) / 2)
    scores = L.ngwp_focal_scores(z)[0]
    assert scores[0].item() == pytest.approx(ngwp0 + foc(m0), abs=1e-12)
    assert scores[1].item() == pytest.approx(ngwp1 + foc(m1), abs=1e-12)


def test_cls_loss_uses_only_new_channels_and_relaxed_uses_all():
    torch.manual_seed(0)
    z = torch.randn(2, 6, 3, 3, dtype=torch.float64)  # C = 6: bg, old 1-3, new 4-5
    y = torch.tensor([[0, 0, 0, 1, 0], [0, 0, 0, 1, 1]], dtype=torch.float64)
    scores = L.ngwp_focal_scores(z)
    expected = sum(_bce(scores[b, c].item(), y[b, c - 1].item()) for b in range(2) for c in (4, 5)) / 4
    assert L.cls_loss(z, y, n_new=2).item() == pytest.approx(expected, abs=1e-12)
    y_relaxed = torch.tensor([[1, 0, 1, 1, 0], [0, 1, 0, 1, 1]], dtype=torch.float64)
    expected = sum(_bce(scores[b, c].item(), y_relaxed[b, c - 1].item()) for b in range(2) for c in range(1, 6)) / 10
    assert L.cls_loss(z, y_relaxed, n_new=2, relaxed=True).item() == pytest.approx(expected, abs=1e-12)
    # default masking ignores whatever the old columns say
    assert L.cls_loss(z, y_relaxed, n_new=2).item() == pytest.approx(L.cls_loss(z, y, n_new=2).item())


def test_cls_loss_gradient_reaches_background_only_through_the_softmax():
    # the background score is not in L_CLS; z_0 acts only through m.
    torch.manual_seed(1)
    z = torch.randn(2, 4, 2, 2, dtype=torch.float64, requires_grad=True)
    y = torch.tensor([[0, 0, 1], [0, 1, 0]], dtype=torch.float64)
    L.cls_loss(z, y, n_new=2).backward()
    assert z.grad[:, 0].abs().sum() > 0

    def by_hand(t):  # only the new channels' own values, every channel through the softmax
        m = torch.softmax(t, 1)[:, -2:]
        mean = m.mean((2, 3))
        scores = (t[:, -2:] * m).sum((2, 3)) / (1 + m.sum((2, 3))) + (1 - mean) ** 3 * torch.log(0.01 + mean)
        return F.binary_cross_entropy_with_logits(scores, y[:, -2:])

    zc = z.detach().clone().requires_grad_(True)
    by_hand(zc).backward()
    assert torch.allclose(z.grad, zc.grad, atol=1e-12)
    assert torch.autograd.gradcheck(lambda t: L.cls_loss(t, y, n_new=2), (z.detach().requires_grad_(True),))


# -- L_LOC, L_ENC ----------------------------------------------------------------------------------
def test_loc_loss_by_hand_and_zero_gradient_on_new_channels():
    z = torch.tensor([[[[0.5]], [[-1.0]], [[3.0]]]], dtype=torch.float64, requires_grad=True)  # C = 3
    s = torch.tensor([[[[2.0]], [[0.0]]]], dtype=torch.float64)  # C_old = 2
    sig = [1 / (1 + math.exp(-2.0)), 0.5]
    expected = (_bce(0.5, sig[0]) + _bce(-1.0, sig[1])) / 2
    loss = L.loc_loss(z, s)
    assert loss.item() == pytest.approx(expected, abs=1e-12)
    loss.backward()
    assert z.grad[0, 2].item() == 0.0  # no gradient to the new channels
    # d/dz BCE(z, t) = σ(z) − t, over the mean of 2 elements
    assert z.grad[0, 0].item() == pytest.approx((1 / (1 + math.exp(-0.5)) - sig[0]) / 2)
    zz = torch.randn(2, 5, 3, 3, dtype=torch.float64, requires_grad=True)
    ss = torch.randn(2, 3, 3, 3, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda t: L.loc_loss(t, ss), (zz,))


def test_enc_loss_is_the_mean_squared_difference_and_old_side_is_detached():
    a = torch.tensor([[[[1.0, 2.0]], [[3.0, 4.0]]]], dtype=torch.float64, requires_grad=True)
    b = torch.tensor([[[[0.0, 2.0]], [[5.0, 4.0]]]], dtype=torch.float64, requires_grad=True)
    loss = L.enc_loss(a, b)
    assert loss.item() == pytest.approx((1 + 0 + 4 + 0) / 4)
    loss.backward()
    assert b.grad is None
    assert torch.allclose(a.grad, 2 * (a - b).detach() / 4)


# -- masking and seeds ------------------------------------------------------------------------------
def _softmax_map(seed: int, b: int = 2, c: int = 6, h: int = 4, w: int = 5) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.softmax(3 * torch.randn(b, c, h, w, generator=g, dtype=torch.float64), 1)


def test_mask_classes_keeps_background_and_labelled_classes_only():
    m = _softmax_map(0)
    y = torch.tensor([[0, 0, 1, 1, 0], [0, 0, 0, 0, 1]], dtype=torch.float64)
    a = L.mask_classes(m, y)
    assert torch.equal(a[:, 0], m[:, 0])
    assert torch.equal(a[0, 3], m[0, 3]) and torch.equal(a[0, 4], m[0, 4])
    assert a[0, [1, 2, 5]].abs().sum() == 0 and a[1, 1:5].abs().sum() == 0
    total = a.sum(1)  # ≤ 1, equal to 1 only where nothing was zeroed
    assert (total <= 1 + 1e-12).all() and (total < 1).all()
    assert torch.allclose(L.mask_classes(m, torch.ones(2, 5, dtype=torch.float64)).sum(1), torch.ones(2, 4, 5, dtype=torch.float64))


def test_seed_masks_by_hand():
    # one image, 3 channels, 4 pixels
    r = torch.tensor([[[0.80, 0.50, 0.10, 0.05],   # bg: threshold max(0.2, 0.7·0.8 = 0.56)
                       [0.10, 0.40, 0.85, 0.30],   # fg: max(0.2, 0.6·0.85 = 0.51)
                       [0.10, 0.10, 0.05, 0.15]]], dtype=torch.float64).view(1, 3, 1, 4)  # fg: max(0.2, 0.09) = 0.2
    g = L.seed_masks(r)[0, :, 0]
    assert g.tolist() == [[1, 0, 0, 0], [0, 0, 1, 0], [0, 0, 0, 0]]
    # two channels firing on one pixel clear it
    r2 = torch.tensor([[[0.9, 0.9]], [[0.9, 0.1]]], dtype=torch.float64).view(1, 2, 1, 2)
    assert L.seed_masks(r2)[0, :, 0].tolist() == [[0, 1], [0, 0]]


def test_seed_oracles_on_random_maps():
    m = _softmax_map(1)
    y = torch.tensor([[0, 0, 1, 1, 0], [0, 0, 0, 0, 1]], dtype=torch.float64)
    r = L.mask_classes(m, y)
    g = L.seed_masks(r)
    assert (g.sum(1) <= 1).all()  # at most one class per pixel
    assert g[0, [1, 2, 5]].sum() == 0 and g[1, 1:5].sum() == 0  # absent classes never seed
    peak = r.flatten(2).amax(2)
    for b in range(2):
        for c in range(6):
            cut = max(0.2, (0.7 if c == 0 else 0.6) * peak[b, c].item())
            assert (r[b, c][g[b, c] > 0] > cut).all()


# -- L_SSS ------------------------------------------------------------------------------------------
def test_sss_loss_by_hand():
    # one image, C = 3, 4 pixels; seeds: pixels 0,1 bg, pixel 2 class 2, pixel 3 unseeded
    seeds = torch.zeros(1, 3, 1, 4, dtype=torch.float64)
    seeds[0, 0, 0, 0] = seeds[0, 0, 0, 1] = seeds[0, 2, 0, 2] = 1
    z = torch.tensor([[[[1.0, 0.0, 0.5, 2.0]], [[0.0, 1.0, 0.0, 0.0]], [[0.0, 0.0, 2.0, 1.0]]]], dtype=torch.float64)
    y = torch.tensor([[0, 1]], dtype=torch.float64)  # class 2 labelled: 1 label + bg = 2 seeded channels
    # N_0 = 2, N_2 = 1, N = 3: w_0 = 1/4, w_2 = 2/4
    logp = torch.log_softmax(z, 1)[0, :, 0]
    expected = (0.25 * -logp[0, 0] + 0.25 * -logp[0, 1] + 0.5 * -logp[2, 2] + 0.0) / 4
    assert L.sss_loss(z, seeds, y).item() == pytest.approx(expected.item(), abs=1e-12)
    # gating: the label says classes 1 and 2, the seeds hold only 2 → the image does not count
    assert L.sss_loss(z, seeds, torch.tensor([[1, 1]], dtype=torch.float64)).item() == 0.0
    # the batch mean is over all images, gated ones included
    z2, s2 = torch.cat([z, z]), torch.cat([seeds, seeds])
    y2 = torch.tensor([[0, 1], [1, 1]], dtype=torch.float64)
    assert L.sss_loss(z2, s2, y2).item() == pytest.approx(expected.item() / 2, abs=1e-12)


def test_sss_loss_gradient():
    m = _softmax_map(2)
    y = torch.tensor([[0, 0, 1, 1, 0], [0, 0, 0, 0, 1]], dtype=torch.float64)
    seeds = L.seed_masks(L.mask_classes(m, y))
    z = torch.randn(2, 6, 4, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: L.sss_loss(t, seeds, y), (z,))


# -- q̂ and L_SEG ------------------------------------------------------------------------------------
N_OLD = 4  # bg + old 1..3; new 4, 5


def _case(seed: int):
    m = _softmax_map(seed)
    g = torch.Generator().manual_seed(seed + 100)
    s = 2 * torch.randn(2, N_OLD, 4, 5, generator=g, dtype=torch.float64)
    y = torch.tensor([[0, 0, 0, 1, 0], [0, 0, 0, 1, 1]], dtype=torch.float64)
    return m, s, y, L.mask_classes(m, y)


def test_smoothed_labels_by_hand():
    a = torch.tensor([0.2, 0.5, 0.0, 0.3], dtype=torch.float64).view(1, 4, 1, 1)
    q = L.smoothed_labels(a, 0.5)
    assert q.flatten().tolist() == pytest.approx([0.1, 0.75, 0.0, 0.15])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_target_oracles(seed):
    m, s, y, a = _case(seed)
    sig = torch.sigmoid(s)
    for alpha in (0.0, 0.3, 0.5, 1.0):
        q = L.smoothed_labels(a, alpha)
        t = L.seg_target(q, s)
        assert torch.equal(t[:, 1:N_OLD], sig[:, 1:])  # old classes: the old model's σ
        assert torch.equal(t[:, 0], torch.minimum(sig[:, 0], q[:, 0]))  # background: the min
        assert (t[:, 0] <= sig[:, 0]).all() and (t[:, 0] <= q[:, 0]).all()
        assert t[0, 5].abs().sum() == 0  # class 5 is not in image 0's label
        assert ((q >= 0) & (q <= 1)).all()
    # α = 0 is the masked softmax, and every image passes the gate
    q0 = L.smoothed_labels(a, 0.0)
    assert torch.equal(q0, a)
    assert L.seg_image_gate(q0, y, N_OLD).tolist() == [1.0, 1.0]
    # α = 1: binary background and new channels, one winner per pixel
    q1 = L.smoothed_labels(a, 1.0)
    hard = torch.cat([q1[:, :1], q1[:, N_OLD:]], 1)
    assert set(hard.unique().tolist()) <= {0.0, 1.0}
    assert (hard.sum(1) == 1).all()
    # 0 < α < 1: q ≥ α where the channel wins
    q5 = L.smoothed_labels(a, 0.5)
    win = F.one_hot(a.argmax(1), a.shape[1]).permute(0, 3, 1, 2).bool()
    assert (q5[win] >= 0.5).all()


def test_seg_image_gate_by_hand():
    y = torch.tensor([[0, 0, 0, 1, 1]], dtype=torch.float64)
    q = torch.zeros(1, 6, 1, 2, dtype=torch.float64)
    q[0, 4, 0, 0] = 1.0
    assert L.seg_image_gate(q, y, N_OLD).item() == 0.0  # class 5 labelled but never wins
    q[0, 5, 0, 1] = 1.0
    assert L.seg_image_gate(q, y, N_OLD).item() == 1.0
    q[0, 1, 0, 1] = 1.0  # old channels do not enter the gate
    assert L.seg_image_gate(q, y, N_OLD).item() == 1.0
    assert L.seg_image_gate(q, torch.tensor([[0, 0, 0, 1, 0]], dtype=torch.float64), N_OLD).item() == 0.0


def test_seg_loss_by_hand_and_gradient():
    p = torch.tensor([[[[1.0, -1.0]], [[0.0, 2.0]]], [[[0.5, 0.5]], [[0.0, 0.0]]]], dtype=torch.float64)
    t = torch.tensor([[[[1.0, 0.0]], [[0.5, 1.0]]], [[[0.0, 0.0]], [[1.0, 1.0]]]], dtype=torch.float64)
    img0 = ((_bce(1, 1) + _bce(0, 0.5)) + (_bce(-1, 0) + _bce(2, 1))) / 2
    img1 = ((_bce(0.5, 0) + _bce(0, 1)) * 2) / 2
    gate = torch.tensor([1.0, 0.0], dtype=torch.float64)
    assert L.seg_loss(p, t, gate).item() == pytest.approx(img0 / (1 + 1e-5), abs=1e-12)
    both = torch.ones(2, dtype=torch.float64)
    assert L.seg_loss(p, t, both).item() == pytest.approx((img0 + img1) / (2 + 1e-5), abs=1e-12)
    assert L.seg_loss(p, t, torch.zeros(2, dtype=torch.float64)).item() == 0.0
    pp = torch.randn(2, 6, 3, 3, dtype=torch.float64, requires_grad=True)
    tt = torch.rand(2, 6, 3, 3, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda x: L.seg_loss(x, tt, gate), (pp,))


# -- the method's use of them (weight copy, warm-up) ---------------------------------------------------
def _wilson(pseudo_epochs: int = 1):
    labels = torch.zeros(6, 20)
    labels[torch.arange(6), 10 + torch.arange(6) % 3] = 1.0
    labels[0, 15] = 1.0
    method, model, old = wilson_step(labels, pseudo_epochs)
    batch = {"image": torch.randn(4, 3, 32, 32), "index": torch.tensor([3, 0, 5, 1])}
    return method, model, old, batch


def test_new_model_starts_as_the_old_one():
    method, model, old, batch = _wilson()
    model.eval()
    with torch.no_grad():
        new, before = model(batch["image"], upsample=False), old(batch["image"], upsample=False)
    assert torch.equal(new["logits"][:, :11], before["logits"])
    assert torch.equal(new["body"], before["body"])


def test_warm_up_trains_encoder_and_localizer_but_not_the_head():
    from incseg_cli.methods.base import StepInfo

    method, model, _, batch = _wilson(pseudo_epochs=1)
    method.train_mode(model)
    losses = method.losses(model, batch, StepInfo(epoch=0, iteration=0, iters_per_epoch=10))
    assert set(losses) == {"cls", "loc", "enc", "seg", "sss"}
    assert losses["seg"].item() == 0.0 and losses["sss"].item() == 0.0
    assert losses["enc"].item() > 0  # BN in train mode vs the old model's running stats
    sum(losses.values()).backward()
    head = [*model.aspp.parameters(), *model.decoder.parameters(), *model.classifier.parameters()]
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in head)
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.backbone.parameters())
    assert all(p.grad is not None for p in method.localizer.parameters())
    groups = method.param_groups(model, 1e-3)
    assert [g["name"] for g in groups] == ["body", "head", "localizer"]
    assert [g["lr"] for g in groups] == [1e-3, 1e-2, 1e-2]
    assert method.constant_lr_epochs == 1


def test_after_warm_up_every_loss_is_on_and_the_head_learns():
    from incseg_cli.methods.base import StepInfo

    method, model, _, batch = _wilson(pseudo_epochs=1)
    method.train_mode(model)
    losses = method.losses(model, batch, StepInfo(epoch=1, iteration=10, iters_per_epoch=10))
    assert all(torch.isfinite(v) for v in losses.values())
    assert losses["seg"].item() > 0 and losses["sss"].item() >= 0
    assert method.localizer.training  # the eval-mode pass puts it back
    sum(losses.values()).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.classifier.parameters())
    # the pseudo-labels themselves: q̂ from the image's labels, looked up by batch index
    with torch.no_grad():
        x = batch["image"]
        out, old = model(x, upsample=False), method.old_model(x, upsample=False)
        y = method.labels[batch["index"]]
        target, gate, seeds = method.pseudo_labels(x, out["body"], old["logits"], y)
    assert torch.equal(target[:, 1:11], torch.sigmoid(old["logits"][:, 1:]))
    absent = (y[:, 10:] == 0)
    assert (target[:, 11:].flatten(2).sum(2)[absent] == 0).all()
    assert (seeds[:, 11:].flatten(2).sum(2)[absent] == 0).all()


def test_label_matrix_masks_old_and_future_classes():
    from incseg_cli.methods.wilson import label_matrix
    from incseg_cli.tasks import get_task

    task = get_task("voc", "10-5-5-ov")
    table = {"a": [0, 3, 12], "b": [11, 18], "c": [15, 16]}
    labels, relaxed = label_matrix(table, ["a", "b", "c"], task, 1, allow_relaxed=False)
    assert not relaxed and labels.shape == (3, 15)
    assert labels.nonzero().tolist() == [[0, 11], [1, 10], [2, 14]]  # column k = class k+1; 16, 18 are future
    labels, relaxed = label_matrix(table, ["a", "b", "c"], task, 1)
    assert relaxed and labels.nonzero().tolist() == [[0, 2], [0, 11], [1, 10], [2, 14]]
    # COCO-to-VOC: columns follow the model's class order, not the COCO ids
    coco = get_task("coco", "coco-voc")
    labels, _ = label_matrix({"x": [1, 72]}, ["x"], coco, 1, allow_relaxed=False)
    assert labels.nonzero()[:, 1].tolist() == [coco.model_index(1) - 1, coco.model_index(72) - 1] == [60, 79]


def _warm_up(tmp_path, compiled: bool, device: torch.device) -> tuple[list, list, list]:
    """Two warm-up iterations of the training loop (SGD, momentum, weight decay): the head
    before, after, and its gradients as the optimiser saw them."""
    from incseg_cli.engine.optim import PolyLR, build_optimizer
    from incseg_cli.engine.sampler import EpochBatchSampler
    from incseg_cli.engine.speed import compile_model
    from incseg_cli.engine.trainer import Trainer

    method, model, _, batch = _wilson(pseudo_epochs=1)
    model.to(device)
    method.to(device)
    optimizer = build_optimizer(method.param_groups(model, 1e-3), "sgd", 1e-3, 1e-2, 0.9)
    trainer = Trainer(model=compile_model(model) if compiled else model, method=method, loader=[],
                      sampler=EpochBatchSampler(6, 4, 0), optimizer=optimizer, scheduler=PolyLR(optimizer, 10),
                      epochs=2, device=device, last_path=tmp_path / "last.pt", fingerprint="warm-up")
    head = [*model.aspp.parameters(), *model.decoder.parameters(), *model.classifier.parameters()]
    before = [p.detach().clone() for p in head]
    seen: list = []
    step = optimizer.step

    def record_and_step(*args, **kwargs):
        seen.append([p.grad for p in head])
        return step(*args, **kwargs)

    optimizer.step = record_and_step
    method.train_mode(model)
    for _ in range(2):
        trainer.train_step(batch)
        trainer.iteration += 1
    return before, [p.detach().clone() for p in head], seen


@pytest.mark.parametrize("emulated", [False, True], ids=["cpu", "emulated-cuda"])
def test_compiled_warm_up_leaves_the_head_as_eager_does(tmp_path, monkeypatch, emulate_cuda, emulated):
    """torch.compile hands back zero gradients for the head's parameters where eager autograd
    leaves None; SGD's weight decay and momentum would then move a head that eager training
    leaves alone. The loop sets them back to None (``Method.idle_parameters``)."""
    monkeypatch.setenv("INCSEG_COMPILE_BACKEND", "aot_eager")  # AOTAutograd's graphs, no C++ build
    device = torch.device("cpu")
    if emulated:
        emulate_cuda(1)
        device = torch.device("cuda", 0)
    for compiled in (False, True):
        torch._dynamo.reset()
        before, after, grads = _warm_up(tmp_path, compiled, device)
        assert all(torch.equal(a, b) for a, b in zip(before, after)), compiled
        assert all(g is None for step in grads for g in step), compiled
