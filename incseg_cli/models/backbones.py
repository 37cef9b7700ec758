"""Encoders: torchvision ResNets at output stride 16 (or 8), and a small CNN for CPU runs.

Every backbone maps an image [B,3,H,W] to one feature map [B,C,H/os,W/os]; ``channels``
tells C. ImageNet weights are loaded by ``load_backbone_weights`` in ``deeplab.py``.

Dilation: torchvision's ``replace_stride_with_dilation`` keeps the previous dilation in the
first block of a dilated layer (layer4 at OS16: 1, then 2, 2). ALIFE's, WILSON's and MiB's
ResNets use the layer's dilation in every block (layer4 at OS16: 2, 2, 2; WILSON's
``models/resnet.py``, ALIFE's ``models/deeplabv3.py``); ``dilate_first_block`` selects that
form. It changes no weight shape, so the same ImageNet file loads into both.

Activation: torchvision's ResNets apply ReLU; WILSON's, MiB's and PLOP's InPlace-ABN ResNets
apply LeakyReLU 0.01 at the same places (``activation="leaky_relu_0.01"``, set when the
InPlace-ABN ImageNet weights are loaded: ``iabn.py`` has the mapping and the reference).
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torchvision import models
from torchvision.models._utils import IntermediateLayerGetter

from incseg_cli.errors import UsageError

RESNETS: dict[str, Callable[..., models.ResNet]] = {
    "resnet101": models.resnet101,
    "resnet50": models.resnet50,
    "resnet34": models.resnet34,
    "resnet18": models.resnet18,
}

# torchvision weights whose ``url`` ``--backbone-weights imagenet`` downloads (IMAGENET1K_V1,
# resnet101-63fe2227.pth: the file ALIFE's code loads). WILSON and MiB load InPlace-ABN's
# resnet101_iabn_sync.pth.tar instead, whose BN + LeakyReLU layers have no counterpart here
# (docs/differences.md).
IMAGENET_WEIGHTS = {
    "resnet101": models.ResNet101_Weights.IMAGENET1K_V1,
    "resnet50": models.ResNet50_Weights.IMAGENET1K_V1,
    "resnet34": models.ResNet34_Weights.IMAGENET1K_V1,
    "resnet18": models.ResNet18_Weights.IMAGENET1K_V1,
}

BACKBONES = [*RESNETS, "tiny"]

# The encoder's activation, recorded in the model spec. "relu": torchvision's. "leaky_relu_0.01":
# InPlace-ABN's, as WILSON, MiB and PLOP build it (their segmentation_module.make_model:
# ``partial(InPlaceABNSync, activation="leaky_relu", activation_param=.01)``).
RELU = "relu"
LEAKY_RELU = "leaky_relu_0.01"
ACTIVATIONS = (RELU, LEAKY_RELU)
LEAKY_SLOPE = 0.01


def _activation_module(activation: str) -> nn.Module:
    if activation == LEAKY_RELU:
        return nn.LeakyReLU(LEAKY_SLOPE, inplace=True)
    if activation == RELU:
        return nn.ReLU(inplace=True)
    raise UsageError(f"unknown activation {activation!r}; known: {', '.join(ACTIVATIONS)}")


class ResNetEncoder(nn.Module):
    """A torchvision ResNet without pooling and fc, dilated to the requested output stride;
    ``dilate_first_block``: the papers' form (see the module docstring); ``activation``: see
    ``set_activation``."""

    def __init__(self, name: str, output_stride: int, dilate_first_block: bool = False,
                 activation: str = RELU) -> None:
        super().__init__()
        if output_stride not in (8, 16):
            raise UsageError(f"output stride must be 8 or 16 for {name}, got {output_stride}")
        dilate = [False, output_stride == 8, True]
        bottleneck = name in ("resnet50", "resnet101")
        # BasicBlock refuses dilation in its constructor: build it plain and dilate by hand.
        resnet = RESNETS[name](weights=None, replace_stride_with_dilation=dilate if bottleneck else None)
        if bottleneck:
            if dilate_first_block:
                _dilate_first_bottlenecks(resnet, dilate)
        else:
            _dilate_basic_layers(resnet, dilate, dilate_first_block)
        self.body = IntermediateLayerGetter(resnet, return_layers={"layer4": "out"})
        self.channels = 2048 if bottleneck else 512
        self.activation = RELU
        self.set_activation(activation)

    def set_activation(self, activation: str) -> None:
        """Every activation of the ResNet becomes ``activation``; no parameter changes.

        torchvision applies its ReLUs exactly where InPlace-ABN's ResNet applies its
        activation (MiB/PLOP ``modules/residual.py``, ``ResidualBlock``): after the stem's BN;
        in a block after bn1 and bn2 (``norm_act``), not after bn3 and the shortcut's BN (the
        official code sets their ``activation = "identity"``), and once more after the residual
        addition (``ResidualBlock.forward``: ``leaky_relu(convs(x) + residual)``). A
        Bottleneck/BasicBlock calls its one ``relu`` module at each of those places."""
        module = _activation_module(activation)  # refuses an unknown name
        self.body.relu = module
        for name in ("layer1", "layer2", "layer3", "layer4"):
            for block in self.body[name]:
                block.relu = _activation_module(activation)
        self.activation = activation

    def _activate(self, x: torch.Tensor) -> torch.Tensor:
        """The block-end activation, out of place (``forward_stages`` keeps its input)."""
        return F.leaky_relu(x, LEAKY_SLOPE) if self.activation == LEAKY_RELU else torch.relu(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)["out"]

    def forward_stages(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """``forward``'s output (same modules, same arithmetic) and, for layer1..layer4, the
        last block's residual sum *before* its ReLU (the maps PLOP's Local POD distils; LeakyReLU with InPlace-ABN's
        activation, whose official ``ResidualBlock`` with ``last=True`` returns that sum too):
        torchvision applies the activation in place, so a hook would only see the activated map."""
        stages = []
        for name, module in self.body.items():
            if not name.startswith("layer"):
                x = module(x)
                continue
            for block in module[:-1]:
                x = block(x)
            stages.append(_residual_sum(module[-1], x))
            x = self._activate(stages[-1])  # out of place: the stage map stays pre-activation
        return x, stages


def _residual_sum(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """A torchvision BasicBlock or Bottleneck's forward, up to (not including) its last ReLU."""
    identity = x if block.downsample is None else block.downsample(x)
    out = block.relu(block.bn1(block.conv1(x)))
    if isinstance(block, models.resnet.Bottleneck):
        out = block.relu(block.bn2(block.conv2(out)))
        return block.bn3(block.conv3(out)) + identity
    return block.bn2(block.conv2(out)) + identity


