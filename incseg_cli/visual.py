"""Pictures of predictions: the evaluation crop's geometry, label PNGs and overlays in the
dataset's palette (``datasets.get(name).palette``; VOC's when none is given). Images are always read from their files (never rebuilt from a normalised tensor),
so a picture shows the pixels the dataset holds.

The ``crop`` protocol scores a centre crop of the image resized to ``size`` on its shorter
side (``data.transforms.EvalTransform``); ``crop_box`` gives that geometry, so a prediction
can be drawn over the same pixels or put back at the image's own size.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from incseg_cli.datasets.base import IGNORE_INDEX, bit_palette
from incseg_cli.fileio import atomic_path

PALETTE = bit_palette()  # VOC's colour map: label id -> RGB; 255 cream
PALETTE.setflags(write=False)
OVERLAY_ALPHA = 0.5


def crop_box(width: int, height: int, size: int) -> tuple[int, int, int, int]:
    """(resized width, resized height, left, top) of the ``crop`` protocol: the shorter side
    becomes ``size`` (the longer is truncated, as torchvision's Resize), then a size x size
    centre crop at (left, top) of the resized image."""
    if width <= height:
        new_w, new_h = size, int(size * height / width)
    else:
        new_w, new_h = int(size * width / height), size
    return new_w, new_h, int(round((new_w - size) / 2.0)), int(round((new_h - size) / 2.0))


def eval_view(image: Image.Image, mask: np.ndarray | None, protocol: str, size: int
              ) -> tuple[Image.Image, np.ndarray | None]:
    """The image (bilinear) and mask (nearest) as the evaluation sees them."""
    if protocol != "crop":
        return image, mask
    new_w, new_h, left, top = crop_box(image.size[0], image.size[1], size)
    if (new_w, new_h) != image.size:
        image = image.resize((new_w, new_h), Image.BILINEAR)
        if mask is not None:
            mask = np.asarray(Image.fromarray(mask).resize((new_w, new_h), Image.NEAREST))
    image = image.crop((left, top, left + size, top + size))
    if mask is not None:
        mask = np.ascontiguousarray(mask[top : top + size, left : left + size])
    return image, mask


def at_image_size(labels: np.ndarray, width: int, height: int, protocol: str, size: int) -> np.ndarray:
    """A prediction of the evaluated view put back on the image's own pixel grid; under the
    crop protocol the pixels outside the scored crop were never predicted and are 255."""
    if protocol != "crop":
        return labels
    new_w, new_h, left, top = crop_box(width, height, size)
    canvas = np.full((new_h, new_w), IGNORE_INDEX, dtype=np.uint8)
    canvas[top : top + labels.shape[0], left : left + labels.shape[1]] = labels
    if (new_w, new_h) == (width, height):
        return canvas
    return np.asarray(Image.fromarray(canvas).resize((width, height), Image.NEAREST))


def _palette(palette: np.ndarray | None) -> np.ndarray:
    return PALETTE if palette is None else palette


def colourise(labels: np.ndarray, palette: np.ndarray | None = None) -> np.ndarray:
    """uint8 [H, W] label ids -> RGB in ``palette`` (uint8 [256, 3]; VOC's by default)."""
    return _palette(palette)[labels]


def overlay(image: Image.Image, labels: np.ndarray, alpha: float = OVERLAY_ALPHA,
            palette: np.ndarray | None = None) -> np.ndarray:
    """The image with the labels' colours blended in; void (255) pixels show the image alone."""
    rgb = np.asarray(image.convert("RGB"), dtype=np.float32)
    blend = (1 - alpha) * rgb + alpha * _palette(palette)[labels].astype(np.float32)
    keep = (labels != IGNORE_INDEX)[..., None]
    return np.where(keep, blend, rgb).round().clip(0, 255).astype(np.uint8)


def save_label_png(path: Path, labels: np.ndarray, palette: np.ndarray | None = None) -> None:
    """A palette ("P") PNG of label ids with the dataset's colour map (VOC's by default), as
    VOC's own masks are stored: any tool reads the ids back as pixel values. Written
    atomically."""
    img = Image.fromarray(np.ascontiguousarray(labels, dtype=np.uint8), mode="P")
    img.putpalette(_palette(palette).ravel().tolist())
    with atomic_path(path) as tmp:
        img.save(tmp, format="PNG")


def save_jpeg(path: Path, rgb: np.ndarray, quality: int = 90) -> None:
    with atomic_path(path) as tmp:
        Image.fromarray(rgb).save(tmp, format="JPEG", quality=quality)
