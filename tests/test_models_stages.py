"""The model's opt-in intermediate outputs for PLOP's Local POD (``features_distillation``): each backbone
stage's pre-ReLU map, the decoder output and the small logits, with the usual outputs
unchanged bit for bit."""

import copy

import pytest
import torch

from incseg_cli.models.deeplab import ModelSpec, build_model

STAGE_SHAPES = {  # 64 px input: (channels, side) per stage
    "tiny": [(32, 32), (64, 16), (128, 8)],
    "resnet18": [(64, 16), (128, 8), (256, 4), (512, 4)],  # output stride 16: layer4 dilated
}


@pytest.mark.parametrize("backbone", ["tiny", "resnet18"])
def test_stage_shapes(backbone):
    torch.manual_seed(0)
    model = build_model(ModelSpec.for_backbone(backbone, [11, 5], head_channels=32)).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        out = model(x, stages=True)
        assert torch.equal(out["logits_small"], model(x, upsample=False)["logits"])
    assert set(out) == {"body", "features", "logits", "stages", "logits_small"}
    assert [tuple(s.shape) for s in out["stages"]] == [(2, c, w, w) for c, w in STAGE_SHAPES[backbone]]
    side = STAGE_SHAPES[backbone][-1][1]
    assert out["features"].shape == (2, 32, side, side)
    assert out["logits_small"].shape == (2, 16, side, side)
    assert out["logits"].shape == (2, 16, 64, 64)


@pytest.mark.parametrize("backbone", ["tiny", "resnet18"])
@pytest.mark.parametrize("train", [False, True])
def test_outputs_equal_the_plain_forward(backbone, train):
    torch.manual_seed(0)
    plain = build_model(ModelSpec.for_backbone(backbone, [3, 2], head_channels=16)).train(train)
    staged = copy.deepcopy(plain)
    x = torch.randn(2, 3, 32, 32)
    torch.manual_seed(1)  # the ASPP's dropout draws the same mask in both
    a = plain(x)
    torch.manual_seed(1)
    b = staged(x, stages=True)
    assert set(a) == {"body", "features", "logits"}  # nothing extra unless asked
    for key in a:
        assert torch.equal(a[key], b[key]), key
    # train mode: the BN running statistics moved the same way
    for (name, p), q in zip(plain.state_dict().items(), staged.state_dict().values()):
        assert torch.equal(p, q), name


@pytest.mark.parametrize("backbone", ["tiny", "resnet18", "resnet50"])  # resnet50: Bottlenecks
def test_stages_are_taken_before_the_relu(backbone):
    # the activated stage output (what a forward hook on the stage sees) is relu(stage map),
    # and the stage map keeps the negative part that POD squares
    torch.manual_seed(0)
    model = build_model(ModelSpec.for_backbone(backbone, [3], head_channels=16)).eval()
    body = model.backbone.body
    ends = [body[i] for i in (1, 3, 5)] if backbone == "tiny" else [body[f"layer{i}"] for i in range(1, 5)]
    seen = []
    hooks = [m.register_forward_hook(lambda _m, _i, out: seen.append(out.clone())) for m in ends]
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        model(x)
        stages = model(x, stages=True)["stages"]
    for h in hooks:
        h.remove()
    assert len(seen) == len(stages)
    for activated, stage in zip(seen, stages):
        assert torch.equal(activated, torch.relu(stage))
        assert (stage < 0).any()


def test_stage_maps_carry_gradients():
    torch.manual_seed(0)
    model = build_model(ModelSpec.for_backbone("tiny", [3], head_channels=16))
    out = model(torch.randn(2, 3, 32, 32), stages=True)
    sum(s.pow(2).mean() for s in out["stages"]).backward()
    assert model.backbone.body[0][0].weight.grad.abs().sum() > 0
