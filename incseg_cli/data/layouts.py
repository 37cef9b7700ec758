"""Dataset roots on disk: where the images, masks and image lists of each dataset live.

One small class per dataset (VOC, COCO, ADE20K), all answering the same questions: which
image ids a split has (in file order), where an image and its mask are, and how to read
them. ``open_layout`` checks the directories a root must have and raises ``InputError``
naming the first thing that is missing; the per-file checks are done by ``check-data`` and,
sample by sample, by the dataset.

Layouts are plain picklable objects (a root path and a few cached lists) so that DataLoader
and multiprocessing workers can receive them.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import os
from pathlib import Path

import numpy as np
from PIL import Image

from incseg_cli.classnames import IGNORE_INDEX, LABEL_SPACES, VOC_TO_COCO
from incseg_cli.errors import InputError, UsageError

SPLITS = ("train", "val")
DATASETS = ("voc", "coco", "ade")


def valid_label_table(label_space: str) -> np.ndarray:
    """bool[256]: which mask values are legal in ``label_space`` (its label ids and 255)."""
    valid = np.zeros(256, dtype=bool)
    valid[: len(LABEL_SPACES[label_space])] = True
    valid[IGNORE_INDEX] = True
    return valid


def voc_to_coco_lut() -> np.ndarray:
    """uint8[256] lookup table VOC label -> COCO id (255 stays 255; other values 255 too)."""
    lut = np.full(256, IGNORE_INDEX, dtype=np.uint8)
    for voc, coco in VOC_TO_COCO.items():
        lut[voc] = coco
    return lut


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise UsageError(f"unknown split {split!r}; known: {', '.join(SPLITS)}")


def read_label_png(path: Path) -> np.ndarray:
    """A label PNG as uint8 [H, W] of label ids (palette PNGs give their indices)."""
    try:
        with Image.open(path) as img:
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
    except InputError:
        raise
    except FileNotFoundError:
        raise InputError(f"{path}: mask not found") from None
    except Exception as err:  # PIL raises many types for corrupt files
        raise InputError(f"{path}: unreadable mask ({type(err).__name__}: {_short(err)})") from None
    if arr.size and (arr.min() < 0 or arr.max() > 255):
        # a 16-bit label map: its values are class ids, which must not be rescaled
        value = int(arr.max()) if arr.max() > 255 else int(arr.min())
        raise InputError(f"{path}: {mode} mask holds value {value}, outside the label ids 0..255 "
                         "(save it as an 8-bit grayscale or palette PNG)")
    return arr.astype(np.uint8)


# PIL modes of grayscale images wider than 8 bits (16-bit PNGs open as "I;16" or "I").
WIDE_GRAY_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N")


def _wide_gray_to_rgb(path: Path, img: Image.Image) -> Image.Image:
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
    try:
        with Image.open(path) as img:
            img.load()
            if img.mode in WIDE_GRAY_MODES:
                return _wide_gray_to_rgb(path, img)
            if img.mode == "F":
                raise InputError(f"{path}: floating-point image (PIL mode F); convert it to 8-bit RGB")
            return img.convert("RGB")
    except InputError:
        raise
    except FileNotFoundError:
        raise InputError(f"{path}: image not found") from None
    except Exception as err:  # PIL raises many types for corrupt files
        raise InputError(f"{path}: unreadable image ({type(err).__name__}: {_short(err)})") from None


def image_size(path: Path) -> tuple[int, int]:
    """(width, height) from the file header, without decoding the pixels."""
    try:
        with Image.open(path) as img:
            return img.size
    except FileNotFoundError:
        raise InputError(f"{path}: image not found") from None
    except Exception as err:  # PIL raises many types for corrupt files
        raise InputError(f"{path}: unreadable image ({type(err).__name__}: {_short(err)})") from None


def _short(err: Exception) -> str:
    text = " ".join(str(err).split())
    return text[:200]


def _read_lines(path: Path) -> list[str]:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as err:
        raise InputError(f"{path}: cannot read ({_short(err)})") from None
    return [line.strip() for line in text.splitlines() if line.strip()]


class DatasetLayout(ABC):
    """Common interface of the dataset roots; see the module docstring."""

    dataset: str = ""
    expected_counts: dict[str, int] = {}

    def __init__(self, root: str | os.PathLike, label_space: str | None = None) -> None:
        self.root = Path(root)
        self.label_space = label_space or self.dataset
        if self.label_space not in LABEL_SPACES:
            raise UsageError(f"unknown label space {self.label_space!r}; known: {', '.join(LABEL_SPACES)}")
        self.class_names: list[str] = list(LABEL_SPACES[self.label_space])
        self.valid_labels = valid_label_table(self.label_space)
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
        _check_split(split)
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


class VOCLayout(DatasetLayout):
    """PASCAL VOC 2012 with SBD's SegmentationClassAug (train_aug = 10,582, val = 1,449)."""

    dataset = "voc"
    expected_counts = {"train": 10582, "val": 1449}
    LIST_NAMES = {"train": ("train_aug", "train"), "val": ("val",)}
    LIST_DIRS = ("ImageSets/Segmentation", "list", "splits")
    MASK_DIRS = ("SegmentationClassAug", "SegmentationClass")

    def __init__(self, root: str | os.PathLike, label_space: str | None = None) -> None:
        self._list_files: dict[str, Path] = {}
        self._image_override: dict[str, dict[str, Path]] = {}
        self._mask_override: dict[str, dict[str, Path]] = {}
        super().__init__(root, label_space)
        if self.label_space not in ("voc", "coco"):
            raise UsageError(f"the VOC layout reads labels as voc or coco ids, not {self.label_space!r}")
        classes_txt = self.root / "classes.txt"
        if self.label_space == "voc" and classes_txt.is_file():
            names = _read_lines(classes_txt)
            if len(names) != len(LABEL_SPACES["voc"]):
                raise InputError(
                    f"{classes_txt}: {len(names)} class names, expected {len(LABEL_SPACES['voc'])} "
                    "(one per line for labels 0..20)"
                )
            self.class_names = names
        self._lut = voc_to_coco_lut() if self.label_space == "coco" else None

    def _check_root(self) -> None:
        super()._check_root()
        if not (self.root / "JPEGImages").is_dir():
            hint = ""
            for sub in ("VOC2012", "VOCdevkit/VOC2012"):
                if (self.root / sub / "JPEGImages").is_dir():
                    hint = f" (did you mean {self.root / sub}?)"
            raise InputError(f"{self.root}: no JPEGImages/ directory{hint}")
        if not any((self.root / d).is_dir() for d in self.MASK_DIRS):
            raise InputError(f"{self.root}: no SegmentationClassAug/ (or SegmentationClass/) directory")

    def list_candidates(self, split: str) -> list[Path]:
        _check_split(split)
        return [self.root / d / f"{n}.txt" for n in self.LIST_NAMES[split] for d in self.LIST_DIRS]

    def list_file(self, split: str) -> Path:
        if split not in self._list_files:
            for path in self.list_candidates(split):
                if path.is_file():
                    self._list_files[split] = path
                    break
            else:
                tried = ", ".join(str(p.relative_to(self.root)) for p in self.list_candidates(split))
                raise InputError(f"{self.root}: no image list for split {split} (looked for {tried})")
        return self._list_files[split]

    def list_source(self, split: str) -> str:
        return str(self.list_file(split))

    def _load_ids(self, split: str) -> list[str]:
        path = self.list_file(split)
        ids: list[str] = []
        images: dict[str, Path] = {}
        masks: dict[str, Path] = {}
        for line in _read_lines(path):
            fields = line.split()
            if "/" in fields[0] or fields[0].lower().endswith((".jpg", ".jpeg", ".png")):
                # WILSON/MiB "splits/" style: "/JPEGImages/<id>.jpg /SegmentationClassAug/<id>.png"
                image_id = Path(fields[0]).stem
                images[image_id] = self.root / fields[0].lstrip("/")
                if len(fields) > 1:
                    masks[image_id] = self.root / fields[1].lstrip("/")
            else:
                image_id = fields[0]
            ids.append(image_id)
        self._image_override[split] = images
        self._mask_override[split] = masks
        return ids

    def image_path(self, split: str, image_id: str) -> Path:
        if split in self._image_override and image_id in self._image_override[split]:
            return self._image_override[split][image_id]
        return self.root / "JPEGImages" / f"{image_id}.jpg"

    def mask_path(self, split: str, image_id: str) -> Path:
        if split not in self._mask_override:
            try:
                self.ids(split)
            except InputError:
                pass
        override = self._mask_override.get(split, {}).get(image_id)
        if override is not None and override.is_file():
            return override
        first = self.root / self.MASK_DIRS[0] / f"{image_id}.png"
        if first.is_file():
            return first
        second = self.root / self.MASK_DIRS[1] / f"{image_id}.png"
        if second.is_file():
            return second
        return override if override is not None else first

    def read_mask(self, split: str, image_id: str) -> np.ndarray:
        mask = self.read_raw_mask(split, image_id)
        if self._lut is None:
            return mask
        bad = invalid_values(mask, valid_label_table("voc"))
        if bad:
            raise InputError(
                f"{self.mask_path(split, image_id)}: mask value {bad[0]} is not a VOC label (0..20 or 255)"
            )
        return self._lut[mask]


