"""The random resized crop every pass over training images draws (training, feature
extraction, rotation fitting), declared once. ``None``: the preset's value."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from incseg_cli.config import option


@dataclass(kw_only=True)
class CropOptions:
    crop_size: Optional[int] = option(help="Crop in pixels (random resized crop).", preset=True)
    scale_min: Optional[float] = option(help="Random resized crop: smallest area fraction.", preset=True)
    scale_max: Optional[float] = option(help="Random resized crop: largest area fraction.", preset=True)
    hflip: bool = option(True, help="Random horizontal flip (p=0.5).", flag="--flip/--no-flip")
