"""VOC's ``SegmentationClassAug`` and ``train_aug.txt``, built from SBD and VOC 2012.

The standard augmented set (Hariharan et al., "Semantic contours from inverse detectors",
ICCV 2011; the 10,582-image ``train_aug`` list of DeepLab and of every incremental
segmentation paper): the training ids are SBD's train and val ids plus VOC's train ids, less
VOC's val ids. A training id that SBD annotates takes SBD's class mask (``cls/<id>.mat``,
field ``GTcls.Segmentation``, labels 0..20 without void borders); one that only VOC annotates,
and every VOC val id, takes VOC's own ``SegmentationClass/<id>.png`` (void 255 on borders).
Masks are written as 8-bit palette PNGs whose indices are the labels, as VOC's are.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from incseg_cli.console import log, warn
from incseg_cli.data.splits import map_ids
from incseg_cli.datasets.base import bit_palette
from incseg_cli.errors import CorruptFileError, InputError
from incseg_cli.fileio import atomic_dir, write_text

SBD_DIR = Path("benchmark_RELEASE") / "dataset"
AUG_DIR = "SegmentationClassAug"
TRAIN_AUG = Path("ImageSets") / "Segmentation" / "train_aug.txt"
TRAIN_AUG_SIZE = 10582  # with the real VOC 2012 and SBD
VALID_LABELS = np.array([*range(21), 255])  # SBD has no void; a copy that marks some keeps it


def _ids(path: Path) -> list[str]:
    if not path.is_file():
        raise InputError(f"{path}: missing; the archive it comes from was not fully extracted")
    return [line.split()[0] for line in path.read_text().splitlines() if line.strip()]


def read_sbd_mask(path: Path) -> np.ndarray:
    """SBD's class mask: uint8 [H, W], labels 0..20 (255: void)."""
    from scipy.io import loadmat  # here: only this conversion needs scipy

    try:
        mat = loadmat(str(path), squeeze_me=True, struct_as_record=False)
        mask = np.asarray(mat["GTcls"].Segmentation)
    except (OSError, ValueError, KeyError, AttributeError, TypeError) as err:
        raise CorruptFileError(f"{path}: not an SBD class mask ({type(err).__name__}: {err})") from None
    if mask.ndim != 2 or mask.size == 0 or not np.isin(mask, VALID_LABELS).all():
        raise CorruptFileError(f"{path}: not an SBD class mask (shape {mask.shape}, labels up to {mask.max()})")
    return mask.astype(np.uint8)


def _palette() -> list[int]:
    return bit_palette().reshape(-1).tolist()


def _write_one(dirs: tuple[Path, Path, Path], source: str, image_id: str) -> None:
    """One mask into the new folder: from SBD's .mat (``source`` "sbd") or VOC's PNG."""
    sbd_cls, voc_masks, out = dirs
    if source == "sbd":
        mask = read_sbd_mask(sbd_cls / f"{image_id}.mat")
        image = Image.frombytes("P", (mask.shape[1], mask.shape[0]), np.ascontiguousarray(mask).tobytes())
        image.putpalette(_palette())
        image.save(out / f"{image_id}.png")
    else:
        src = voc_masks / f"{image_id}.png"
        if not src.is_file():
            raise InputError(f"{src}: missing from VOC 2012 (listed in its ImageSets/Segmentation)")
        shutil.copyfile(src, out / f"{image_id}.png")


def build_train_aug(voc_root: Path, sbd_root: Path, workers: int = 2) -> dict[str, int]:
    """Write ``SegmentationClassAug/`` (atomically, as a whole) and ``train_aug.txt`` under
    ``voc_root`` from SBD's extracted ``dataset/`` folder. Returns the counts."""
    lists = voc_root / "ImageSets" / "Segmentation"
    voc_train, voc_val = set(_ids(lists / "train.txt")), _ids(lists / "val.txt")
    sbd_ids = set(_ids(sbd_root / "train.txt")) | set(_ids(sbd_root / "val.txt"))
    train_aug = sorted((sbd_ids | voc_train) - set(voc_val))
    from_sbd = [i for i in train_aug if i in sbd_ids]
    from_voc = [i for i in train_aug if i not in sbd_ids] + list(voc_val)
    with atomic_dir(voc_root / AUG_DIR) as out:
        dirs = (sbd_root / "cls", voc_root / "SegmentationClass", out)
        for _ in map_ids(dirs, "sbd", from_sbd, _write_one, workers, "SBD masks to PNG"):
            pass
        for _ in map_ids(dirs, "voc", from_voc, _write_one, workers, "VOC masks"):
            pass
    write_text(voc_root / TRAIN_AUG, "".join(f"{i}\n" for i in train_aug))
    if len(train_aug) != TRAIN_AUG_SIZE:
        warn(f"{voc_root / TRAIN_AUG}: {len(train_aug):,} ids, not the {TRAIN_AUG_SIZE:,} of the full VOC 2012 + SBD")
    log(f"wrote {voc_root / AUG_DIR} ({len(from_sbd):,} masks from SBD, {len(from_voc):,} from VOC) and {TRAIN_AUG}")
    return {"train_aug": len(train_aug), "from_sbd": len(from_sbd), "from_voc": len(from_voc)}
