"""A torch Dataset over one split of a dataset layout.

A sample is read, validated (mask size and values), augmented with a ``random.Random`` seeded
from the key, and its mask is remapped through a 256-entry lookup table (``Task.train_lut`` /
``Task.eval_lut``). Keys are an index or ``(index, sample_seed)``: a sampler that hands out
seeds makes augmentation reproducible across resumes and worker counts.
"""

from __future__ import annotations

import random
from typing import Any, Callable

import numpy as np
import torch
from torch.utils.data import Dataset

from incseg_cli.datasets.layout import DatasetLayout, invalid_values
from incseg_cli.errors import InputError, UsageError

SEED_STRIDE = 1_000_003


def label_dtype(lut: np.ndarray) -> np.dtype:
    """The smallest type of the remapped labels: uint8 (ignore = 255) while every class id
    fits (VOC, COCO after remapping, ADE's 150), int16 beyond."""
    return np.dtype(np.uint8) if 0 <= int(lut.min()) and int(lut.max()) <= 255 else np.dtype(np.int16)


def sample_seed(seed: int, index: int) -> int:
    """The augmentation seed of sample ``index`` when the key is a plain int."""
    return seed * SEED_STRIDE + index


class SegmentationDataset(Dataset):
    def __init__(
        self,
        layout: DatasetLayout,
        split: str,
        ids: list[str],
        transform: Callable[..., tuple[torch.Tensor, torch.Tensor | None]],
        lut: np.ndarray | None = None,
        read_masks: bool = True,
        seed: int = 0,
    ) -> None:
        self.layout = layout
        self.split = split
        self.ids = list(ids)
        self.transform = transform
        self.read_masks = read_masks
        self.seed = int(seed)
        self.valid = layout.valid_labels
        if lut is None:
            self.lut = None
        else:
            lut = np.asarray(lut)
            if lut.shape != (256,) or not np.issubdtype(lut.dtype, np.integer):
                raise UsageError(f"label lookup table must be 256 integers, got {lut.dtype} {lut.shape}")
            self.lut = lut.astype(label_dtype(lut))

    def __len__(self) -> int:
        return len(self.ids)

    def _parse_key(self, key: Any) -> tuple[int, int]:
        if isinstance(key, (tuple, list)):
            index, seed = int(key[0]), int(key[1])
        else:
            index = int(key)
            seed = sample_seed(self.seed, index)
        if not -len(self.ids) <= index < len(self.ids):
            raise IndexError(f"sample {index} out of range (dataset of {len(self.ids)})")
        return index % len(self.ids), seed

    def load(self, index: int):
        """The raw (PIL image, uint8 mask or None) of sample ``index``, validated."""
        image_id = self.ids[index]
        image = self.layout.read_image(self.split, image_id)
        if not self.read_masks:
            return image, None
        mask = self.layout.read_mask(self.split, image_id)
        if mask.shape != (image.size[1], image.size[0]):
            raise InputError(
                f"{self.layout.mask_path(self.split, image_id)}: mask is "
                f"{mask.shape[1]}x{mask.shape[0]} but its image is {image.size[0]}x{image.size[1]}"
            )
        bad = invalid_values(mask, self.valid)
        if bad:
            raise InputError(
                f"{self.layout.mask_path(self.split, image_id)}: mask value {bad[0]} is not a "
                f"{self.layout.label_space} label (0..{len(self.layout.class_names) - 1} or 255)"
            )
        return image, mask

    def __getitem__(self, key: Any) -> dict[str, Any]:
        """``{"image": uint8 [3, H, W], "label": uint8 [H, W] (int16 past 255 classes),
        "index"}``; no ``label`` when masks are not read (nothing would read it). The
        device normalises the image and widens the label where a loss needs it."""
        index, seed = self._parse_key(key)
        rng = random.Random(seed)
        image, mask = self.load(index)
        image_t, mask_t = self.transform(image, mask, rng)
        item: dict[str, Any] = {"image": image_t, "index": index}
        if mask_t is not None:
            # numpy indexing: a uint8 index tensor would be read by torch as a boolean mask
            item["label"] = torch.from_numpy(self.lut[mask_t.numpy()]) if self.lut is not None else mask_t
        return item

    def __repr__(self) -> str:
        return (
            f"SegmentationDataset({self.layout!r}, split={self.split!r}, n={len(self.ids)}, "
            f"transform={self.transform!r}, read_masks={self.read_masks})"
        )
