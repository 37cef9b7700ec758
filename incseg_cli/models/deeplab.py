"""DeepLabV3 with an incremental classifier (one 1×1 conv head per step).

Layout, as in ALIFE's code: encoder → ASPP (torchvision's, with dropout) → decoder
(3×3 conv-BN-ReLU, whose output is "the feature" that feature banks store) → heads.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.segmentation.deeplabv3 import ASPP

from incseg_cli.errors import CorruptFileError, IncompatibleError, InputError, UsageError
from incseg_cli.models.backbones import IMAGENET_WEIGHTS, build_encoder

DEFAULT_RATES = {16: (6, 12, 18), 8: (12, 24, 36)}
TINY_RATES = (2, 4, 6)


@dataclass
class ModelSpec:
    """Everything needed to rebuild the network; stored in every checkpoint header."""

    backbone: str = "resnet101"
    output_stride: int = 16
    head_channels: int = 256
    aspp_rates: tuple[int, ...] = ()
    head_sizes: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.aspp_rates:
            rates = TINY_RATES if self.backbone == "tiny" else DEFAULT_RATES.get(self.output_stride, ())
            self.aspp_rates = tuple(rates)
        self.aspp_rates = tuple(self.aspp_rates)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["aspp_rates"] = list(self.aspp_rates)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "ModelSpec":
        return cls(
            backbone=d["backbone"],
            output_stride=int(d["output_stride"]),
            head_channels=int(d["head_channels"]),
            aspp_rates=tuple(d["aspp_rates"]),
            head_sizes=list(d["head_sizes"]),
        )

    @classmethod
    def for_backbone(cls, backbone: str, head_sizes: list[int], output_stride: int | None = None,
                     head_channels: int | None = None) -> "ModelSpec":
        small = backbone == "tiny"
        return cls(
            backbone=backbone,
            output_stride=output_stride or (8 if small else 16),
            head_channels=head_channels or (64 if small else 256),
            head_sizes=list(head_sizes),
        )


class IncrementalClassifier(nn.Module):
    """One 1×1 conv per step; logits are the heads' outputs concatenated in step order."""

    def __init__(self, in_channels: int, head_sizes: list[int]) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.heads = nn.ModuleList(nn.Conv2d(in_channels, n, 1) for n in head_sizes)

    @property
    def head_sizes(self) -> list[int]:
        return [h.out_channels for h in self.heads]

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return torch.cat([head(features) for head in self.heads], dim=1)

    def add_head(self, n: int, init: str = "mib") -> None:
        """Append a head of ``n`` classes. ``mib`` copies the background row and lowers the
        background and new biases by log(n+1): the partition function, and so every old
        non-background probability, is unchanged (MiB, ALIFE §2.4)."""
        head = nn.Conv2d(self.in_channels, n, 1).to(self.heads[0].weight.device)
        if init == "mib":
            with torch.no_grad():
                bg = self.heads[0]
                bias = bg.bias[0] - math.log(n + 1)
                head.weight.copy_(bg.weight[0:1].expand_as(head.weight))
                head.bias.fill_(float(bias))
                bg.bias[0] = bias
        elif init != "random":
            raise UsageError(f"unknown head initialisation {init!r}; use mib or random")
        self.heads.append(head)


class IncrementalDeepLab(nn.Module):
    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        self.spec = spec
        self.backbone = build_encoder(spec.backbone, spec.output_stride)
        self.aspp = ASPP(self.backbone.channels, spec.aspp_rates, spec.head_channels)
        c = spec.head_channels
        self.decoder = nn.Sequential(
            nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU(inplace=True)
        )
        self.classifier = IncrementalClassifier(c, spec.head_sizes)

    @property
    def body_channels(self) -> int:
        return self.backbone.channels

    @property
    def num_classes(self) -> int:
        return sum(self.classifier.head_sizes)

    def forward(self, x: torch.Tensor, upsample: bool = True) -> dict[str, torch.Tensor]:
        """Returns ``body`` (encoder output), ``features`` (decoder output, stride os) and
        ``logits``: upsampled to the input size, or at feature resolution if not ``upsample``."""
        body = self.backbone(x)
        features = self.decoder(self.aspp(body))
        logits = self.classifier(features)
        if upsample:
            logits = F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return {"body": body, "features": features, "logits": logits}

    def add_step(self, n_new: int, init: str = "mib") -> None:
        self.classifier.add_head(n_new, init)
        self.spec.head_sizes = self.classifier.head_sizes


def build_model(spec: ModelSpec) -> IncrementalDeepLab:
    return IncrementalDeepLab(spec)


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise InputError(f"{path}: backbone weights file not found")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated file, pickle that needs arbitrary globals, not torch
        raise CorruptFileError(f"{path}: cannot load as plain weights ({type(err).__name__})") from None
    for key in ("state_dict", "model", "model_state"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict):
        raise CorruptFileError(f"{path}: not a state dict")
    out = {}
    for k, v in obj.items():
        for prefix in ("module.", "backbone.", "body."):
            if k.startswith(prefix):
                k = k[len(prefix):]
        out[k] = v
    return out


def load_backbone_weights(model: IncrementalDeepLab, weights: str) -> str:
    """Load ImageNet weights into the encoder. ``weights`` is ``imagenet`` (torchvision's
    download, or its cache), ``none`` (random init), or a path to a ``.pth`` file.
    Returns a short description for the manifest."""
    name = model.spec.backbone
    if weights == "none":
        return "random init"
    if weights == "imagenet":
        if name not in IMAGENET_WEIGHTS:
            raise UsageError(f"no ImageNet weights exist for the {name} backbone; use --backbone-weights none")
        entry = IMAGENET_WEIGHTS[name]
        try:
            state = entry.get_state_dict(progress=False, check_hash=True)
        except Exception as err:
            raise InputError(
                f"cannot download ImageNet weights for {name} ({type(err).__name__}); put the file "
                f"{Path(entry.url).name} on disk and pass --backbone-weights PATH, or "
                "--backbone-weights none to train from scratch"
            ) from None
        source = entry.url
    else:
        state = _read_state_dict(Path(weights))
        source = str(weights)
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    target = model.backbone.body
    expected = target.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong = [k for k in expected if k in state and state[k].shape != expected[k].shape]
    if missing or unexpected or wrong:
        raise IncompatibleError(
            f"{source}: does not fit the {name} backbone ({len(missing)} missing keys, "
            f"{len(unexpected)} unexpected, {len(wrong)} of another shape, e.g. {(missing + unexpected + wrong)[:2]})"
        )
    target.load_state_dict(state)
    return source
