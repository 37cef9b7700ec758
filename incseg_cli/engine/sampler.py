"""Batches of (index, sample seed) keys, a pure function of (seed, epoch).

The dataset draws each sample's augmentation from its sample seed, so the data a run sees
depends neither on the number of DataLoader workers nor on where a resumed run restarted.
Under torchrun every rank takes its own slice of the same global permutation.
"""

from __future__ import annotations

from typing import Iterator

import torch

_MIX = 0x9E3779B97F4A7C15


def sample_seed(seed: int, epoch: int, index: int) -> int:
    return (seed * 1_000_003 + epoch * 7_919 + index * 104_729 + _MIX) % (2**63 - 1)


class EpochBatchSampler(torch.utils.data.Sampler[list[tuple[int, int]]]):
    def __init__(self, size: int, batch_size: int, seed: int, shuffle: bool = True,
                 drop_last: bool = True, rank: int = 0, world_size: int = 1) -> None:
        self.size = size
        self.batch_size = batch_size  # per process
        self.seed = seed
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0
        self.skip = 0

    def set_epoch(self, epoch: int, skip_batches: int = 0) -> None:
        self.epoch = epoch
        self.skip = skip_batches

    def _global_batches(self) -> list[list[int]]:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 10_007 + self.epoch)
            order = torch.randperm(self.size, generator=g).tolist()
        else:
            order = list(range(self.size))
        step = self.batch_size * self.world_size
        batches = [order[i : i + step] for i in range(0, len(order), step)]
        if batches and self.drop_last and len(batches[-1]) < step:
            batches.pop()
        return batches

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        for batch in self._global_batches()[self.skip :]:
            mine = batch[self.rank :: self.world_size]
            yield [(i, sample_seed(self.seed, self.epoch, i)) for i in mine]

    def __len__(self) -> int:
        return self.batches_per_epoch - self.skip

    @property
    def batches_per_epoch(self) -> int:
        """``len(self._global_batches())`` without drawing the permutation."""
        step = self.batch_size * self.world_size
        return self.size // step if self.drop_last else -(-self.size // step)
