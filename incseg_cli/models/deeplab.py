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
from incseg_cli.models import iabn
from incseg_cli.models.backbones import ACTIVATIONS, IMAGENET_WEIGHTS, LEAKY_RELU, RELU, build_encoder
from incseg_cli.models.decision import ARGMAX, DECISIONS, SIGMOID, decide
from incseg_cli.torchfile import load_file  # the one safe loader: weights_only, one-line refusals

DEFAULT_RATES = {16: (6, 12, 18), 8: (12, 24, 36)}
TINY_RATES = (2, 4, 6)
OUTPUT_STRIDES = (8, 16)


class SpecError(ValueError):
    """A model spec no network can be built from; ``field`` names the spec field."""

    def __init__(self, field_name: str, problem: str) -> None:
        super().__init__(f"{field_name} {problem}")
        self.field = field_name
        self.problem = problem


def _whole(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass
class ModelSpec:
    """Everything needed to rebuild the network; stored in every checkpoint header."""

    backbone: str = "resnet101"
    output_stride: int = 16
    head_channels: int = 256
    aspp_rates: tuple[int, ...] = ()
    head_sizes: list[int] = field(default_factory=list)
    # The papers' ResNets dilate the first block of a dilated layer too (backbones.py);
    # False is torchvision's form, and what a checkpoint without the field was built with.
    dilate_first_block: bool = False
    # How logits are upsampled to the input: ALIFE's model uses align_corners=True, WILSON's
    # and MiB's False (the default, and what a checkpoint without the field used).
    align_corners: bool = False
    # The encoder's activation: "relu" (torchvision's; what a checkpoint without the field was
    # built with) or "leaky_relu_0.01" (InPlace-ABN's, set when its ImageNet weights load).
    activation: str = RELU
    # The decision rule (models/decision.py): "argmax" (what a checkpoint without the field
    # used), or DKD's "sigmoid", whose row 0 of head 0 is an auxiliary classifier that reads
    # the features detached (cvlab-yonsei/DKD models/model.py, forward_class_prediction).
    decision: str = ARGMAX

    @property
    def aux_row(self) -> bool:
        """Row 0 of head 0 is DKD's auxiliary classifier, fed with detached features."""
        return self.decision == SIGMOID

    def __post_init__(self) -> None:
        if not isinstance(self.aspp_rates, (list, tuple)):
            raise SpecError("aspp_rates", f"must be a list of integers, got {self.aspp_rates!r}")
        if not self.aspp_rates:
            rates = TINY_RATES if self.backbone == "tiny" else DEFAULT_RATES.get(self.output_stride, ())
            self.aspp_rates = tuple(rates)
        self.aspp_rates = tuple(self.aspp_rates)
        self._check()

    def _check(self) -> None:
        """Refuse here, naming the field, what torch would fail on deep inside the model
        (a damaged header, a bad option): every value of the right type and range."""
        if not isinstance(self.backbone, str):
            raise SpecError("backbone", f"must be a name, got {self.backbone!r}")
        if not _whole(self.output_stride) or self.output_stride not in OUTPUT_STRIDES:
            raise SpecError("output_stride", f"must be 8 or 16, got {self.output_stride!r}")
        if not _whole(self.head_channels) or self.head_channels < 1:
            raise SpecError("head_channels", f"must be an integer >= 1, got {self.head_channels!r}")
        if not self.aspp_rates or not all(_whole(r) and r >= 1 for r in self.aspp_rates):
            raise SpecError("aspp_rates", f"must be integers >= 1, got {list(self.aspp_rates)!r}")
        if not isinstance(self.head_sizes, list) or not all(_whole(n) and n >= 1 for n in self.head_sizes):
            raise SpecError("head_sizes", f"must be integers >= 1, got {self.head_sizes!r}")
        for name in ("dilate_first_block", "align_corners"):
            if not isinstance(getattr(self, name), bool):
                raise SpecError(name, f"must be true or false, got {getattr(self, name)!r}")
        if self.activation not in ACTIVATIONS:
            raise SpecError("activation", f"must be one of {', '.join(ACTIVATIONS)}, got {self.activation!r}")
        if self.decision not in DECISIONS:
            raise SpecError("decision", f"must be one of {', '.join(DECISIONS)}, got {self.decision!r}")
        if self.backbone == "tiny" and self.activation != RELU:
            raise SpecError("activation", f"must be {RELU} for the tiny backbone, got {self.activation!r}")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["aspp_rates"] = list(self.aspp_rates)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "ModelSpec":
        # No coercion: a value of the wrong type is a damaged header, refused by _check.
        return cls(
            backbone=d["backbone"],
            output_stride=d["output_stride"],
            head_channels=d["head_channels"],
            aspp_rates=d["aspp_rates"],
            head_sizes=d["head_sizes"],
            dilate_first_block=d.get("dilate_first_block", False),
            align_corners=d.get("align_corners", False),
            activation=d.get("activation", RELU),
            decision=d.get("decision", ARGMAX),
        )

    @classmethod
    def for_backbone(cls, backbone: str, head_sizes: list[int], output_stride: int | None = None,
                     head_channels: int | None = None, dilate_first_block: bool = False,
                     align_corners: bool = False, decision: str = ARGMAX) -> "ModelSpec":
        small = backbone == "tiny"
        try:
            return cls(
                backbone=backbone,
                # None means "the backbone's default"; 0 is a value, refused like any other
                output_stride=(8 if small else 16) if output_stride is None else output_stride,
                head_channels=(64 if small else 256) if head_channels is None else head_channels,
                head_sizes=list(head_sizes),
                # the tiny CNN has no dilated layer: record what was built
                dilate_first_block=bool(dilate_first_block) and not small,
                align_corners=bool(align_corners),
                decision=decision,
            )
        except SpecError as err:
            raise UsageError(f"--{err.field.replace('_', '-')} {err.problem}") from None


class IncrementalClassifier(nn.Module):
    """One 1×1 conv per step; logits are the heads' outputs concatenated in step order."""

    def __init__(self, in_channels: int, head_sizes: list[int]) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.heads = nn.ModuleList(nn.Conv2d(in_channels, n, 1) for n in head_sizes)

    @property
    def head_sizes(self) -> list[int]:
        return [h.out_channels for h in self.heads]

    def forward(self, features: torch.Tensor, aux_row: bool = False) -> torch.Tensor:
        """Logits of every head in step order. ``aux_row``: row 0 of head 0 reads the features
        detached (DKD's auxiliary classifier: its loss trains that row, never the features)."""
        if not aux_row:
            return torch.cat([head(features) for head in self.heads], dim=1)
        first = self.heads[0]
        aux = F.conv2d(features.detach(), first.weight[:1], first.bias[:1])
        rest = [F.conv2d(features, first.weight[1:], first.bias[1:])] + [head(features) for head in self.heads[1:]]
        return torch.cat([aux, *rest], dim=1)

    def decomposed(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """DKD's decomposition (``forward_class_prediction_positive/_negative``): over every
        class row but row 0 of head 0, ``W⁺·f`` and ``W⁻·f`` with ``W⁺ = where(W > 0, W, 0)``,
        ``W⁻ = where(W < 0, W, 0)``, no bias; channel j is channel j + 1 of the logits, so
        ``pos + neg + bias`` are the logits. A weight of exactly 0 gets no gradient from either."""
        weight = torch.cat([h.weight for h in self.heads], dim=0)[1:]
        zero = torch.zeros((), dtype=weight.dtype, device=weight.device)
        return (F.conv2d(features, torch.where(weight > 0, weight, zero)),
                F.conv2d(features, torch.where(weight < 0, weight, zero)))

    def add_head(self, n: int, init: str = "mib") -> None:
        """Append a head of ``n`` classes. ``mib`` copies the background row and lowers the
        background and new biases by log(n+1): the partition function, and so every old
        non-background probability, is unchanged (MiB's initialisation, ALIFE's ``MIB_CLS_INIT``).
        ``aux`` copies row 0 of head 0 (DKD's auxiliary classifier) and its bias into every new
        row, changing nothing else (DKD's ``init_novel_classifier``): every new logit starts equal
        to the auxiliary one, "no" everywhere. ``random``: PyTorch's default init."""
        first = self.heads[0].weight
        head = nn.Conv2d(self.in_channels, n, 1).to(device=first.device, dtype=first.dtype)
        if init == "aux":
            with torch.no_grad():
                first = self.heads[0]
                head.weight.copy_(first.weight[0:1].expand_as(head.weight))
                head.bias.fill_(float(first.bias[0]))
        elif init == "mib":
            with torch.no_grad():
                bg = self.heads[0]
                bias = bg.bias[0] - math.log(n + 1)
                head.weight.copy_(bg.weight[0:1].expand_as(head.weight))
                head.bias.fill_(float(bias))
                bg.bias[0] = bias
        elif init != "random":
            raise UsageError(f"unknown head initialisation {init!r}; use mib, aux or random")
        self.heads.append(head)


class IncrementalDeepLab(nn.Module):
    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        self.spec = spec
        self.backbone = build_encoder(spec.backbone, spec.output_stride, spec.dilate_first_block, spec.activation)
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

    def forward(self, x: torch.Tensor, upsample: bool = True, stages: bool = False,
                decomposed: bool = False) -> dict[str, torch.Tensor | list[torch.Tensor]]:
        """Returns ``body`` (encoder output), ``features`` (decoder output, stride os) and
        ``logits``: upsampled to the input size, or at feature resolution if not ``upsample``.
        The upsampling follows ``spec.align_corners`` (True in ALIFE's recipe: chosen at
        step 0 and carried by every checkpoint's spec).

        ``stages`` (PLOP's Local POD, ``features_distillation``) adds ``stages``, the list of each backbone
        stage's pre-ReLU output (4 for a ResNet, 3 for the tiny CNN), and ``logits_small``, the
        logits before upsampling; the other outputs are unchanged. Off, nothing extra is kept.

        ``decomposed`` (DKD) adds ``pos_small`` and ``neg_small`` (``IncrementalClassifier.decomposed``),
        at feature resolution. With ``spec.decision == "sigmoid"`` row 0 of head 0 reads the
        features detached (``spec.aux_row``)."""
        body, maps = self.backbone.forward_stages(x) if stages else (self.backbone(x), None)
        features = self.decoder(self.aspp(body))
        logits = self.classifier(features, aux_row=self.spec.aux_row)
        extra = {} if maps is None else {"stages": maps, "logits_small": logits}
        if decomposed:
            extra["pos_small"], extra["neg_small"] = self.classifier.decomposed(features)
        if upsample:
            logits = F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=self.spec.align_corners)
        return {"body": body, "features": features, "logits": logits, **extra}

    def decide(self, logits: torch.Tensor) -> torch.Tensor:
        """The channel of every pixel under the spec's decision rule (models/decision.py)."""
        return decide(logits, self.spec.decision)

    def set_activation(self, activation: str) -> None:
        """The encoder's activation (``ResNetEncoder.set_activation``), recorded in the spec
        that every checkpoint header carries, so that later stages rebuild the same network."""
        if activation == self.spec.activation:
            return
        self.backbone.set_activation(activation)
        self.spec.activation = activation
        self.spec._check()

    def add_step(self, n_new: int, init: str = "mib") -> None:
        self.classifier.add_head(n_new, init)
        self.spec.head_sizes = self.classifier.head_sizes


def build_model(spec: ModelSpec) -> IncrementalDeepLab:
    return IncrementalDeepLab(spec)


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise InputError(f"{path}: backbone weights file not found")
    obj = load_file(path, "backbone weights file")
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
    download, or its cache), ``none`` (random init), ``iabn`` (InPlace-ABN's file, found where
    ``iabn.search_dirs`` looks), or a path to a ``.pth`` file: torchvision's layout, or
    InPlace-ABN's (``iabn.py``: every tensor mapped, and the encoder's activation becomes
    LeakyReLU 0.01, recorded in ``model.spec``). Returns a short description for the manifest."""
    name = model.spec.backbone
    if weights == "none":
        return "random init"
    weights = iabn.resolve(weights)
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
                "--backbone-weights none to train from scratch (or --preset toy: a small encoder from scratch that "
                "runs on a CPU)"
            ) from None
        source = entry.url
    else:
        state = _read_state_dict(Path(weights))
        source = str(weights)
    target = model.backbone.body
    expected = target.state_dict()
    if iabn.is_iabn_layout(state):
        if name not in iabn.STRUCTURES.values():
            raise IncompatibleError(f"{source}: InPlace-ABN ResNet weights, the model's backbone is {name}")
        target.load_state_dict(iabn.to_encoder_state(state, expected, name, source))
        model.set_activation(LEAKY_RELU)
        return source
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong = [k for k in expected if k in state and state[k].shape != expected[k].shape]
    if missing or unexpected or wrong:
        raise IncompatibleError(
            f"{source}: does not fit the {name} backbone ({len(missing)} missing keys, "
            f"{len(unexpected)} unexpected, {len(wrong)} of another shape, e.g. {(missing + unexpected + wrong)[:2]})"
        )
    target.load_state_dict(state)
    model.set_activation(RELU)  # torchvision's layout: torchvision's activations
    return source
