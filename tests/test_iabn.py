"""InPlace-ABN's ImageNet ResNets (resnet101_iabn_sync.pth.tar, WILSON/MiB/PLOP) in incseg.

The checkpoints here are synthetic, written in the official layout by ``iabn_state`` (from
MiB/PLOP ``models/resnet.py`` ``ResNet.__init__`` and ``modules/residual.py``
``ResidualBlock.__init__``); ``reference_forward`` is the official forward written with
torch.nn.functional straight from those tensors: ABN = batch norm then leaky ReLU 0.01, no
activation after the last BN of a block and the shortcut's BN, leaky ReLU after the residual
addition. resnet50 (bottlenecks, the papers' block) and resnet18 (basic blocks) keep it fast.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import subprocess

import pytest
import torch
import torch.nn.functional as F
from helpers import REPO, TOY_TRAIN_ARGS, error_line

from incseg_cli.engine.checkpoint import load_checkpoint, make_header, model_from_checkpoint, save_checkpoint
from incseg_cli.errors import CorruptFileError, IncompatibleError, InputError
from incseg_cli.models import iabn
from incseg_cli.models.backbones import LEAKY_RELU, RELU
from incseg_cli.models.deeplab import ModelSpec, build_model, load_backbone_weights
from incseg_cli.tasks import get_task

NETS = {"resnet50": ((3, 4, 6, 3), True), "resnet18": ((2, 2, 2, 2), False)}  # models/resnet.py _NETS
SLOPE = 0.01
OS16_DILATION = (1, 1, 1, 2)  # models/resnet.py: output_stride 16


def iabn_state(depth: str, seed: int = 0, batches_tracked: bool = False) -> dict[str, torch.Tensor]:
    """Random tensors under the official keys (no ``module.``); ``batches_tracked``: the BNs
    carry ``num_batches_tracked`` (inplace_abn >= 1.0), else not (the 2018 ImageNet files)."""
    structure, bottleneck = NETS[depth]
    g = torch.Generator().manual_seed(seed)
    sd: dict[str, torch.Tensor] = {}

    def conv(name, cout, cin, k):
        sd[f"{name}.weight"] = torch.randn(cout, cin, k, k, generator=g) * (2.0 / (cin * k * k)) ** 0.5

    def abn(name, c):
        sd[f"{name}.weight"] = 0.5 + 0.5 * torch.rand(c, generator=g)
        sd[f"{name}.bias"] = 0.1 * torch.randn(c, generator=g)
        sd[f"{name}.running_mean"] = 0.1 * torch.randn(c, generator=g)
        sd[f"{name}.running_var"] = 0.5 + torch.rand(c, generator=g)
        if batches_tracked:
            sd[f"{name}.num_batches_tracked"] = torch.tensor(1000)

    conv("mod1.conv1", 64, 3, 7)
    abn("mod1.bn1", 64)
    cin, channels = 64, ((64, 64, 256) if bottleneck else (64, 64))
    for mod_id, num in enumerate(structure):
        for b in range(num):
            p = f"mod{mod_id + 2}.block{b + 1}"
            stride = 2 if OS16_DILATION[mod_id] == 1 and b == 0 and mod_id > 0 else 1
            if bottleneck:
                conv(f"{p}.convs.conv1", channels[0], cin, 1)
                abn(f"{p}.convs.bn1", channels[0])
                conv(f"{p}.convs.conv2", channels[1], channels[0], 3)
                abn(f"{p}.convs.bn2", channels[1])
                conv(f"{p}.convs.conv3", channels[2], channels[1], 1)
                abn(f"{p}.convs.bn3", channels[2])
            else:
                conv(f"{p}.convs.conv1", channels[0], cin, 3)
                abn(f"{p}.convs.bn1", channels[0])
                conv(f"{p}.convs.conv2", channels[1], channels[0], 3)
                abn(f"{p}.convs.bn2", channels[1])
            if stride != 1 or cin != channels[-1]:  # residual.py: need_proj_conv
                conv(f"{p}.proj_conv", channels[-1], cin, 1)
                abn(f"{p}.proj_bn", channels[-1])
            cin = channels[-1]
        channels = tuple(c * 2 for c in channels)
    sd["classifier.fc.weight"] = 0.01 * torch.randn(1000, cin, generator=g)
    sd["classifier.fc.bias"] = torch.zeros(1000)
    return sd


def save_iabn(path, sd: dict[str, torch.Tensor]) -> str:
    """As inplace_abn's scripts/train_imagenet.py saves it: a DDP model's state dict."""
    torch.save({"epoch": 90, "arch": "resnet50", "best_prec1": 77.0,
                "state_dict": {f"module.{k}": v for k, v in sd.items()}}, path)
    return str(path)


def reference_forward(sd: dict[str, torch.Tensor], x: torch.Tensor, depth: str) -> torch.Tensor:
    """The official body's forward (eval mode, output stride 16), from the tensors alone."""
    structure, bottleneck = NETS[depth]

    def abn(x, name, act):  # inplace_abn ABN.forward: batch_norm, then the activation
        x = F.batch_norm(x, sd[f"{name}.running_mean"], sd[f"{name}.running_var"], sd[f"{name}.weight"],
                         sd[f"{name}.bias"], False, 0.0, 1e-5)
        return F.leaky_relu(x, SLOPE) if act else x  # act False: activation "identity"

    x = F.conv2d(x, sd["mod1.conv1.weight"], stride=2, padding=3)
    x = F.max_pool2d(abn(x, "mod1.bn1", True), 3, stride=2, padding=1)
    for mod_id, num in enumerate(structure):
        d = OS16_DILATION[mod_id]
        for b in range(num):
            s = 2 if d == 1 and b == 0 and mod_id > 0 else 1  # ResNet._stride_dilation
            p = f"mod{mod_id + 2}.block{b + 1}"
            if bottleneck:
                y = abn(F.conv2d(x, sd[f"{p}.convs.conv1.weight"]), f"{p}.convs.bn1", True)
                y = abn(F.conv2d(y, sd[f"{p}.convs.conv2.weight"], stride=s, padding=d, dilation=d),
                        f"{p}.convs.bn2", True)
                y = abn(F.conv2d(y, sd[f"{p}.convs.conv3.weight"]), f"{p}.convs.bn3", False)
            else:
                y = abn(F.conv2d(x, sd[f"{p}.convs.conv1.weight"], stride=s, padding=d, dilation=d),
                        f"{p}.convs.bn1", True)
                y = abn(F.conv2d(y, sd[f"{p}.convs.conv2.weight"], padding=d, dilation=d), f"{p}.convs.bn2", False)
            if f"{p}.proj_conv.weight" in sd:
                r = abn(F.conv2d(x, sd[f"{p}.proj_conv.weight"], stride=s), f"{p}.proj_bn", False)
            else:
                r = x
            x = F.leaky_relu(y + r, SLOPE)  # ResidualBlock.forward: after the addition
    return x


