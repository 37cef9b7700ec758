"""What the tool knows about one dataset (``DatasetInfo``) and the colour maps.

This module imports nothing of the rest of the package but ``errors``, so that the data
layer (``data/layouts.py``) can import it without a cycle.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import numpy as np

from incseg_cli.errors import UsageError

IGNORE_INDEX = 255  # the void / ignore label every mask is read into
VOID_RGB = (224, 224, 192)  # VOC's colour of 255


def bit_palette() -> np.ndarray:
    """uint8 [256, 3]: the PASCAL VOC colour map (label id bits spread over R, G, B), which
    gives 256 distinct colours; 255 is (224, 224, 192) as in VOC."""
    palette = np.zeros((256, 3), dtype=np.uint8)
    for i in range(256):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        palette[i] = (r, g, b)
    return palette


def make_palette(colours: Any = None) -> np.ndarray:
    """A full 256 x 3 palette: ``colours`` (a list of [R, G, B] for the first ids) over the
    VOC colour map; UsageError naming the bad entry."""
    palette = bit_palette()
    if colours is None:
        return palette
    if not isinstance(colours, (list, tuple)) or len(colours) > 255:
        raise UsageError("palette must be a list of at most 255 [R, G, B] colours")
    for i, rgb in enumerate(colours):
        if (not isinstance(rgb, (list, tuple)) or len(rgb) != 3
                or not all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 255 for v in rgb)):
            raise UsageError(f"palette entry {i} is {rgb!r}, expected [R, G, B] with values 0..255")
        palette[i] = rgb
    return palette


@dataclass(frozen=True)
class TaskDef:
    """A task whose steps are listed explicitly (label ids; step 0 holds background 0)."""

    steps: tuple[tuple[int, ...], ...]
    rules: tuple[str, ...] = ()  # per-step image rules (``tasks.RULE_*``); default by overlap
    step_datasets: tuple[str, ...] = ()  # label space each step's images are read in


@dataclass(frozen=True)
class DatasetInfo:
    """Everything one dataset contributes: class names (index = label id), palette, the
    layout of its root, its tasks, preset recipe and expected image counts.

    ``description`` is set for a dataset of one's own: the JSON of its description file,
    stored in every checkpoint header so that later stages need no extra flag."""

    name: str
    class_names: tuple[str, ...]
    palette: np.ndarray = field(default_factory=bit_palette, compare=False, repr=False)
    ignore_index: int = IGNORE_INDEX
    # ``layout(root, label_space, class_names)`` -> a ``datasets.layout.DatasetLayout``
    layout: Callable[..., Any] | None = field(default=None, compare=False, repr=False)
    # foreground classes that ``A-B`` task names add up to (None: no such names)
    foreground: int | None = None
    standard_tasks: tuple[str, ...] = ()
    tasks: Mapping[str, TaskDef] = field(default_factory=dict, compare=False, repr=False)
    # the preset (``presets.BASE_PRESETS`` key) used when --preset is not given
    preset: str = "voc"
    # a built-in dataset's own preset: its changes to the papers' recipe at step 0 and later
    recipe: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)
    step_recipe: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)
    expected_counts: Mapping[str, int] = field(default_factory=dict, compare=False)
    description: Mapping[str, Any] | None = field(default=None, compare=False, repr=False)
    help: str = ""
    # named class orders (``datasets/orders.py``): each a sequence of every foreground class
    orders: Mapping[str, tuple[int, ...]] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.palette.shape != (256, 3) or self.palette.dtype != np.uint8:
            raise ValueError(f"{self.name}: palette must be uint8 [256, 3]")
        self.palette.setflags(write=False)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def custom(self) -> bool:
        return self.description is not None

    def class_id(self, name: str) -> int:
        """The label id of a class name (exact, then case-insensitive); UsageError if none."""
        if name in self.class_names:
            return self.class_names.index(name)
        lowered = [c.lower() for c in self.class_names]
        if name.lower() in lowered:
            return lowered.index(name.lower())
        raise UsageError(f"dataset {self.name} has no class {name!r}; its classes: {', '.join(self.class_names)}")

    def with_tasks(self, extra: Mapping[str, TaskDef]) -> "DatasetInfo":
        return dataclasses.replace(self, tasks={**self.tasks, **extra})

    def with_orders(self, extra: Mapping[str, tuple[int, ...]]) -> "DatasetInfo":
        return dataclasses.replace(self, orders={**self.orders, **extra})
