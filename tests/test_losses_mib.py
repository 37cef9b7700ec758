"""MiB's calibrated CE and KD: hand-worked values, the gradient tables of ALIFE's analysis of
CCE and CKD (Oh et al., NeurIPS 2022; float64 autograd and finite differences), and the MiB
method's wiring."""

import math

import pytest
import torch
import torch.nn.functional as F

from incseg_cli.errors import UsageError
from incseg_cli.losses.mib import calibrated_cross_entropy, calibrated_distillation
from incseg_cli.methods.mib import MiB
from incseg_cli.methods.registry import STEP_METHODS
from incseg_cli import config
from incseg_cli.models.deeplab import IncrementalClassifier
from helpers import resolved_options
from incseg_cli.tasks import get_task


def _pixels(rows):
    """[[logit per channel] per pixel] -> logits [1, C, 1, P] (float64)."""
    return torch.tensor(rows, dtype=torch.float64).T.reshape(1, len(rows[0]), 1, len(rows))


# -- hand-worked values -------------------------------------------------------------------------
def test_cce_hand_values():
    # channels [bg, old 1, new 2], softmax (1/6, 3/6, 2/6) at every pixel
    logits = _pixels([[0.0, math.log(3), math.log(2)]] * 4)
    target = torch.tensor([[[0, 1, 2, 255]]])
    per_pixel = calibrated_cross_entropy(logits, target, num_old=2, reduction="none")
    # bg: -log(1/6 + 3/6); an old label counts as bg; new: -log(2/6); ignored: 0
    expected = [math.log(1.5), math.log(1.5), math.log(3), 0.0]
    assert per_pixel.flatten().tolist() == pytest.approx(expected)
    # the mean is over every pixel, the ignored one counting 0
    assert calibrated_cross_entropy(logits, target, 2).item() == pytest.approx(sum(expected) / 4)


def test_ckd_hand_values():
    logits = _pixels([[0.0, math.log(3), math.log(2)], [math.log(2), 0.0, math.log(5)]])
    old = _pixels([[0.0, math.log(3)], [0.0, 0.0]])  # q = (1/4, 3/4) and (1/2, 1/2)
    per_pixel = calibrated_distillation(logits, old, reduction="none").flatten()
    # pixel 1: -(1/2)[1/4 log(1/6 + 2/6) + 3/4 log(3/6)] = (1/2) log 2
    # pixel 2: -(1/2)[1/2 log(2/8 + 5/8) + 1/2 log(1/8)]
    assert per_pixel.tolist() == pytest.approx([0.5 * math.log(2), 0.25 * (math.log(8 / 7) + math.log(8))])
    assert calibrated_distillation(logits, old).item() == pytest.approx(per_pixel.mean().item())


def test_cce_with_only_background_old_is_plain_ce():
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 3, 4, dtype=torch.float64)
    target = torch.randint(0, 5, (2, 3, 4))
    target[0, 0, 0] = 255
    expected = F.cross_entropy(logits, target, ignore_index=255, reduction="none")
    assert torch.allclose(calibrated_cross_entropy(logits, target, 1, reduction="none"), expected)


def test_bad_arguments_are_refused():
    logits = torch.zeros(1, 3, 2, 2)
    with pytest.raises(ValueError, match="num_old"):
        calibrated_cross_entropy(logits, torch.zeros(1, 2, 2, dtype=torch.long), 3)
    with pytest.raises(ValueError, match="do not match"):
        calibrated_distillation(logits, torch.zeros(1, 2, 2, 3))
    with pytest.raises(ValueError, match="reduction"):
        calibrated_distillation(logits, torch.zeros(1, 2, 2, 2), reduction="sum")


# -- gradient tables (ALIFE's analysis of CCE and CKD) ------------------------------------------
NUM_OLD, NUM_CLASSES = 4, 7  # bg + 3 old, 3 new


def _grad(loss_fn, logits):
    logits = logits.clone().requires_grad_(True)
    loss_fn(logits).sum().backward()
    return logits.grad


@pytest.fixture
def logits():
    torch.manual_seed(1)
    return torch.randn(2, NUM_CLASSES, 3, 5, dtype=torch.float64) * 2


def test_cce_gradient_on_unlabelled_pixels(logits):
    target = torch.zeros(2, 3, 5, dtype=torch.long)
    grad = _grad(lambda z: calibrated_cross_entropy(z, target, NUM_OLD, reduction="none"), logits)
    p = torch.softmax(logits, 1)
    q = p[:, :NUM_OLD] / p[:, :NUM_OLD].sum(1, keepdim=True)  # p renormalised over C_prev
    assert torch.allclose(grad[:, NUM_OLD:], p[:, NUM_OLD:])  # new classes: p_c
    assert torch.allclose(grad[:, :NUM_OLD], p[:, :NUM_OLD] - q)  # old classes: p_c - q_c
    assert (grad[:, :NUM_OLD] <= 0).all()  # Proposition 1: q_c >= p_c


