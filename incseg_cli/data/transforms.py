"""Training and evaluation transforms on (PIL image, label mask) pairs.

Every random draw comes from the ``random.Random`` passed in, never from a global generator,
so a sample's augmentation is a pure function of its seed: resuming a run reproduces it
exactly and the number of DataLoader workers does not matter.

The transforms hand over compact tensors: the image as uint8 ``[3, H, W]`` and the mask as
uint8 ``[H, W]``. Normalisation to float happens where the batch is used, on its device
(``normalize_on_device``): a batch of 24 crops of 512 px crosses the worker queue and the
PCIe bus as 25 MB instead of 125 MB (float32 images + int64 labels), and the workers skip
the float arithmetic.
"""

from __future__ import annotations

import math
import random

import numpy as np
import torch
from PIL import Image

from incseg_cli.errors import UsageError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

EVAL_PROTOCOLS = ("crop", "full")


def _stats(ref: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    dtype = ref.dtype if ref.is_floating_point() else torch.float32
    mean = torch.tensor(IMAGENET_MEAN, dtype=dtype, device=ref.device).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=dtype, device=ref.device).view(3, 1, 1)
    return mean, std


def normalize(img: torch.Tensor) -> torch.Tensor:
    """uint8 [..., 3, H, W] (0..255) -> float32 normalised with the ImageNet mean/std."""
    mean, std = _stats(img)
    x = img.to(torch.float32) / 255.0 if not img.is_floating_point() else img
    return (x - mean) / std


def denormalize(x: torch.Tensor) -> torch.Tensor:
    """Inverse of ``normalize``: float [..., 3, H, W] in [0, 1] (clamped). A uint8 image
    (not normalised yet, as the loader hands it over) is only scaled to [0, 1]."""
    if not x.is_floating_point():
        return x.to(torch.float32) / 255.0
    mean, std = _stats(x)
    return (x.float() * std.float() + mean.float()).clamp_(0.0, 1.0)


def normalize_on_device(images: torch.Tensor, device: torch.device | str,
                        channels_last: bool | None = None) -> torch.Tensor:
    """A loader's image batch, ready for the model: moved to ``device`` as it comes (uint8:
    a quarter of float32's bytes), then normalised there, in float32, exactly as
    ``normalize`` does on the CPU (the same operations in the same order, so CPU results
    are bit-identical to normalising in the workers). A floating batch is taken as already
    normalised and only moved. ``channels_last`` (default: on CUDA) gives the
    NHWC layout the cuDNN convolutions prefer; autocast casts to bf16 inside the model."""
    device = torch.device(device)
    x = images.to(device, non_blocking=True)
    if not x.is_floating_point():
        x = normalize(x)
    if channels_last is None:
        channels_last = device.type == "cuda"
    if channels_last and x.dim() == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    return x


def to_tensor(image: Image.Image) -> torch.Tensor:
    """PIL image -> uint8 [3, H, W] (not normalised: see ``normalize_on_device``)."""
    if image.mode != "RGB":
        image = image.convert("RGB")
    arr = np.array(image, dtype=np.uint8)  # one writable copy, which torch.from_numpy needs
    # A CHW view: the collate's stack makes the one contiguous copy of the batch.
    return torch.from_numpy(arr).permute(2, 0, 1)


def mask_to_tensor(mask: np.ndarray) -> torch.Tensor:
    """uint8 label map -> uint8 [H, W] tensor (its own contiguous copy)."""
    return torch.from_numpy(np.array(mask, dtype=np.uint8))


def random_resized_crop_params(
    width: int,
    height: int,
    scale: tuple[float, float],
    ratio: tuple[float, float],
    rng: random.Random,
) -> tuple[int, int, int, int]:
    """``torchvision.transforms.RandomResizedCrop.get_params`` drawing from ``rng``.

    Returns (top, left, height, width) of the crop box.
    """
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = area * rng.uniform(scale[0], scale[1])
        aspect_ratio = math.exp(rng.uniform(log_ratio[0], log_ratio[1]))
        w = int(round(math.sqrt(target_area * aspect_ratio)))
        h = int(round(math.sqrt(target_area / aspect_ratio)))
        if 0 < w <= width and 0 < h <= height:
            i = rng.randint(0, height - h)
            j = rng.randint(0, width - w)
            return i, j, h, w
    # Fallback to a centre crop, clamping the aspect ratio into ``ratio``.
    in_ratio = float(width) / float(height)
    if in_ratio < min(ratio):
        w = width
        h = int(round(w / min(ratio)))
    elif in_ratio > max(ratio):
        h = height
        w = int(round(h * max(ratio)))
    else:
        w = width
        h = height
    i = (height - h) // 2
    j = (width - w) // 2
    return i, j, h, w