def paper_model(depth: str, heads=(3,)):
    return build_model(ModelSpec.for_backbone(depth, list(heads), head_channels=16, dilate_first_block=True))


@pytest.fixture(scope="module")
def r50(tmp_path_factory):
    sd = iabn_state("resnet50")
    return sd, save_iabn(tmp_path_factory.mktemp("iabn") / iabn.IABN_FILE, sd)


@pytest.mark.parametrize("depth", ["resnet50", "resnet18"])
def test_loaded_checkpoint_gives_the_official_forward(depth, r50, tmp_path):
    sd, path = r50 if depth == "resnet50" else (None, None)
    if sd is None:
        sd = iabn_state(depth, seed=1, batches_tracked=True)
        path = save_iabn(tmp_path / "r18.pth.tar", sd)
    model = paper_model(depth).eval()
    assert model.spec.activation == RELU
    assert load_backbone_weights(model, path) == path
    assert model.spec.activation == LEAKY_RELU
    x = torch.randn(2, 3, 64, 48, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        got = model.backbone(x)
        want = reference_forward(sd, x, depth)
        relu_net = paper_model(depth).eval()
        relu_net.backbone.body.load_state_dict(model.backbone.body.state_dict())
        relu_out = relu_net.backbone(x)
    assert got.shape == want.shape == (2, model.backbone.channels, 4, 3)
    scale = want.abs().max()
    # absolute, relative to the output's range: a ReLU left in the stem alone is ~1e-4 of it
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5 * float(scale))
    # the activation matters: the same tensors in torchvision's ReLU network differ
    assert (relu_out - want).abs().max() > 1e-2 * scale
    # every tensor was mapped (the classifier dropped): none kept its random init
    body = model.backbone.body.state_dict()
    for key, value in sd.items():
        target = iabn.iabn_to_incseg_key(key)
        assert (target is None) == key.startswith("classifier.fc."), key
        if target is not None:
            assert torch.equal(body[target], value), key


