"""Encoders: torchvision ResNets at output stride 16 (or 8), and a small CNN for CPU runs.

Every backbone maps an image [B,3,H,W] to one feature map [B,C,H/os,W/os]; ``channels``
tells C. ImageNet weights are loaded by ``load_imagenet_weights`` in ``deeplab.py``.
"""

from __future__ import annotations

from typing import Callable

import torch
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

# torchvision weights whose ``url`` ``--backbone-weights imagenet`` downloads (IMAGENET1K_V1:
# resnet101-63fe2227.pth is the file both papers' code loads).
IMAGENET_WEIGHTS = {
    "resnet101": models.ResNet101_Weights.IMAGENET1K_V1,
    "resnet50": models.ResNet50_Weights.IMAGENET1K_V1,
    "resnet34": models.ResNet34_Weights.IMAGENET1K_V1,
    "resnet18": models.ResNet18_Weights.IMAGENET1K_V1,
}

BACKBONES = [*RESNETS, "tiny"]


class ResNetEncoder(nn.Module):
    """A torchvision ResNet without pooling and fc, dilated to the requested output stride."""

    def __init__(self, name: str, output_stride: int) -> None:
        super().__init__()
        if output_stride not in (8, 16):
            raise UsageError(f"output stride must be 8 or 16 for {name}, got {output_stride}")
        dilate = [False, output_stride == 8, True]
        bottleneck = name in ("resnet50", "resnet101")
        # BasicBlock refuses dilation in its constructor: build it plain and dilate by hand.
        resnet = RESNETS[name](weights=None, replace_stride_with_dilation=dilate if bottleneck else None)
        if not bottleneck:
            _dilate_basic_layers(resnet, dilate)
        self.body = IntermediateLayerGetter(resnet, return_layers={"layer4": "out"})
        self.channels = 2048 if bottleneck else 512

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)["out"]


def _dilate_basic_layers(resnet: models.ResNet, dilate: list[bool]) -> None:
    """Replace the stride of layer2..4 by dilation, as torchvision does for Bottlenecks:
    the first block keeps the previous dilation, later blocks use the new one."""
    dilation = 1
    for layer, flag in zip((resnet.layer2, resnet.layer3, resnet.layer4), dilate):
        if not flag:
            continue
        previous, dilation = dilation, dilation * 2
        for i, block in enumerate(layer):
            if i == 0:
                block.conv1.stride = (1, 1)
                if block.downsample is not None:
                    block.downsample[0].stride = (1, 1)
            first = previous if i == 0 else dilation
            block.conv1.dilation = block.conv1.padding = (first, first)
            block.conv2.dilation = block.conv2.padding = (dilation, dilation)


def _conv_bn_relu(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class TinyEncoder(nn.Module):
    """Six conv-BN-ReLU blocks (32→64→128), output stride 8: learns the toy data in CPU
    minutes (TOY.md: ~25 it/s at batch 16, 64 px), where ResNet-18 is 7× slower."""

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


def build_encoder(name: str, output_stride: int) -> nn.Module:
    if name == "tiny":
        if output_stride != 8:
            raise UsageError(f"the tiny backbone has output stride 8, got {output_stride}")
        return TinyEncoder()
    if name in RESNETS:
        return ResNetEncoder(name, output_stride)
    raise UsageError(f"unknown backbone {name!r}; known: {', '.join(BACKBONES)}")