def _resize_mask(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of a uint8 label map to (width, height)."""
    if (mask.shape[1], mask.shape[0]) == size:
        return mask
    return np.asarray(Image.fromarray(mask).resize(size, Image.NEAREST))


class TrainTransform:
    """RandomResizedCrop(crop_size, scale, ratio) + horizontal flip (p=0.5) + normalise."""

    def __init__(
        self,
        crop_size: int,
        scale: tuple[float, float] = (0.5, 2.0),
        ratio: tuple[float, float] = (3 / 4, 4 / 3),
        hflip: bool = True,
    ) -> None:
        if crop_size <= 0:
            raise UsageError(f"crop size must be positive, got {crop_size}")
        if not (0 < scale[0] <= scale[1]) or not (0 < ratio[0] <= ratio[1]):
            raise UsageError(f"invalid crop scale {scale} or ratio {ratio}")
        self.crop_size = int(crop_size)
        self.scale = (float(scale[0]), float(scale[1]))
        self.ratio = (float(ratio[0]), float(ratio[1]))
        self.hflip = hflip

    def __call__(
        self, image: Image.Image, mask: np.ndarray | None, rng: random.Random
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        width, height = image.size
        i, j, h, w = random_resized_crop_params(width, height, self.scale, self.ratio, rng)
        size = (self.crop_size, self.crop_size)
        image = image.crop((j, i, j + w, i + h)).resize(size, Image.BILINEAR)
        if mask is not None:
            mask = _resize_mask(np.ascontiguousarray(mask[i : i + h, j : j + w]), size)
        if self.hflip and rng.random() < 0.5:
            image = image.transpose(Image.FLIP_LEFT_RIGHT)
            if mask is not None:
                mask = mask[:, ::-1]
        return to_tensor(image), None if mask is None else mask_to_tensor(mask)

    def __repr__(self) -> str:
        return (
            f"TrainTransform(crop_size={self.crop_size}, scale={self.scale}, "
            f"ratio={self.ratio}, hflip={self.hflip})"
        )


class EvalTransform:
    """``crop``: shorter side to ``size`` then a size x size centre crop; ``full``: as is."""

    def __init__(self, protocol: str = "crop", size: int = 512) -> None:
        if protocol not in EVAL_PROTOCOLS:
            raise UsageError(f"unknown evaluation protocol {protocol!r}; known: {', '.join(EVAL_PROTOCOLS)}")
        if size <= 0:
            raise UsageError(f"evaluation size must be positive, got {size}")
        self.protocol = protocol
        self.size = int(size)

    def __call__(
        self, image: Image.Image, mask: np.ndarray | None, rng: random.Random | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self.protocol == "crop":
            width, height = image.size
            # torchvision Resize(int): the shorter side becomes ``size``, the longer is truncated.
            if width <= height:
                new_w, new_h = self.size, int(self.size * height / width)
            else:
                new_w, new_h = int(self.size * width / height), self.size
            if (new_w, new_h) != (width, height):
                image = image.resize((new_w, new_h), Image.BILINEAR)
                if mask is not None:
                    mask = _resize_mask(np.ascontiguousarray(mask), (new_w, new_h))
            # torchvision CenterCrop
            top = int(round((new_h - self.size) / 2.0))
            left = int(round((new_w - self.size) / 2.0))
            image = image.crop((left, top, left + self.size, top + self.size))
            if mask is not None:
                mask = mask[top : top + self.size, left : left + self.size]
        return to_tensor(image), None if mask is None else mask_to_tensor(mask)

    def __repr__(self) -> str:
        return f"EvalTransform(protocol={self.protocol!r}, size={self.size})"
