"""The paper presets reproduce the official loops (issue 14): precision per method, WILSON's
localizer order and rate, ALIFE's logits upsampling, the papers' layer4 dilation."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from helpers import TOY_TRAIN_ARGS, preset_values, resolved_options, wilson_step

from incseg_cli import presets
from incseg_cli.engine.checkpoint import load_checkpoint, make_header, model_from_checkpoint, save_checkpoint
from incseg_cli.engine.device import amp_dtype
from incseg_cli.methods.alife import ALIFEClassifierFinetune, ALIFEStep1, RotationFitting
from incseg_cli.methods.base import StepInfo
from incseg_cli.methods.registry import STEP_METHODS
from incseg_cli.methods.step import StepContext
from incseg_cli.models.util import freeze
from incseg_cli.methods.supervised import Supervised
from incseg_cli.models.deeplab import ModelSpec, build_model
from incseg_cli.stages.features import region_means
from incseg_cli.tasks import get_task

CUDA = torch.device("cuda", 0)


# -- 1. precision ----------------------------------------------------------------------------------
def test_amp_auto_resolves_to_each_methods_official_precision(emulate_cuda):
    emulate_cuda()
    auto = {name: amp_dtype("auto", CUDA, cls.precision) for name, cls in STEP_METHODS.items()}
    # plop: fp32 like mib, though both official codes train with apex O1 (README "PLOP")
    assert auto == {"ft": None, "mib": None, "plop": None, "alife": None, "wilson": torch.float16,
                    "dkd": torch.float16, "dkd-m": torch.float16}
    assert amp_dtype("auto", CUDA, Supervised("ce").precision) is None  # ALIFE/MiB step 0: fp32
    assert amp_dtype("auto", CUDA, Supervised("bce").precision) is torch.float16  # WILSON's step 0
    assert amp_dtype("auto", CUDA, ALIFEClassifierFinetune.precision) is None
    assert amp_dtype("auto", CUDA, RotationFitting.precision) is None
    assert amp_dtype("auto", CUDA) is None  # evaluation
    # bf16 is one flag away, and explicit choices win over the method's
    assert amp_dtype("bf16", CUDA, "fp16") is torch.bfloat16
    assert amp_dtype("fp16", CUDA) is torch.float16 and amp_dtype("off", CUDA, "fp16") is None
    # CPU runs are fp32 whatever is asked
    assert all(amp_dtype(a, torch.device("cpu"), "fp16") is None for a in ("auto", "bf16", "fp16", "off"))


# -- 2. WILSON: the eval-mode localizer pass before the training pass --------------------------------
def _wilson_case():
    labels = torch.zeros(4, 20)
    labels[torch.arange(4), 10 + torch.arange(4) % 3] = 1.0
    method, model, _ = wilson_step(labels, pseudo_epochs=0)
    # Bright images: the encoder output is far from the localizer's initial running stats
    # (mean 0, var 1), so the training pass moves them a lot.
    batch = {"image": 3.0 + torch.randn(4, 3, 32, 32), "index": torch.arange(4)}
    return method, model, batch


def test_wilson_pseudo_labels_come_from_the_localizer_before_its_training_pass(monkeypatch):
    from incseg_cli.losses import wilson as L

    method, model, batch = _wilson_case()
    method.train_mode(model)
    x, y = batch["image"], method.labels[batch["index"]]
    with torch.no_grad():  # train-mode BN uses batch statistics: the same body as in the step
        body, old_logits = model(x, upsample=False)["body"], method.old_model(x, upsample=False)["logits"]
    before = copy.deepcopy(method.localizer.state_dict())
    expected = method.pseudo_labels(x, body, old_logits, y)
    assert all(torch.equal(v, method.localizer.state_dict()[k]) for k, v in before.items())  # eval: no update

    seen: dict[str, torch.Tensor] = {}
    seg, sss = L.seg_loss, L.sss_loss
    monkeypatch.setattr(L, "seg_loss", lambda p, t, g: (seen.update(target=t, gate=g), seg(p, t, g))[1])
    monkeypatch.setattr(L, "sss_loss", lambda z, s, yy: (seen.update(seeds=s), sss(z, s, yy))[1])
    method.losses(model, batch, StepInfo(epoch=0, iteration=0, iters_per_epoch=1))
    assert torch.allclose(seen["target"], expected[0], atol=1e-6, rtol=0)
    assert torch.equal(seen["gate"], expected[1]) and torch.equal(seen["seeds"], expected[2])

    # The order matters here: the step's training pass moved the running statistics, and the
    # pseudo-labels computed after it differ.
    moved = method.localizer[1].running_mean
    assert not torch.allclose(moved, before["1.running_mean"])
    after = method.pseudo_labels(x, body, old_logits, y)
    assert (after[0] - expected[0]).abs().max() > 1e-3


# -- 5. WILSON: the localizer's rate is an absolute 0.01 ----------------------------------------------
@pytest.mark.parametrize("dataset,task,preset", [("voc", "15-5", None), ("coco", "coco-voc", None),
                                                 ("voc", "10-10-ov", "toy")])
def test_wilson_localizer_rate_is_absolute(dataset, task, preset):
    cls = STEP_METHODS["wilson"]
    t = get_task(dataset, task)
    options = resolved_options(cls.name, t, 1, preset=preset, lr=0.005)
    assert options["lr_localizer"] == 0.01  # not 10 × --lr
    assert resolved_options(cls.name, t, 1, preset=preset)["lr_localizer"] == 0.01


# -- 3. ALIFE's logits upsampling ----------------------------------------------------------------
@pytest.mark.parametrize("align", [False, True])
def test_alife_steps_keep_the_upsampling_of_their_step_0(align):
    """Chosen at step 0 (train-base --align-corners, as ALIFE's recipe), recorded in the
    checkpoint, inherited by Step 1 and applied by the model's forward."""
    task = get_task("voc", "10-10-ov")
    spec = ModelSpec.for_backbone("tiny", task.head_sizes(0), align_corners=align)
    assert preset_values("voc", {})["align_corners"] is False  # WILSON's and MiB's default
    old = freeze(build_model(spec))
    model = build_model(ModelSpec.from_dict(spec.to_dict()))
    model.load_state_dict(old.state_dict())
    model.add_step(10)
    ctx = StepContext(task=task, step=1, preset="toy", run=None, splits_root=Path("."), train_ids=[],
                      options=ALIFEStep1.Options(lambda_ali=1.0, lambda_kd=1.0), model=model, old_model=old)
    ALIFEStep1.from_context(ctx)
    assert model.spec.align_corners is align and old.spec.align_corners is align
    assert make_header(task, 1, "alife", model.spec, None)["model"]["align_corners"] is align
    model.eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        out = model(x)["logits"]
        low = model(x, upsample=False)["logits"]
    for corners in (False, True):
        same = torch.allclose(out, F.interpolate(low, size=(32, 32), mode="bilinear", align_corners=corners))
        assert same is (corners == align)


@pytest.mark.slow
def test_train_base_records_align_corners_and_alife_inherits_it(toy_root, toy_env, run_cli, tmp_path):
    r = run_cli("train-base", "--data", toy_root, "--task", "10-10-ov", *TOY_TRAIN_ARGS, "--epochs", "1",
                "--align-corners", "--out", tmp_path / "s0", env=toy_env)
    assert r.returncode == 0, r.stderr
    assert load_checkpoint(tmp_path / "s0" / "checkpoint.pt").spec.align_corners is True
    r = run_cli("train-step", "--prev", tmp_path / "s0", "--data", toy_root, "--method", "alife", *TOY_TRAIN_ARGS,
                "--epochs", "1", "--out", tmp_path / "s1", env=toy_env)
    assert r.returncode == 0, r.stderr
    assert load_checkpoint(tmp_path / "s1" / "checkpoint.pt").header["model"]["align_corners"] is True


def test_feature_region_means_follow_the_models_upsampling():
    g = torch.Generator().manual_seed(0)
    features = torch.rand(2, 5, 4, 6, generator=g, dtype=torch.float64)
    masks = torch.rand(2, 32, 48, generator=g) > 0.6
    up = F.interpolate(features, size=(32, 48), mode="bilinear", align_corners=True)
    means, _ = region_means(features, masks, align_corners=True)
    for b in range(2):
        assert torch.allclose(means[b], up[b][:, masks[b]].mean(dim=1), atol=1e-12)


# -- 4. the papers' layer4 dilation --------------------------------------------------------------
def test_paper_presets_select_the_papers_dilation_and_steps_inherit_it():
    for name in ("voc", "coco", "ade"):
        assert preset_values(name, {})["dilate_first_block"] is True
        assert "dilate_first_block" not in presets.STEP_PRESETS[name]  # the model comes from --prev
    assert preset_values("toy", {})["dilate_first_block"] is False


@pytest.mark.parametrize("backbone,os_,first,expected", [
    # Bottleneck: the dilated 3×3 is conv2; torchvision keeps the previous dilation there
    ("resnet50", 16, lambda m: m.layer4[0].conv2, {False: (1, 1), True: (2, 2)}),
    ("resnet50", 8, lambda m: m.layer4[0].conv2, {False: (2, 2), True: (4, 4)}),
    # BasicBlock (dilated by hand): conv1 of the first block
    ("resnet18", 16, lambda m: m.layer4[0].conv1, {False: (1, 1), True: (2, 2)}),
    ("resnet18", 8, lambda m: m.layer3[0].conv1, {False: (1, 1), True: (2, 2)}),
])
def test_dilate_first_block_builds_what_the_spec_says(backbone, os_, first, expected):
    for flag in (False, True):
        model = build_model(ModelSpec.for_backbone(backbone, [11], os_, 16, dilate_first_block=flag))
        conv = first(model.backbone.body)
        assert conv.dilation == conv.padding == expected[flag]
        with torch.no_grad():
            assert model.eval()(torch.randn(1, 3, 64, 64), upsample=False)["body"].shape[-1] == 64 // os_


def test_model_spec_round_trips_the_options_and_old_checkpoints_load_unchanged(tmp_path):
    spec = ModelSpec.for_backbone("resnet18", [11], 16, 16, dilate_first_block=True, align_corners=True)
    assert ModelSpec.from_dict(spec.to_dict()) == spec
    old_style = {k: v for k, v in spec.to_dict().items() if k not in ("dilate_first_block", "align_corners")}
    legacy = ModelSpec.from_dict(old_style)
    assert legacy.dilate_first_block is False and legacy.align_corners is False
    assert ModelSpec.for_backbone("tiny", [11], dilate_first_block=True).dilate_first_block is False  # nothing to dilate

    task = get_task("voc", "10-10-ov")
    model = build_model(ModelSpec.for_backbone("resnet18", task.head_sizes(0), 16, 16, dilate_first_block=True))
    save_checkpoint(tmp_path / "checkpoint.pt", make_header(task, 0, "base", model.spec, None), model)
    loaded = model_from_checkpoint(load_checkpoint(tmp_path / "checkpoint.pt"))
    assert loaded.spec.dilate_first_block is True and loaded.backbone.body.layer4[0].conv1.dilation == (2, 2)