class _SubdirLayout(DatasetLayout):
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
        _check_split(split)
        return f"sorted *{self.IDS_EXT} in {self._ids_dir(split)}"

    def _load_ids(self, split: str) -> list[str]:
        listing = self._ids_dir(split)
        if not listing.is_dir():
            raise InputError(f"{self.root}: {self._no_ids(split)}")
        n = len(self.IDS_EXT)
        return sorted(p[:-n] for p in os.listdir(listing) if p.endswith(self.IDS_EXT))

    def image_path(self, split: str, image_id: str) -> Path:
        _check_split(split)
        return self.root / "images" / self.SUBDIRS[split] / f"{image_id}.jpg"

    def mask_path(self, split: str, image_id: str) -> Path:
        _check_split(split)
        return self.root / "annotations" / self.SUBDIRS[split] / f"{image_id}.png"


class COCOLayout(_SubdirLayout):
    """COCO 2017 with COCO-Stuff thing maps converted to PNGs of thing ids (WILSON §4.5).

    ``split/<split>.txt``, when present, lists the ids instead of the annotation files."""

    dataset = "coco"
    expected_counts = {"train": 118287, "val": 5000}
    SUBDIRS = {"train": "train2017", "val": "val2017"}
    IDS_DIR = "annotations"
    IDS_EXT = ".png"

    def _listed(self, split: str) -> Path:
        return self.root / "split" / f"{split}.txt"

    def _no_ids(self, split: str) -> str:
        return f"no split/{split}.txt and {super()._no_ids(split)}"

    def list_source(self, split: str) -> str:
        _check_split(split)
        listed = self._listed(split)
        return str(listed) if listed.is_file() else super().list_source(split)

    def _load_ids(self, split: str) -> list[str]:
        listed = self._listed(split)
        if listed.is_file():
            return [line.split()[0] for line in _read_lines(listed)]
        return super()._load_ids(split)


