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

from incseg_cli.classnames import IGNORE_INDEX
from incseg_cli.data.layouts import DatasetLayout, invalid_values
from incseg_cli.errors import InputError, UsageError

SEED_STRIDE = 1_000_003


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
            self.lut = torch.from_numpy(lut.astype(np.int64))

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
        index, seed = self._parse_key(key)
        rng = random.Random(seed)
        image, mask = self.load(index)
        image_t, mask_t = self.transform(image, mask, rng)
        if mask_t is None:
            label = torch.full(tuple(image_t.shape[-2:]), IGNORE_INDEX, dtype=torch.int64)
        elif self.lut is not None:
            label = self.lut[mask_t]
        else:
            label = mask_t.to(torch.int64)
        return {"image": image_t.to(torch.float32), "label": label, "index": index}

    def __repr__(self) -> str:
        return (
            f"SegmentationDataset({self.layout!r}, split={self.split!r}, n={len(self.ids)}, "
            f"transform={self.transform!r}, read_masks={self.read_masks})"
        )