def test_stage_maps_are_taken_before_the_leaky_relu(r50):
    # PLOP's POD (official ResidualBlock with last=True returns the sum before the activation)
    sd, path = r50
    model = paper_model("resnet50").eval()
    load_backbone_weights(model, path)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        plain = model(x)
        staged = model(x, stages=True)
    for key in plain:
        assert torch.equal(plain[key], staged[key]), key
    body = model.backbone.body
    seen = []
    hooks = [body[f"layer{i}"].register_forward_hook(lambda _m, _i, out: seen.append(out.clone()))
             for i in range(1, 5)]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    for activated, stage in zip(seen, staged["stages"], strict=True):
        assert torch.equal(activated, F.leaky_relu(stage, SLOPE))
        assert (activated < 0).any()  # leaky: negative values survive


def _refused(sd, depth="resnet18", kind=CorruptFileError) -> str:
    """The one-line refusal of ``sd`` (what ``load_backbone_weights`` maps after reading a file)."""
    expected = paper_model(depth).backbone.body.state_dict()
    with pytest.raises(kind) as err:
        iabn.to_encoder_state(sd, expected, depth, "w.pth")
    message = str(err.value)
    assert "\n" not in message and message.startswith("w.pth: ")
    return message


def test_missing_extra_or_reshaped_tensor_is_refused_in_one_line(tmp_path):
    sd = iabn_state("resnet18", seed=4)
    missing = {k: v for k, v in sd.items() if k != "mod4.block2.convs.bn2.running_var"}
    assert "1 missing: mod4.block2.convs.bn2.running_var" in _refused(missing)
    unknown = {**sd, "mod2.block1.convs.bn4.weight": torch.ones(64)}
    assert "mod2.block1.convs.bn4.weight" in _refused(unknown)
    extra_block = {**sd, **{k.replace("block2", "block3"): v for k, v in sd.items() if k.startswith("mod5.block2.")}}
    assert "unexpected: mod5.block3." in _refused(extra_block)
    reshaped = {**sd, "mod3.block2.convs.conv2.weight": torch.zeros(128, 128, 1, 1)}
    assert "of another shape: mod3.block2.convs.conv2.weight" in _refused(reshaped)
    # an intact file of another depth is incompatible, not damaged
    assert "resnet18" in _refused(sd, "resnet34", IncompatibleError)
    # the same from a file, as --backbone-weights reads it (module. prefix, "state_dict")
    path = save_iabn(tmp_path / "missing.pth.tar", missing)
    with pytest.raises(CorruptFileError, match=f"^{path}: damaged InPlace-ABN resnet18 checkpoint, tensors 1 missing"):
        load_backbone_weights(paper_model("resnet18"), path)


def test_recorded_in_the_checkpoint_and_rebuilt_identically(r50, tmp_path):
    _, path = r50
    task = get_task("voc", "15-5")
    model = paper_model("resnet50", task.head_sizes(0))
    load_backbone_weights(model, path)
    header = make_header(task, 0, "base", model.spec, None, backbone_weights=path)
    assert header["model"]["activation"] == LEAKY_RELU
    save_checkpoint(tmp_path / "checkpoint.pt", header, model)
    ckpt = load_checkpoint(tmp_path)
    assert ckpt.spec == model.spec and ckpt.spec.activation == LEAKY_RELU
    rebuilt = model_from_checkpoint(ckpt).eval()  # what evaluate, predict and export build
    assert isinstance(rebuilt.backbone.body.layer3[2].relu, torch.nn.LeakyReLU)
    x = torch.randn(2, 3, 48, 48)
    with torch.no_grad():
        a, b = model.eval()(x), rebuilt(x)
    for key in a:
        assert torch.equal(a[key], b[key]), key
    # a header without the field (every checkpoint before it) rebuilds torchvision's ReLUs
    old = {k: v for k, v in header["model"].items() if k != "activation"}
    assert ModelSpec.from_dict(old).activation == RELU


def test_spec_refuses_an_unknown_activation():
    with pytest.raises(ValueError, match="activation"):
        ModelSpec(backbone="resnet18", head_sizes=[3], activation="gelu")
    with pytest.raises(ValueError, match="activation"):
        ModelSpec(backbone="tiny", output_stride=8, head_sizes=[3], activation=LEAKY_RELU)


