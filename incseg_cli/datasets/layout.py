"""Dataset roots on disk: where the images, masks and image lists of a dataset live.

One small class per dataset (in the dataset's module of ``incseg_cli.datasets``), all
answering the same questions: which image ids a split has (in file order), where an image
and its mask are, and how to read them. ``datasets.open_layout`` asks the registry for the
layout, which checks the directories a root must have and raises ``InputError`` naming the
first thing that is missing; the per-file checks are done by ``check-data`` and, sample by
sample, by the dataset. This module knows no dataset: the registry hands each layout the
class names of the label space it reads masks in.

Layouts are plain picklable objects (a root path and a few cached lists) so that DataLoader
and multiprocessing workers can receive them.
"""

from __future__ import annotations

import contextlib
import os
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
from PIL import Image

from incseg_cli.datasets.base import IGNORE_INDEX
from incseg_cli.errors import InputError, UsageError

SPLITS = ("train", "val")


def valid_label_table(num_classes: int) -> np.ndarray:
    """bool[256]: which mask values are legal in a label space of ``num_classes`` (its label
    ids and 255)."""
    valid = np.zeros(256, dtype=bool)
    valid[:num_classes] = True
    valid[IGNORE_INDEX] = True
    return valid


def check_split(split: str) -> None:
    if split not in SPLITS:
        raise UsageError(f"unknown split {split!r}; known: {', '.join(SPLITS)}")


@contextlib.contextmanager
def _opened(path: Path, what: str) -> Iterator[Image.Image]:
    """``Image.open(path)``, every failure of opening or reading it inside the block one
    InputError naming the file and ``what`` it is (PIL raises many types for corrupt files)."""
    try:
        with Image.open(path) as img:
            yield img
    except InputError:
        raise
    except FileNotFoundError:
        raise InputError(f"{path}: {what} not found") from None
    except Exception as err:
        raise InputError(f"{path}: unreadable {what} ({type(err).__name__}: {_short(err)})") from None


def read_label_png(path: Path) -> np.ndarray:
    """A label PNG as uint8 [H, W] of label ids (palette PNGs give their indices)."""
    with _opened(path, "mask") as img:
        img.load()
        mode = img.mode
        if mode in ("P", "L"):
            return np.array(img, dtype=np.uint8)
        if mode in WIDE_GRAY_MODES:
            arr = np.array(img)
        else:
            raise InputError(
                f"{path}: mask has PIL mode {mode}, expected a label map "
                "(8-bit grayscale or palette PNG of class ids)"
            )
    if arr.size and (arr.min() < 0 or arr.max() > 255):
        # a 16-bit label map: its values are class ids, which must not be rescaled
        value = int(arr.max()) if arr.max() > 255 else int(arr.min())
        raise InputError(f"{path}: {mode} mask holds value {value}, outside the label ids 0..255 "
                         "(save it as an 8-bit grayscale or palette PNG)")
    return arr.astype(np.uint8)


# PIL modes of grayscale images wider than 8 bits (16-bit PNGs open as "I;16" or "I").
WIDE_GRAY_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N")