def _dilated_layers(resnet: models.ResNet, dilate: list[bool]) -> list[nn.Sequential]:
    return [layer for layer, flag in zip((resnet.layer2, resnet.layer3, resnet.layer4), dilate) if flag]


def _set_dilation(conv: nn.Conv2d, dilation: int) -> None:
    conv.dilation = conv.padding = (dilation, dilation)  # 3×3, so padding = dilation keeps the size


def _dilate_first_bottlenecks(resnet: models.ResNet, dilate: list[bool]) -> None:
    """The first Bottleneck of each dilated layer takes the dilation of the layer's later
    blocks, where torchvision keeps the previous one."""
    for layer in _dilated_layers(resnet, dilate):
        _set_dilation(layer[0].conv2, layer[-1].conv2.dilation[0])


def _dilate_basic_layers(resnet: models.ResNet, dilate: list[bool], dilate_first_block: bool = False) -> None:
    """Replace the stride of layer2..4 by dilation, as torchvision does for Bottlenecks:
    the first block keeps the previous dilation (or, ``dilate_first_block``, takes the new
    one), later blocks use the new one."""
    dilation = 1
    for layer in _dilated_layers(resnet, dilate):
        previous, dilation = dilation, dilation * 2
        for i, block in enumerate(layer):
            if i == 0:
                block.conv1.stride = (1, 1)
                if block.downsample is not None:
                    block.downsample[0].stride = (1, 1)
            _set_dilation(block.conv1, previous if i == 0 and not dilate_first_block else dilation)
            _set_dilation(block.conv2, dilation)


def _conv_bn_relu(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class TinyEncoder(nn.Module):
    """Six conv-BN-ReLU blocks (32→64→128), output stride 8: learns the toy data in CPU
    minutes (measured: ~25 it/s at batch 16, 64 px, on 2 CPU cores), where ResNet-18 is 7× slower."""

    def __init__(self, width: int = 32) -> None:
        super().__init__()
        w = width
        self.body = nn.Sequential(
            _conv_bn_relu(3, w, 2),
            _conv_bn_relu(w, w),
            _conv_bn_relu(w, 2 * w, 2),
            _conv_bn_relu(2 * w, 2 * w),
            _conv_bn_relu(2 * w, 4 * w, 2),
            _conv_bn_relu(4 * w, 4 * w),
        )
        self.channels = 4 * w

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward_stages(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """``forward``'s output and, at the end of each resolution (blocks 2, 4, 6), the BN
        output before the ReLU (the maps PLOP's Local POD distils)."""
        stages = []
        for i, block in enumerate(self.body):
            if i % 2 == 0:  # the stride-2 block that opens a resolution
                x = block(x)
                continue
            conv, bn, _ = block
            stages.append(bn(conv(x)))
            x = torch.relu(stages[-1])
        return x, stages


def build_encoder(name: str, output_stride: int, dilate_first_block: bool = False,
                  activation: str = RELU) -> nn.Module:
    """``dilate_first_block`` and ``activation`` apply to the ResNets; the tiny CNN has no
    dilated layer and only ReLUs."""
    if name == "tiny":
        if output_stride != 8:
            raise UsageError(f"the tiny backbone has output stride 8, got {output_stride}")
        if activation != RELU:
            raise UsageError(f"the tiny backbone has ReLU activations, not {activation}")
        return TinyEncoder()
    if name in RESNETS:
        return ResNetEncoder(name, output_stride, dilate_first_block, activation)
    raise UsageError(f"unknown backbone {name!r}; known: {', '.join(BACKBONES)}")