class ADELayout(_SubdirLayout):
    """ADEChallengeData2016 (SceneParsing, 150 classes; label 0 = other)."""

    dataset = "ade"
    expected_counts = {"train": 20210, "val": 2000}
    SUBDIRS = {"train": "training", "val": "validation"}
    ROOT_HINT = "ADEChallengeData2016"


LAYOUTS: dict[str, type[DatasetLayout]] = {"voc": VOCLayout, "coco": COCOLayout, "ade": ADELayout}


def open_layout(dataset: str, root: str | os.PathLike, label_space: str | None = None) -> DatasetLayout:
    """Open a dataset root; ``InputError`` naming what is missing if it is not one."""
    if dataset not in LAYOUTS:
        raise UsageError(f"unknown dataset {dataset!r}; known: {', '.join(LAYOUTS)}")
    return LAYOUTS[dataset](root, label_space)


def invalid_values(mask: np.ndarray, valid: np.ndarray) -> list[int]:
    """Mask values (sorted) that ``valid`` (bool[256]) does not allow."""
    counts = np.bincount(mask.ravel(), minlength=256)
    return [int(v) for v in np.flatnonzero((counts > 0) & ~valid)]


def classes_present(mask: np.ndarray) -> list[int]:
    """Sorted label ids present in ``mask``, 255 excluded (0 only when present)."""
    counts = np.bincount(mask.ravel(), minlength=256)
    counts[IGNORE_INDEX] = 0
    return [int(v) for v in np.flatnonzero(counts)]