def wide_gray_to_rgb(path: Path, img: Image.Image) -> Image.Image:
    """A 16-bit grayscale image scaled to 8 bits (0..65535 -> 0..255, rounded): PIL's own
    ``convert("RGB")`` clips every value above 255, which makes most images white."""
    arr = np.asarray(img)
    if arr.size and (arr.min() < 0 or arr.max() > 65535):
        raise InputError(f"{path}: {img.mode} image with values outside 0..65535; convert it to 8-bit RGB")
    gray = ((arr.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
    return Image.fromarray(np.repeat(gray[:, :, None], 3, axis=2), "RGB")


def read_rgb(path: Path) -> Image.Image:
    """An image file as a fully loaded 8-bit RGB PIL image; InputError naming the file if it
    fails. 16-bit grayscale is scaled to 8 bits; floating-point images are refused."""
    with _opened(path, "image") as img:
        img.load()
        if img.mode in WIDE_GRAY_MODES:
            return wide_gray_to_rgb(path, img)
        if img.mode == "F":
            raise InputError(f"{path}: floating-point image (PIL mode F); convert it to 8-bit RGB")
        return img.convert("RGB")


def image_size(path: Path) -> tuple[int, int]:
    """(width, height) from the file header, without decoding the pixels."""
    with _opened(path, "image") as img:
        return img.size


def _short(err: Exception) -> str:
    text = " ".join(str(err).split())
    return text[:200]


def read_lines(path: Path) -> list[str]:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as err:
        raise InputError(f"{path}: cannot read ({_short(err)})") from None
    return [line.strip() for line in text.splitlines() if line.strip()]


class DatasetLayout(ABC):
    """Common interface of the dataset roots; see the module docstring."""

    dataset: str = ""
    expected_counts: dict[str, int] = {}

    def __init__(self, root: str | os.PathLike, label_space: str | None = None,
                 class_names: Sequence[str] = ()) -> None:
        """``class_names``: those of ``label_space`` (the dataset's own when None), which
        ``datasets.open_layout`` passes."""
        if not class_names:
            raise UsageError(f"{type(self).__name__} needs the class names of its label space; "
                             "open a root with incseg_cli.datasets.open_layout")
        self.root = Path(root)
        self.label_space = label_space or self.dataset
        self.class_names: list[str] = list(class_names)
        self.valid_labels = valid_label_table(len(self.class_names))
        self._ids: dict[str, list[str]] = {}
        self._check_root()

    # -- to implement --------------------------------------------------------------------------
    def _check_root(self) -> None:
        if not self.root.is_dir():
            what = "is not a directory" if self.root.exists() else "does not exist"
            raise InputError(f"{self.root}: dataset root {what}")

    @abstractmethod
    def _load_ids(self, split: str) -> list[str]:
        """The ids of ``split`` in list order."""

    @abstractmethod
    def image_path(self, split: str, image_id: str) -> Path:
        """Where the image of ``image_id`` lives."""

    @abstractmethod
    def mask_path(self, split: str, image_id: str) -> Path:
        """Where the label PNG of ``image_id`` lives."""

    @abstractmethod
    def list_source(self, split: str) -> str:
        """Where the id list of ``split`` comes from, for reports (a path or a description)."""

    # -- common --------------------------------------------------------------------------------
    def ids(self, split: str) -> list[str]:
        check_split(split)
        if split not in self._ids:
            self._ids[split] = self._load_ids(split)
        return list(self._ids[split])

    def read_image(self, split: str, image_id: str) -> Image.Image:
        return read_rgb(self.image_path(split, image_id))

    def read_raw_mask(self, split: str, image_id: str) -> np.ndarray:
        """The mask as stored on disk, in the dataset's own label ids."""
        return read_label_png(self.mask_path(split, image_id))

    def read_mask(self, split: str, image_id: str) -> np.ndarray:
        return self.read_raw_mask(split, image_id)

    def __repr__(self) -> str:
        extra = "" if self.label_space == self.dataset else f", label_space={self.label_space!r}"
        return f"{type(self).__name__}({str(self.root)!r}{extra})"


class SubdirLayout(DatasetLayout):
    """A root with ``images/<sub>/<id>.jpg`` and ``annotations/<sub>/<id>.png``, one ``<sub>``
    per split, whose ids are the files of one of the two trees (COCO, ADE20K)."""

    SUBDIRS: dict[str, str] = {}
    IDS_DIR = "images"  # the tree whose file names are the ids of a split
    IDS_EXT = ".jpg"
    ROOT_HINT: str | None = None  # a subdirectory users often pass the parent of

    def _check_root(self) -> None:
        super()._check_root()
        for d in ("images", "annotations"):
            if not (self.root / d).is_dir():
                hint = ""
                if self.ROOT_HINT and (self.root / self.ROOT_HINT / d).is_dir():
                    hint = f" (did you mean {self.root / self.ROOT_HINT}?)"
                raise InputError(f"{self.root}: no {d}/ directory{hint}")

    def _ids_dir(self, split: str) -> Path:
        return self.root / self.IDS_DIR / self.SUBDIRS[split]

    def _no_ids(self, split: str) -> str:
        return f"no {self.IDS_DIR}/{self.SUBDIRS[split]}/ directory"

    def list_source(self, split: str) -> str:
        check_split(split)
        return f"sorted *{self.IDS_EXT} in {self._ids_dir(split)}"

    def _load_ids(self, split: str) -> list[str]:
        listing = self._ids_dir(split)
        if not listing.is_dir():
            raise InputError(f"{self.root}: {self._no_ids(split)}")
        n = len(self.IDS_EXT)
        return sorted(p[:-n] for p in os.listdir(listing) if p.endswith(self.IDS_EXT))

    def image_path(self, split: str, image_id: str) -> Path:
        check_split(split)
        return self.root / "images" / self.SUBDIRS[split] / f"{image_id}.jpg"

    def mask_path(self, split: str, image_id: str) -> Path:
        check_split(split)
        return self.root / "annotations" / self.SUBDIRS[split] / f"{image_id}.png"


def invalid_values(mask: np.ndarray, valid: np.ndarray) -> list[int]:
    """Mask values (sorted) that ``valid`` (bool[256]) does not allow."""
    counts = np.bincount(mask.ravel(), minlength=256)
    return [int(v) for v in np.flatnonzero((counts > 0) & ~valid)]


def classes_present(mask: np.ndarray) -> list[int]:
    """Sorted label ids present in ``mask``, 255 excluded (0 only when present)."""
    counts = np.bincount(mask.ravel(), minlength=256)
    counts[IGNORE_INDEX] = 0
    return [int(v) for v in np.flatnonzero(counts)]
