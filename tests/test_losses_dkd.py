"""DKD's losses, decision rule, head initialisation, schedule and memory selection, against
hand-worked values and gradients (Baek et al., NeurIPS 2022; cvlab-yonsei/DKD)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from incseg_cli.engine.optim import PolyLR
from incseg_cli.errors import UsageError
from incseg_cli.losses import dkd as L
from incseg_cli.models.decision import decide, sigmoid_decision
from incseg_cli.models.deeplab import IncrementalClassifier, IncrementalDeepLab, ModelSpec
from incseg_cli.replay import ReplayMemory, select_memory

LN2 = math.log(2)


def test_bce_hand_worked_values_and_void_is_a_negative():
    # one new class (channel 1), n_old = 0, a 1x1x2 map: a positive pixel and a void one
    logits = torch.zeros(1, 2, 1, 2)
    target = torch.tensor([[[1, 255]]])
    per_class = L.mbce(logits, target, 0, pos_weight=2.0)
    # x = 0, y = 1, w = 2: 2 ln 2; x = 0, y = 0 (255 counts as a negative): ln 2; the mean of both
    assert per_class.shape == (1,)
    assert per_class.item() == pytest.approx((2 * LN2 + LN2) / 2, abs=1e-7)
    assert L.mbce(torch.zeros(1, 2, 1, 1), torch.tensor([[[1]]]), 0, 2.0).item() == pytest.approx(1.3862944, abs=1e-7)
    assert L.mbce(torch.zeros(1, 2, 1, 1), torch.tensor([[[0]]]), 0, 2.0).item() == pytest.approx(0.6931472, abs=1e-7)


def test_bce_all_void_is_the_softplus_with_its_gradient_on_the_new_channels_only():
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 3, 4, dtype=torch.float64, requires_grad=True)
    target = torch.full((2, 3, 4), 255)
    n_old = 2  # channels 0 (aux), 1-2 old, 3-4 new
    total = L.mbce(logits, target, n_old, 3.0).sum()
    expected = torch.nn.functional.softplus(logits[:, 3:]).mean(dim=(0, 2, 3)).sum()
    assert total.item() == pytest.approx(expected.item(), rel=1e-12)
    total.backward()
    grad = logits.grad
    assert torch.all(grad[:, :3] == 0)
    assert torch.allclose(grad[:, 3:], torch.sigmoid(logits[:, 3:].detach()) / (2 * 3 * 4))


def test_bce_absent_new_class_has_all_zero_target():
    targets = L.new_class_targets(torch.tensor([[[0, 3, 255]]]), 3, 2)  # classes 3 (present) and 4 (absent)
    assert targets.shape == (1, 2, 1, 3)
    assert targets[0, 0, 0].tolist() == [0.0, 1.0, 0.0] and targets[0, 1, 0].tolist() == [0.0, 0.0, 0.0]


def test_kd_skips_the_aux_and_new_channels_and_identical_logits_give_the_entropy():
    torch.manual_seed(1)
    old = torch.randn(2, 4, 3, 3, dtype=torch.float64)  # aux + 3 old
    new = torch.cat([old, torch.randn(2, 2, 3, 3, dtype=torch.float64)], 1).requires_grad_(True)
    per_class = L.kd(new, old, 3)
    p = torch.sigmoid(old[:, 1:])
    entropy = -(p * p.log() + (1 - p) * (1 - p).log()).mean(dim=(0, 2, 3))
    assert torch.allclose(per_class, entropy)
    per_class.sum().backward()
    assert torch.all(new.grad == 0)  # at the teacher: zero gradient, and none on aux or new channels
    changed = new.detach().clone()
    changed[:, 1:4] += 1.0
    changed.requires_grad_(True)
    L.kd(changed, old, 3).sum().backward()
    assert torch.all(changed.grad[:, 0] == 0) and torch.all(changed.grad[:, 4:] == 0)
    assert torch.all(changed.grad[:, 1:4] > 0)


def test_kd_gradcheck():
    torch.manual_seed(2)
    old = torch.randn(1, 3, 2, 2, dtype=torch.float64)
    new = torch.randn(1, 4, 2, 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: L.kd(x, old, 2).sum(), (new,))
    target = torch.tensor([[[0, 3], [255, 3]]])
    assert torch.autograd.gradcheck(lambda x: L.mbce(x, target, 2, 2.0).sum(), (new,))


def _classifier(head_sizes: list[int], seed: int = 0) -> IncrementalClassifier:
    torch.manual_seed(seed)
    clf = IncrementalClassifier(6, head_sizes).double()
    return clf


def test_decomposition_adds_up_to_the_logits_and_splits_signs():
    clf = _classifier([4, 2])
    features = torch.rand(2, 6, 3, 3, dtype=torch.float64)  # non-negative, as after ReLU
    pos, neg = clf.decomposed(features)
    bias = torch.cat([h.bias for h in clf.heads])[1:].view(1, -1, 1, 1)
    logits = clf(features, aux_row=True)
    assert torch.allclose(pos + neg + bias, logits[:, 1:])
    assert torch.all(pos >= 0) and torch.all(neg <= 0)


def test_decomposed_gradient_reaches_only_weights_of_its_sign_never_bias_row0_or_new_head():
    clf = _classifier([4, 2])
    with torch.no_grad():
        clf.heads[0].weight[2, 1] = 0.0  # an entry exactly 0 gets no gradient from either part
    features = torch.rand(2, 6, 3, 3, dtype=torch.float64)
    old_pos = torch.randn(2, 3, 3, 3, dtype=torch.float64)
    pos, neg = clf.decomposed(features)
    L.decomposed_kd(pos, old_pos, 3).sum().backward()
    w, g = clf.heads[0].weight.detach(), clf.heads[0].weight.grad
    assert torch.all(g[0] == 0)  # row 0: the aux classifier
    assert torch.all(g[1:][w[1:] <= 0] == 0) and torch.any(g[1:][w[1:] > 0] != 0)
    assert clf.heads[0].bias.grad is None  # no bias in the decomposition
    assert torch.all(clf.heads[1].weight.grad == 0)  # the new head is outside [:, :n_old]
    clf.zero_grad(set_to_none=True)
    pos, neg = clf.decomposed(features)
    L.decomposed_kd(neg, old_pos, 3).sum().backward()
    g = clf.heads[0].weight.grad
    assert torch.all(g[1:][w[1:] >= 0] == 0) and torch.any(g[1:][w[1:] < 0] != 0)


def test_ac_reaches_only_the_aux_row_and_a_zero_aux_logit_gives_ln2():
    clf = _classifier([4, 2])
    features = torch.rand(1, 6, 2, 2, dtype=torch.float64, requires_grad=True)
    logits = clf(features, aux_row=True)
    loss = L.ac(logits)
    loss.backward()
    assert torch.all(features.grad == 0)  # detached input
    g = clf.heads[0].weight.grad
    assert torch.all(g[1:] == 0) and torch.any(g[0] != 0) and torch.all(clf.heads[1].weight.grad == 0)
    assert L.ac(torch.zeros(2, 3, 4, 4)).item() == pytest.approx(LN2, abs=1e-7)


def test_aux_init_makes_every_new_logit_equal_the_aux_logit_and_keeps_old_rows():
    clf = _classifier([4])
    before = [p.detach().clone() for p in clf.heads[0].parameters()]
    clf.add_head(3, init="aux")
    features = torch.randn(2, 6, 5, 5, dtype=torch.float64)
    logits = clf(features, aux_row=True)
    for c in range(4, 7):
        assert torch.equal(logits[:, c], logits[:, 0])
    assert all(torch.equal(a, b) for a, b in zip(before, clf.heads[0].parameters()))


def test_total_is_the_weighted_class_sums_and_finite_on_a_memory_like_batch():
    torch.manual_seed(3)
    b, h, w, n_old, n_new = 2, 4, 4, 3, 2
    logits = torch.randn(b, 1 + n_old + n_new, h, w, dtype=torch.float64)
    old_logits = torch.randn(b, 1 + n_old, h, w, dtype=torch.float64)
    pos, neg = torch.rand(b, n_old + n_new, 2, 2, dtype=torch.float64), -torch.rand(b, n_old + n_new, 2, 2, dtype=torch.float64)
    old_pos, old_neg = torch.rand(b, n_old, 2, 2, dtype=torch.float64), -torch.rand(b, n_old, 2, 2, dtype=torch.float64)
    target = torch.randint(0, 1 + n_old + n_new, (b, h, w))
    target[0, 0] = 255
    terms = L.step_losses(logits, old_logits, pos, old_pos, neg, old_neg, target, 1.0)
    expected = (L.mbce(logits, target, n_old, 1.0).sum() + 5 * L.kd(logits, old_logits, n_old).sum()
                + 5 * L.decomposed_kd(pos, old_pos, n_old).sum() + 5 * L.decomposed_kd(neg, old_neg, n_old).sum()
                + L.ac(logits))
    assert set(terms) == {"mbce", "kd", "dkd_pos", "dkd_neg", "ac"}
    assert sum(terms.values()).item() == pytest.approx(expected.item(), rel=1e-12)
    memory_like = torch.where(torch.rand(b, h, w) < 0.5, 0, 255)
    assert all(torch.isfinite(v) for v in L.step_losses(logits, old_logits, pos, old_pos, neg, old_neg,
                                                        memory_like, 1.0).values())


def test_total_gradient_holding_the_aux_rows_input_fixed():
    """The finite difference of the total over the features must hold row 0's input fixed:
    the aux row reads the features detached, so the analytic gradient is not the derivative
    of the value through that path."""
    clf = _classifier([3, 2])
    old_clf = _classifier([3], seed=4)
    features = torch.rand(1, 6, 2, 2, dtype=torch.float64)
    fixed = features.clone()
    target = torch.tensor([[[0, 3], [4, 255]]])

    def total(f: torch.Tensor) -> torch.Tensor:
        first = clf.heads[0]
        aux = torch.nn.functional.conv2d(fixed, first.weight[:1], first.bias[:1])  # row 0's input held fixed
        rest = torch.nn.functional.conv2d(f, first.weight[1:], first.bias[1:])
        logits = torch.cat([aux, rest, clf.heads[1](f)], 1)
        pos, neg = clf.decomposed(f)
        with torch.no_grad():
            old_logits = old_clf(fixed, aux_row=True)
            old_pos, old_neg = old_clf.decomposed(fixed)
        return sum(L.step_losses(logits, old_logits, pos, old_pos, neg, old_neg, target, 2.0).values())

    f = features.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(total, (f,))
    # the model's own forward (aux row on detached features) gives that same gradient
    g = features.clone().requires_grad_(True)
    pos, neg = clf.decomposed(g)
    with torch.no_grad():
        old_logits = old_clf(fixed, aux_row=True)
        old_pos, old_neg = old_clf.decomposed(fixed)
    model_total = sum(L.step_losses(clf(g, aux_row=True), old_logits, pos, old_pos, neg, old_neg, target, 2.0).values())
    (grad_model,) = torch.autograd.grad(model_total, g)
    (grad_fixed,) = torch.autograd.grad(total(f), f)
    assert torch.allclose(grad_model, grad_fixed)


@pytest.mark.parametrize("rest,expected", [((0.0, -1.0), 0), ((1e-4, -1.0), 1), ((-3.0, -1.0), 0)])
def test_sigmoid_rule_hand_worked(rest, expected):
    logits = torch.tensor([9.0, *rest]).view(1, -1, 1, 1)
    assert sigmoid_decision(logits).item() == expected


def test_sigmoid_rule_saturates_in_float32_and_ignores_channel_0():
    logits = torch.tensor([9.0, 25.0, 20.0, 30.0]).view(1, 4, 1, 1)
    assert sigmoid_decision(logits).item() == 1  # float32: σ(25) == σ(30) == 1.0, the lowest wins
    assert sigmoid_decision(logits.double()).item() == 3
    for aux in (-50.0, 0.0, 50.0):
        changed = logits.clone()
        changed[0, 0] = aux
        assert sigmoid_decision(changed).item() == 1
    assert decide(logits, "argmax").item() == 3


def test_the_model_predicts_with_the_rule_its_spec_records():
    spec = ModelSpec.for_backbone("tiny", [3, 2], decision="sigmoid")
    assert ModelSpec.from_dict(spec.to_dict()).decision == "sigmoid"
    assert ModelSpec.from_dict({k: v for k, v in spec.to_dict().items() if k != "decision"}).decision == "argmax"
    model = IncrementalDeepLab(spec).eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        logits = model(x)["logits"]
    assert torch.equal(model.decide(logits), sigmoid_decision(logits))


def test_warmup_poly_schedule_hand_worked():
    param = torch.nn.Parameter(torch.zeros(1))
    scheduler = PolyLR(torch.optim.SGD([param], lr=1.0), 20, 0.9, warmup_iters=4)
    assert scheduler.factor(0) == pytest.approx(0.001)
    assert scheduler.factor(1) == pytest.approx(0.25075 * 0.95 ** 0.9)
    assert scheduler.factor(1) == pytest.approx(0.239438, abs=1e-6)
    for k in range(4, 21):
        assert scheduler.factor(k) == pytest.approx((1 - k / 20) ** 0.9)


def _candidates(rng: np.random.Generator, n: int, classes: list[int]) -> list[tuple[str, list[int]]]:
    return [(f"img{i:03d}", sorted({int(c) for c in rng.choice(classes, size=2)})) for i in range(n)]


def test_memory_rounds_stop_mid_round_and_skip_a_class_without_candidates():
    rng = np.random.default_rng(0)
    candidates = _candidates(rng, 30, [1, 2, 3, 4])  # class 5 has none
    chosen = select_memory(candidates, [1, 2, 3, 4, 5], 9, seed=1)
    counts = {c: len(v) for c, v in chosen.items()}
    assert counts[5] == 0 and sum(counts.values()) == 9
    assert sorted(counts.values()) == [0, 2, 2, 2, 3]  # two full rounds of 4, then 1
    order = list(range(1, 6))
    state = np.random.RandomState(1)
    pool = list(candidates)
    state.shuffle(pool)
    state.shuffle(order)
    first = next(c for c in order if c != 5)
    assert counts[first] == 3  # the first class with a candidate in the shuffled order
    names = [name for entries in chosen.values() for name, _ in entries]
    assert len(set(names)) == 9
    assert all(c in labels for c, entries in chosen.items() for _, labels in entries)


def test_memory_is_seeded_and_refuses_when_candidates_run_out():
    rng = np.random.default_rng(1)
    candidates = _candidates(rng, 12, [1, 2, 3])
    assert select_memory(candidates, [1, 2, 3], 6, 1) == select_memory(candidates, [1, 2, 3], 6, 1)
    assert select_memory(candidates, [1, 2, 3], 6, 1) != select_memory(candidates, [1, 2, 3], 6, 2)
    with pytest.raises(UsageError, match="--replay-images 13: only 12 images"):
        select_memory(candidates, [1, 2, 3], 13, 1)


def test_memory_file_round_trip_lists_sorted_ids(tmp_path):
    chosen = select_memory([("b", [1]), ("a", [2]), ("c", [1, 2])], [1, 2], 3, 1)
    memory = ReplayMemory(1, 3, 1, chosen)
    memory.write(tmp_path)
    again = ReplayMemory.read(tmp_path / "memory.json")
    assert again == memory and again.ids == ["a", "b", "c"]