def test_cce_gradient_on_new_class_pixels(logits):
    target = torch.randint(NUM_OLD, NUM_CLASSES, (2, 3, 5))
    grad = _grad(lambda z: calibrated_cross_entropy(z, target, NUM_OLD, reduction="none"), logits)
    one_hot = F.one_hot(target, NUM_CLASSES).permute(0, 3, 1, 2).double()
    assert torch.allclose(grad, torch.softmax(logits, 1) - one_hot)


def test_ckd_gradient_table(logits):
    old = torch.randn(2, NUM_OLD, 3, 5, dtype=torch.float64)
    grad = _grad(lambda z: calibrated_distillation(z, old, reduction="none"), logits)
    p, q = torch.softmax(logits, 1), torch.softmax(old, 1)
    # the tables are for the bracketed sum, i.e. |C_prev| times the loss
    grad = grad * NUM_OLD
    assert torch.allclose(grad[:, 1:NUM_OLD], p[:, 1:NUM_OLD] - q[:, 1:])
    bg_new = [0] + list(range(NUM_OLD, NUM_CLASSES))
    p_ckd = p[:, bg_new].sum(1, keepdim=True)
    assert torch.allclose(grad[:, bg_new], (p_ckd - q[:, :1]) * p[:, bg_new] / p_ckd)


def test_mean_reduction_divides_by_every_pixel(logits):
    target = torch.randint(0, NUM_CLASSES, (2, 3, 5))
    target[:, 0] = 255
    per_pixel = _grad(lambda z: calibrated_cross_entropy(z, target, NUM_OLD, reduction="none"), logits)
    mean = _grad(lambda z: calibrated_cross_entropy(z, target, NUM_OLD), logits)
    assert torch.allclose(mean * 30, per_pixel)
    assert (per_pixel[:, :, 0] == 0).all()  # ignored pixels get no gradient


def test_losses_pass_finite_difference_gradcheck():
    torch.manual_seed(2)
    z = torch.randn(1, 5, 2, 3, dtype=torch.float64, requires_grad=True)
    target = torch.tensor([[[0, 1, 3], [4, 255, 2]]])
    old = torch.randn(1, 3, 2, 3, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda x: calibrated_cross_entropy(x, target, 3), (z,))
    assert torch.autograd.gradcheck(lambda x: calibrated_distillation(x, old), (z,))


def test_no_gradient_reaches_the_old_logits(logits):
    old = torch.randn(2, NUM_OLD, 3, 5, dtype=torch.float64, requires_grad=True)
    calibrated_distillation(logits.requires_grad_(True), old).backward()
    assert old.grad is None


def test_mib_head_init_makes_the_distillation_stationary():
    """With MiB's head initialisation the new model starts where the old one was: p_k = q_k
    for old classes and p_bg + Σ new = q_bg, so both rows of the KD table are zero."""
    torch.manual_seed(3)
    clf = IncrementalClassifier(8, [4]).double()
    features = torch.randn(2, 8, 3, 3, dtype=torch.float64)
    with torch.no_grad():
        old = clf(features)
    clf.add_head(3, init="mib")  # the new head is made in float32, hence atol 1e-6 below
    clf.double()
    z = clf(features).detach()
    grad = _grad(lambda x: calibrated_distillation(x, old, reduction="none"), z)
    assert torch.allclose(grad, torch.zeros_like(grad), atol=1e-6)


# -- the method ---------------------------------------------------------------------------------
def test_mib_is_registered_with_its_defaults():
    assert STEP_METHODS["mib"] is MiB
    task = get_task("voc", "10-10-ov")
    toy = resolved_options("mib", task, 1, preset="toy")
    assert (toy["lambda_kd"], toy["epochs"], toy["lr"], toy["optimizer"], toy["head_init"]) == (10.0, 6, 1e-3, "adam", "random")
    voc = resolved_options("mib", task, 1, lambda_kd=5.0)
    assert (voc["lambda_kd"], voc["epochs"], voc["lr"], voc["optimizer"]) == (5.0, 30, 1e-3, "sgd")
    assert voc["head_init"] == "mib"


class _Ctx:
    def __init__(self):
        self.task, self.step, self.old_model = get_task("voc", "10-5-5-ov"), 2, torch.nn.Identity()
        self.options = MiB.Options(lambda_kd=10.0)


def test_mib_counts_every_earlier_class_as_old():
    assert MiB.from_context(_Ctx()).num_old == 16  # background + 1-15 at step 2 of 10-5-5


def test_mib_options_are_declared_and_range_checked():
    assert [f.name for f in config.declared(MiB.Options)] == ["lambda_kd"]
    assert MiB.Options().lambda_kd == 10.0
    with pytest.raises(UsageError, match="--lambda-kd must be >= 0"):
        config.validate(MiB.Options(lambda_kd=-1.0))