def test_iabn_name_resolves_from_the_documented_places(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.delenv(iabn.WEIGHTS_DIR_ENV, raising=False)
    with pytest.raises(InputError, match="releases/download/v1.0/resnet101_iabn_sync.pth.tar"):
        iabn.resolve("iabn")
    cached = tmp_path / "torch" / "hub" / "checkpoints" / iabn.IABN_FILE
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"x")
    assert iabn.resolve("iabn") == str(cached)
    local = tmp_path / "data" / "weights" / iabn.IABN_FILE
    local.parent.mkdir(parents=True)
    local.write_bytes(b"x")
    assert iabn.resolve("iabn") == str(iabn.DATA_WEIGHTS_DIR / iabn.IABN_FILE)
    monkeypatch.setenv(iabn.WEIGHTS_DIR_ENV, str(tmp_path / "w"))
    (tmp_path / "w").mkdir()
    (tmp_path / "w" / iabn.IABN_FILE).write_bytes(b"x")
    assert iabn.resolve("iabn") == str(tmp_path / "w" / iabn.IABN_FILE)
    assert iabn.resolve("imagenet") == "imagenet"


R18_ARGS = [*TOY_TRAIN_ARGS, "--backbone", "resnet18", "--output-stride", "16", "--dilate-first-block"]


def _cli(*args, env: dict):
    """The incseg command in this process (no interpreter start): (exit code, stderr)."""
    from incseg_cli.cli import main

    err = io.StringIO()
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env, INCSEG_NO_PROGRESS="1")
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err), \
                pytest.raises(SystemExit) as stop:
            main([str(a) for a in args])
    finally:
        for k, v in old.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
    return stop.value.code, err.getvalue()


def test_cli_trains_evaluates_and_refuses(toy_root, toy_env, tmp_path, monkeypatch):
    """train-base records the activation, evaluate rebuilds it; a damaged file is one line, exit 5."""
    monkeypatch.setenv("INCSEG_NO_PROGRESS", "1")
    sd = iabn_state("resnet18", seed=3)
    good = save_iabn(tmp_path / iabn.IABN_FILE, sd)
    bad = save_iabn(tmp_path / "bad.pth.tar", {k: v for k, v in sd.items() if k != "mod3.block1.proj_bn.bias"})
    code, err = _cli("train-base", "--data", toy_root, "--task", "10-10-ov", *R18_ARGS, "--epochs", "1",
                     "--backbone-weights", bad, "--out", tmp_path / "bad", env=toy_env)
    assert code == 5, err
    line = error_line(err)  # the last line, no traceback; the lines before it are progress notes
    assert [x for x in err.splitlines() if x.startswith("error:")] == [line]
    assert "damaged InPlace-ABN resnet18 checkpoint" in line and "mod3.block1.proj_bn.bias" in line
    assert not (tmp_path / "bad" / "checkpoint.pt").exists()

    code, err = _cli("train-base", "--data", toy_root, "--task", "10-10-ov", *R18_ARGS, "--epochs", "1",
                     "--backbone-weights", good, "--out", tmp_path / "run", env=toy_env)
    assert code == 0, err
    ckpt = load_checkpoint(tmp_path / "run")
    assert ckpt.spec.activation == LEAKY_RELU and ckpt.header["backbone_weights"] == good
    assert isinstance(model_from_checkpoint(ckpt).backbone.body.relu, torch.nn.LeakyReLU)
    code, err = _cli("evaluate", tmp_path / "run", "--data", toy_root, "--eval-size", "32",
                     "--out", tmp_path / "eval.json", env=toy_env)
    assert code == 0, err
    assert json.loads((tmp_path / "eval.json").read_text())["miou"]["all"] >= 0


@pytest.mark.skipif(shutil.which("make") is None, reason="no make")
def test_make_targets_use_the_iabn_file_when_present(tmp_path):
    """WILSON's and PLOP's step 0 get the file; ALIFE's keeps torchvision's (make -n: nothing runs)."""
    (tmp_path / iabn.IABN_FILE).write_bytes(b"x")
    targets = ["voc-15-5", "plop-voc-15-5", "alife-voc-15-5"]

    def step0(env):
        # run from tmp_path: its data/weights is empty, whatever the checkout holds
        out = subprocess.run(["make", "-n", "-f", str(REPO / "Makefile"), "STAMP=", *targets], cwd=tmp_path,
                             capture_output=True, text=True,
                             env={**os.environ, "TORCH_HOME": str(tmp_path / "none"), **env}, check=True).stdout
        return [line for line in out.splitlines() if "train-base" in line]

    wilson, plop, alife = step0({"INCSEG_WEIGHTS": str(tmp_path)})
    flag = f"--backbone-weights {tmp_path / iabn.IABN_FILE}"
    assert flag in wilson and flag in plop and "--backbone-weights" not in alife
    assert not any("--backbone-weights" in line for line in step0({"INCSEG_WEIGHTS": str(tmp_path / "none")}))
