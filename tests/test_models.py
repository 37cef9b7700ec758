import math

import pytest
import torch

from incseg_cli.errors import CorruptFileError, IncompatibleError, UsageError
from incseg_cli.models.deeplab import ModelSpec, build_model, load_backbone_weights


@pytest.mark.parametrize("backbone,stride", [("tiny", 8), ("resnet18", 16), ("resnet50", 16)])
def test_output_shapes(backbone, stride):
    torch.manual_seed(0)
    model = build_model(ModelSpec.for_backbone(backbone, [11, 5])).eval()
    out = model(torch.randn(1, 3, 64, 64))
    assert out["logits"].shape == (1, 16, 64, 64)
    assert out["features"].shape[-1] == 64 // stride
    assert out["features"].shape[1] == model.spec.head_channels
    assert out["body"].shape[1] == model.body_channels
    low = model(torch.randn(1, 3, 64, 64), upsample=False)["logits"]
    assert low.shape[-1] == 64 // stride


def test_resnet101_is_output_stride_16():
    model = build_model(ModelSpec.for_backbone("resnet101", [16])).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 128, 128))
    assert out["body"].shape == (1, 2048, 8, 8)
    assert model.spec.aspp_rates == (6, 12, 18)


def test_features_are_non_negative():
    model = build_model(ModelSpec.for_backbone("tiny", [11])).eval()
    assert (model(torch.randn(2, 3, 32, 32))["features"] >= 0).all()


def test_mib_init_keeps_old_probabilities():
    torch.manual_seed(0)
    model = build_model(ModelSpec.for_backbone("tiny", [11])).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        before = model(x)["logits"]
        model.add_step(5, init="mib")
        after = model(x)["logits"]
    p0, p1 = before.softmax(1), after.softmax(1)
    assert after.shape[1] == 16 and model.spec.head_sizes == [11, 5]
    # old non-background probabilities unchanged; bg and each new class get p_bg/(n+1)
    assert torch.allclose(p0[:, 1:], p1[:, 1:11], atol=1e-6)
    assert torch.allclose(p1[:, 0], p0[:, 0] / 6, atol=1e-6)
    assert torch.allclose(p1[:, 11:], (p0[:, 0] / 6).unsqueeze(1).expand(-1, 5, -1, -1), atol=1e-6)
    assert torch.allclose(torch.logsumexp(before, 1), torch.logsumexp(after, 1), atol=1e-5)
    head = model.classifier.heads[1].requires_grad_(False)
    model.classifier.heads[0].requires_grad_(False)
    assert torch.allclose(head.bias, model.classifier.heads[0].bias[0].expand(5))
    assert math.isclose(float(head.weight[3].sum()), float(model.classifier.heads[0].weight[0].sum()), rel_tol=1e-6)


def test_random_init_and_unknown_init():
    model = build_model(ModelSpec.for_backbone("tiny", [11]))
    model.add_step(2, init="random")
    assert model.num_classes == 13
    with pytest.raises(UsageError):
        model.add_step(2, init="zeros")


def test_spec_roundtrip():
    spec = ModelSpec.for_backbone("resnet50", [16, 5])
    assert ModelSpec.from_dict(spec.to_dict()) == spec


def test_backbone_weights_from_file(tmp_path):
    model = build_model(ModelSpec.for_backbone("resnet18", [3]))
    import torchvision

    reference = torchvision.models.resnet18(weights=None).state_dict()
    path = tmp_path / "r18.pth"
    torch.save(reference, path)
    load_backbone_weights(model, str(path))
    assert torch.equal(model.backbone.body.conv1.weight, reference["conv1.weight"])
    bad = tmp_path / "bad.pth"
    torch.save({"conv1.weight": torch.zeros(1)}, bad)
    with pytest.raises(IncompatibleError):
        load_backbone_weights(model, str(bad))
    trunc = tmp_path / "trunc.pth"
    trunc.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(CorruptFileError):
        load_backbone_weights(model, str(trunc))


def test_unknown_backbone():
    with pytest.raises(UsageError):
        build_model(ModelSpec.for_backbone("vgg16", [3]))
