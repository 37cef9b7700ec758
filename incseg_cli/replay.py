"""Image replay: a class-balanced memory of training images of earlier steps, mixed into a
step's training set (DKD-M; with any method, MiB-M or PLOP-M).

The selection is DKD's ``memory_sampling_balanced`` (``cvlab-yonsei/DKD`` ``utils/memory.py``)
with a seeded ``RandomState`` instead of the global one, and a refusal where the official
loop would never end (a whole round that finds no image). The memory of step t is written
to the run directory (``memory.json``) and read back from ``--prev`` at step t + 1, whose
candidates are that memory and the images of step t.

The feature memory of ALIFE-M is another thing (``bank.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from incseg_cli.errors import CorruptFileError, UsageError
from incseg_cli.fileio import read_json_object, write_json

MEMORY_FILE = "memory.json"
FORMAT = "incseg-replay"
VERSION = 1

Candidate = tuple[str, list[int]]  # (image id, the classes it is a candidate for)


def select_memory(candidates: Sequence[Candidate], classes: Sequence[int], size: int,
                  seed: int) -> dict[int, list[Candidate]]:
    """``size`` images of ``candidates``, about ``size / len(classes)`` per class, each
    counted for one class: ``{class: [(id, labels), ...] in pick order}``, every class of
    ``classes`` a key.

    As ``memory_sampling_balanced``: one ``RandomState(seed)`` shuffles the candidates, then
    the class list; then rounds visit the classes in that order, each taking the **first**
    remaining candidate whose labels contain it; a class with none left is skipped, and the
    selection stops as soon as ``size`` images are taken, even mid-round. Where a whole round
    finds nothing before ``size`` (the official loop never ends) it is a ``UsageError``
    naming the size and how many could be taken. ``classes`` in the official code are
    ``1..K``; ``candidates`` keep their given order before the shuffle (the loader order)."""
    if size < 1:
        raise UsageError(f"--replay-images must be at least 1 to select a memory, got {size}")
    rng = np.random.RandomState(seed)
    pool = [(str(name), [int(c) for c in labels]) for name, labels in candidates]
    rng.shuffle(pool)
    order = [int(c) for c in classes]
    rng.shuffle(order)
    chosen: dict[int, list[Candidate]] = {c: [] for c in sorted(order)}
    taken = 0
    while taken < size:
        found = False
        for c in order:
            index = next((i for i, (_, labels) in enumerate(pool) if c in labels), None)
            if index is None:
                continue
            chosen[c].append(pool.pop(index))
            taken += 1
            found = True
            if taken == size:
                break
        if not found:
            raise UsageError(f"--replay-images {size}: only {taken} images of earlier steps show an old class; "
                             f"give --replay-images {taken} or fewer")
    return chosen


@dataclass
class ReplayMemory:
    """The memory of one step: the images chosen per class, with their label lists."""

    step: int
    size: int
    seed: int
    by_class: dict[int, list[Candidate]]

    @property
    def ids(self) -> list[str]:
        """The chosen image ids, sorted (the official ``memory_list``)."""
        return sorted(name for entries in self.by_class.values() for name, _ in entries)

    @property
    def entries(self) -> list[Candidate]:
        """Every chosen (id, labels), class by class in pick order: the next step's first candidates."""
        return [entry for entries in self.by_class.values() for entry in entries]

    def to_json(self) -> dict[str, Any]:
        return {"format": FORMAT, "version": VERSION, "step": self.step, "size": self.size, "seed": self.seed,
                "classes": {str(c): [[name, labels] for name, labels in entries]
                            for c, entries in self.by_class.items()},
                "ids": self.ids}

    @classmethod
    def from_json(cls, obj: dict[str, Any], path: Path) -> "ReplayMemory":
        def bad(problem: str) -> CorruptFileError:
            return CorruptFileError(f"{path}: not a replay memory of incseg ({problem})")

        if obj.get("format") != FORMAT:
            raise bad(f"format {obj.get('format')!r}")
        try:
            by_class = {int(c): [(str(name), [int(v) for v in labels]) for name, labels in entries]
                        for c, entries in obj["classes"].items()}
            memory = cls(int(obj["step"]), int(obj["size"]), int(obj["seed"]), by_class)
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            raise bad(f"{type(err).__name__}: {err}") from None
        if memory.ids != obj.get("ids"):
            raise bad("its id list differs from its classes")
        return memory

    def write(self, directory: Path) -> Path:
        path = Path(directory) / MEMORY_FILE
        write_json(path, self.to_json())  # atomic
        return path

    @classmethod
    def read(cls, path: Path) -> "ReplayMemory":
        return cls.from_json(read_json_object(path, "replay memory"), path)

    def image_bytes(self, layout: Any) -> int:
        """What the memory's image files hold on disk (the training split's files)."""
        return sum(layout.image_path("train", i).stat().st_size for i in self.ids)

    def summary(self, nbytes: int | None = None) -> dict[str, Any]:
        """What the manifest records (the ids, per-class counts, the image bytes)."""
        return {"images": len(self.ids), "size": self.size, "seed": self.seed, "step": self.step,
                "per_class": {str(c): len(e) for c, e in self.by_class.items()}, "ids": self.ids,
                "bytes": nbytes}


def memory_of_run(run_dir: Path) -> ReplayMemory | None:
    """The replay memory a run trained with (``RUN/memory.json``), or None."""
    path = Path(run_dir) / MEMORY_FILE
    return ReplayMemory.read(path) if path.is_file() else None
