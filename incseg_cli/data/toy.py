"""A synthetic dataset in exactly the PASCAL VOC layout, for demos and tests.

``build_toy_dataset`` writes::

    OUT/JPEGImages/<id>.jpg                       RGB, JPEG quality 95
    OUT/SegmentationClassAug/<id>.png             palette PNG, VOC colours, 255 = void
    OUT/ImageSets/Segmentation/train_aug.txt      sorted ids, one a line
    OUT/ImageSets/Segmentation/val.txt
    OUT/classes.txt                               21 names, "background" first
    OUT/image_labels_train_aug.tsv                image_id<TAB>sorted class ids in the mask
    OUT/image_labels_val.tsv
    OUT/toy.json                                  generator parameters (+ measured stats)

so the VOC reader reads it like the real thing. With ``fmt="custom"`` the same images are
written as a dataset of one's own (``images/``, ``masks/``, ``train.txt``, ``val.txt`` and
an ``incseg-dataset.json`` naming dataset ``toy`` with the toy preset; see
``incseg_cli/datasets/custom.py``). Twenty object classes, each a (shape,
texture) pair out of 8 shapes x 4 textures; every shape and every texture is shared by
several classes and by old (1-10) and new (11-20) classes alike, and each object gets two
random colours, so neither one cue nor colour tells a class. Objects sit on
smooth random-colour noise; a 2-px band of 255 covers every visible object contour, as VOC's
void border does.

Every image is drawn from its own generator seeded with ``(seed, split, index)``: the output
is byte-identical for the same arguments whatever ``workers`` is.
"""

from __future__ import annotations

import functools
import json
import os
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Literal, Optional

import numpy as np
from PIL import Image

from incseg_cli import signals
from incseg_cli.config import option, validate
from incseg_cli.console import ProgressBar
from incseg_cli.datasets import DESCRIPTION_FILE
from incseg_cli.datasets.base import IGNORE_INDEX, bit_palette
from incseg_cli.engine.kinds import UNKNOWN, describe, kind_of, run_inside
from incseg_cli.errors import OutputExistsError, UsageError
from incseg_cli.fileio import atomic_dir
from incseg_cli.presets import pool_workers_option, workers_or_default

TOY_VERSION = 1
FORMAT = "incseg-toy"

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "diamond", "cross", "ring", "star", "crescent")
TEXTURES: tuple[str, ...] = ("solid", "stripes", "checker", "dots")


def _class_cells() -> list[tuple[int, int]]:
    """(shape, texture) of classes 1..20.

    Texture = (shape + offset) % 4. Old classes: offset 0 for all 8 shapes, then offset 2 for
    shapes 0-1; new classes: offset 1 for all 8 shapes, then offset 2 for shapes 2-3. All 20
    pairs differ; every shape occurs 2-3 times and every texture 5 times; both the old and the
    new half use all 8 shapes and all 4 textures.
    """
    old = [(s, s % 4) for s in range(8)] + [(s, (s + 2) % 4) for s in (0, 1)]
    new = [(s, (s + 1) % 4) for s in range(8)] + [(s, (s + 2) % 4) for s in (2, 3)]
    return old + new


CLASS_CELLS: list[tuple[int, int]] = _class_cells()
TOY_CLASS_NAMES: list[str] = ["background"] + [f"{SHAPES[s]}-{TEXTURES[t]}" for s, t in CLASS_CELLS]
NUM_CLASSES = len(TOY_CLASS_NAMES)  # 21, background included

# Generator parameters (stored in toy.json; changing any of them is a new version).
RADIUS = (0.15, 0.32)  # object radius as a fraction of the image size
OBJECTS = (1, 3)  # objects per image, inclusive
CENTER = (0.05, 0.95)  # object centres as a fraction of the image size
BAND = 2  # width in px of the void band on every visible contour
JPEG_QUALITY = 95
MIN_CONTRAST = 100.0  # Euclidean RGB distance between an object's two colours
MIN_BG_CONTRAST = 60.0  # ... and between its main colour and the background at its centre
PIXEL_NOISE = 6.0  # std of the Gaussian pixel noise on the whole image
SUPERSAMPLE = 2  # the image (not the mask) is drawn at 2x and box-filtered

SPLITS: tuple[tuple[str, str, int], ...] = (("train_aug", "toy", 0), ("val", "toyval", 1))


# Where each format puts the images, masks and the two lists (train list, val list).
FORMATS: dict[str, dict[str, str]] = {
    "voc": {"images": "JPEGImages", "masks": "SegmentationClassAug",
            "train": "ImageSets/Segmentation/train_aug.txt", "val": "ImageSets/Segmentation/val.txt"},
    "custom": {"images": "images", "masks": "masks", "train": "train.txt", "val": "val.txt"},
}
CUSTOM_NAME = "toy"  # the dataset name of the custom form


def voc_palette() -> list[int]:
    """The standard PASCAL VOC colour map as a flat list of 768 ints (255 -> 224,224,192)."""
    return bit_palette().ravel().tolist()


_PALETTE = voc_palette()


def toy_params(images: int, val_images: int, size: int, seed: int) -> dict[str, Any]:
    """Everything the output depends on; ``toy.json`` holds this (plus ``stats``)."""
    return {
        "format": FORMAT,
        "version": TOY_VERSION,
        "seed": seed,
        "images": images,
        "val_images": val_images,
        "size": size,
        "generator": {
            "objects_per_image": list(OBJECTS),
            "radius": list(RADIUS),
            "center": list(CENTER),
            "void_band_px": BAND,
            "jpeg_quality": JPEG_QUALITY,
            "min_contrast": MIN_CONTRAST,
            "min_background_contrast": MIN_BG_CONTRAST,
            "pixel_noise": PIXEL_NOISE,
            "supersample": SUPERSAMPLE,
            "rng": "numpy.random.default_rng([seed, split, index])",
        },
        "shapes": list(SHAPES),
        "textures": list(TEXTURES),
        "classes": [
            {"id": i + 1, "name": TOY_CLASS_NAMES[i + 1], "shape": SHAPES[s], "texture": TEXTURES[t]}
            for i, (s, t) in enumerate(CLASS_CELLS)
        ],
    }


def _validate(images: int, val_images: int, size: int, seed: int) -> None:
    if images < 1:
        raise UsageError(f"--images must be at least 1, got {images}")
    if val_images < 1:
        raise UsageError(f"--val-images must be at least 1, got {val_images}")
    if size < 32:
        raise UsageError(f"--size must be at least 32 px, got {size}")
    if size > 1024:
        raise UsageError(f"--size must be at most 1024 px, got {size}")
    if seed < 0:
        raise UsageError(f"--seed must be non-negative, got {seed}")


def image_ids(split: str, n: int) -> list[str]:
    """Ids of a split, zero-padded so that string order is index order."""
    prefix = {name: p for name, p, _ in SPLITS}[split]
    width = max(6, len(str(n - 1)))
    return [f"{prefix}_{i:0{width}d}" for i in range(n)]


# --------------------------------------------------------------------------------------------
# Drawing


@functools.lru_cache(maxsize=32)
def _interp(n: int, g: int) -> np.ndarray:
    """(n, g) bilinear weights that stretch g grid nodes over n pixels."""
    t = (np.arange(n) + 0.5) / n * (g - 1)
    i0 = np.clip(np.floor(t).astype(np.int64), 0, g - 2)
    w = t - i0
    m = np.zeros((n, g), dtype=np.float32)
    m[np.arange(n), i0] = 1 - w
    m[np.arange(n), i0 + 1] = w
    return m


@functools.lru_cache(maxsize=8)
def _grid(n: int, scale: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates (in 1x pixels) of an (n*scale)^2 grid, as (1, W) and (H, 1)."""
    c = ((np.arange(n * scale) + 0.5) / scale).astype(np.float32)
    return c[None, :], c[:, None]


def _smooth_noise(rng: np.random.Generator, n: int, g: int, amplitude: float) -> np.ndarray:
    grid = rng.uniform(-amplitude, amplitude, size=(g, g, 3)).astype(np.float32)
    m = _interp(n, g)
    rows = (m @ grid.reshape(g, g * 3)).reshape(n, g, 3)  # (y, j, c)
    return np.matmul(rows.transpose(0, 2, 1), m.T).transpose(0, 2, 1)  # (y, x, c)


def _shape_mask(shape: int, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Inside-test in the object's unit frame (radius 1, v pointing down)."""
    name = SHAPES[shape]
    if name == "circle":
        return u * u + v * v <= 1.0
    if name == "square":
        return np.maximum(np.abs(u), np.abs(v)) <= 0.8
    if name == "diamond":
        return np.abs(u) + np.abs(v) <= 1.1
    if name == "triangle":  # apex up, circumradius 1.2
        a = 0.6
        s3 = 0.8660254
        return (v <= a) & (-s3 * u - 0.5 * v <= a) & (s3 * u - 0.5 * v <= a)
    if name == "cross":
        au, av = np.abs(u), np.abs(v)
        return ((au <= 0.34) & (av <= 0.95)) | ((av <= 0.34) & (au <= 0.95))
    if name == "ring":
        d = u * u + v * v
        return (d <= 1.0) & (d >= 0.5**2)
    if name == "star":  # 5 points, outer radius 1.15, inner 0.45, a point up
        rho = np.sqrt(u * u + v * v)
        phi = np.arctan2(u, -v)  # 0 at the top
        t = np.abs(((phi * (5 / (2 * np.pi))) % 1.0) - 0.5) * 2  # 1 at a point, 0 between
        return rho <= 0.45 + 0.7 * t
    if name == "crescent":
        return (u * u + v * v <= 1.0) & ((u - 0.55) ** 2 + v * v >= 0.8**2)
    raise AssertionError(name)


# Largest extent of each shape in unit radii (bounding window), and its allowed rotation.
_EXTENT = {"circle": 1.0, "square": 1.14, "diamond": 1.1, "triangle": 1.2, "cross": 1.0,
           "ring": 1.0, "star": 1.15, "crescent": 1.0}
_MAX_ROT = {"circle": np.pi, "square": 0.3, "diamond": 0.3, "triangle": 0.3, "cross": 0.3,
            "ring": np.pi, "star": 0.3, "crescent": np.pi}


def _texture_select(texture: int, p: np.ndarray, q: np.ndarray, scale: float) -> np.ndarray | None:
    """Where the second colour goes; ``p``/``q`` are pixel offsets in the texture frame."""
    name = TEXTURES[texture]
    if name == "solid":
        return None
    if name == "stripes":
        return ((p / (scale * 6.0)) % 1.0) < 0.5
    if name == "checker":
        c = scale * 3.5
        return ((np.floor(p / c) + np.floor(q / c)) % 2) == 0
    if name == "dots":
        s = scale * 6.0
        fp = (p / s) % 1.0 - 0.5
        fq = (q / s) % 1.0 - 0.5
        return fp * fp + fq * fq <= 0.30**2
    raise AssertionError(name)


def _colours(rng: np.random.Generator, bg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    for _ in range(32):
        a, b = rng.uniform(0, 255, size=(2, 3)).astype(np.float32)
        if np.linalg.norm(a - b) >= MIN_CONTRAST and np.linalg.norm(a - bg) >= MIN_BG_CONTRAST:
            break
    return a, b


def _top_class(seed: int, split_id: int, index: int) -> int:
    """Class of an image's topmost (always visible) object: each block of 20 consecutive
    images gets every class once, in a shuffled order, so classes are balanced per split."""
    perm = np.random.default_rng([seed, split_id, index // 20, 1]).permutation(20)
    return int(perm[index % 20]) + 1


MIN_TOP_PIXELS = 16  # the topmost object must keep this many labelled pixels, else redraw


def render(seed: int, split_id: int, index: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Draw one image: (uint8 HxWx3 RGB, uint8 HxW labels with 0..20 and 255).

    The image's own generator is seeded with ``(seed, split_id, index)``. In the rare case
    that the topmost object ends up (nearly) outside the frame, the image is drawn again from
    the same generator, so every image shows its scheduled class.
    """
    rng = np.random.default_rng([seed, split_id, index])
    top = _top_class(seed, split_id, index)
    for _ in range(100):
        img, label = _draw(rng, top, size)
        if np.count_nonzero(label == top) >= MIN_TOP_PIXELS:
            break
    return img, label


def _draw(rng: np.random.Generator, top: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    ss = SUPERSAMPLE
    big = size * ss

    # Background: a smooth random colour field plus finer smooth noise (pixel noise below).
    base = rng.uniform(30, 225, size=3).astype(np.float32)
    coarse = int(rng.integers(2, 5))
    img = base + _smooth_noise(rng, big, coarse, 80.0) + _smooth_noise(rng, big, 9, 25.0)
    np.clip(img, 0, 255, out=img)

    inst = np.zeros((size, size), dtype=np.uint8)
    n_obj = int(rng.integers(OBJECTS[0], OBJECTS[1] + 1))
    classes = [int(c) for c in rng.integers(1, NUM_CLASSES, size=n_obj)]
    classes[-1] = top
    x1, y1 = _grid(size, 1)
    xs, ys = _grid(size, ss)
    for j, cls in enumerate(classes):
        shape, texture = CLASS_CELLS[cls - 1]
        name = SHAPES[shape]
        r = float(rng.uniform(*RADIUS)) * size
        cx, cy = (rng.uniform(*CENTER, size=2) * size).astype(np.float32)
        rot = float(rng.uniform(-_MAX_ROT[name], _MAX_ROT[name]))
        aspect = float(rng.uniform(0.85, 1.15))
        tex_rot = float(rng.uniform(0, np.pi))
        ci = np.clip(np.round([cy, cx]).astype(int), 0, size - 1)
        col_a, col_b = _colours(rng, img[ci[0] * ss + ss // 2, ci[1] * ss + ss // 2])

        # Window around the object (in 1x pixels), clipped to the image.
        ext = r * _EXTENT[name] * 1.16 + 1
        lo_x, hi_x = max(0, int(cx - ext)), min(size, int(np.ceil(cx + ext)) + 1)
        lo_y, hi_y = max(0, int(cy - ext)), min(size, int(np.ceil(cy + ext)) + 1)
        if lo_x >= hi_x or lo_y >= hi_y:
            continue
        cos, sin = np.cos(rot), np.sin(rot)

        def unit(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            dx, dy = (x - cx) / r, (y - cy) / r
            return (cos * dx + sin * dy) / aspect, (-sin * dx + cos * dy) * aspect

        # Label: inside-test at 1x pixel centres.
        m1 = _shape_mask(shape, *unit(x1[:, lo_x:hi_x], y1[lo_y:hi_y]))
        inst[lo_y:hi_y, lo_x:hi_x][m1] = j + 1

        # Image: drawn at ss x, box-filtered below.
        xw, yw = xs[:, lo_x * ss:hi_x * ss], ys[lo_y * ss:hi_y * ss]
        m2 = _shape_mask(shape, *unit(xw, yw))
        tc, ts = np.cos(tex_rot), np.sin(tex_rot)
        p = (tc * (xw - cx) + ts * (yw - cy)) * ss
        q = (-ts * (xw - cx) + tc * (yw - cy)) * ss
        sel = _texture_select(texture, p, q, float(ss))
        window = img[lo_y * ss:hi_y * ss, lo_x * ss:hi_x * ss]
        if sel is None:
            window[m2] = col_a
        else:
            window[m2 & ~sel] = col_a
            window[m2 & sel] = col_b

    img = sum(img[i::ss, j::ss] for i in range(ss) for j in range(ss)) * (1.0 / (ss * ss))
    img += rng.normal(0.0, PIXEL_NOISE, size=img.shape).astype(np.float32)
    img = np.clip(np.rint(img), 0, 255).astype(np.uint8)

    # Labels, with a void band where the instance map changes (both sides: BAND = 2 px).
    lut = np.array([0] + classes, dtype=np.uint8)
    label = lut[inst]
    band = np.zeros_like(inst, dtype=bool)
    dh = inst[:, 1:] != inst[:, :-1]
    dv = inst[1:, :] != inst[:-1, :]
    band[:, 1:] |= dh
    band[:, :-1] |= dh
    band[1:, :] |= dv
    band[:-1, :] |= dv
    label[band] = IGNORE_INDEX
    return img, label


# --------------------------------------------------------------------------------------------
# Writing


def _write_chunk(args: tuple[Path, int, int, int, int, list[str], str]) -> list[tuple[str, list[int], np.ndarray]]:
    """Render and write images ``start..start+len(ids)``; return (id, classes, pixel counts)."""
    root, seed, split_id, size, start, ids, fmt = args
    dirs = FORMATS[fmt]
    out = []
    for k, image_id in enumerate(ids):
        img, label = render(seed, split_id, start + k, size)
        Image.fromarray(img).save(root / dirs["images"] / f"{image_id}.jpg", quality=JPEG_QUALITY)
        png = Image.frombytes("P", (label.shape[1], label.shape[0]), label.tobytes())
        png.putpalette(_PALETTE)
        png.save(root / dirs["masks"] / f"{image_id}.png")
        counts = np.bincount(label.ravel(), minlength=256)
        present = [int(c) for c in np.nonzero(counts[1:NUM_CLASSES])[0] + 1]
        out.append((image_id, present, counts))
    return out


def _chunks(root: Path, seed: int, split_id: int, size: int, ids: list[str], chunk: int, fmt: str) -> Iterator[tuple]:
    for start in range(0, len(ids), chunk):
        yield (root, seed, split_id, size, start, ids[start:start + chunk], fmt)


def _label_table(rows: list[tuple[str, list[int]]]) -> str:
    return "image_id\tclasses\n" + "".join(f"{i}\t{','.join(map(str, c))}\n" for i, c in rows)


@dataclass
class ToySummary:
    """What ``build_toy_dataset`` did (``skipped``: the output was already up to date)."""

    out: Path
    params: dict[str, Any]
    stats: dict[str, Any] = field(default_factory=dict)
    skipped: bool = False
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "out": str(self.out),
            "skipped": self.skipped,
            "seconds": round(self.seconds, 3),
            "images": self.params["images"],
            "val_images": self.params["val_images"],
            "size": self.params["size"],
            "seed": self.params["seed"],
            "num_classes": NUM_CLASSES,
            "stats": self.stats,
        }


def read_toy_json(out: Path) -> dict[str, Any] | None:
    try:
        return json.loads((Path(out) / "toy.json").read_text())
    except (OSError, ValueError):
        return None


def _is_complete(out: Path, params: dict[str, Any], fmt: str) -> bool:
    meta = read_toy_json(out)
    if meta is None or {k: v for k, v in meta.items() if k not in ("stats", "layout")} != params:
        return False
    if meta.get("layout", "voc") != fmt:
        return False
    return all((out / FORMATS[fmt][split]).is_file() for split in ("train", "val"))


def custom_description(size: int) -> dict[str, Any]:
    """The ``incseg-dataset.json`` of the custom form."""
    dirs = FORMATS["custom"]
    return {
        "format": "incseg-dataset",
        "version": 1,
        "name": CUSTOM_NAME,
        "classes": TOY_CLASS_NAMES,
        "ignore": IGNORE_INDEX,
        "images": dirs["images"],
        "masks": dirs["masks"],
        "train": dirs["train"],
        "val": dirs["val"],
        "preset": "toy",
        "comment": f"the synthetic toy dataset ({size} px), written by `incseg make-toy-data --format custom`",
    }


@dataclass(kw_only=True)
class ToyDataOptions:
    """What ``incseg make-toy-data`` takes."""

    out: Path = option(required=True, old_positional=True, help="Output directory; written atomically.")
    format: Literal["voc", "custom"] = option(
        "voc", help="voc: exactly the PASCAL VOC layout; custom: a dataset of your own (images/, masks/, "
                    "incseg-dataset.json naming dataset toy, docs/own-data.md).")
    images: int = option(3000, help="Training images (train_aug list).")
    val_images: int = option(200, help="Validation images (val list).")
    size: int = option(64, help="Image side in pixels (32 to 1024).")
    seed: int = option(0, help="Random seed; same arguments give identical bytes.")
    workers: Optional[int] = pool_workers_option("draw the images (does not change the output)")
    force: bool = option(False, flag="--force", help="Replace OUT if it holds anything else.")


def make_toy_data(options: ToyDataOptions) -> "ToySummary":
    """``incseg make-toy-data``: ``build_toy_dataset`` with the command's options."""
    o = validate(options)
    return build_toy_dataset(o.out, images=o.images, val_images=o.val_images, size=o.size, seed=o.seed,
                             workers=workers_or_default(o.workers), force=o.force, fmt=o.format)


def build_toy_dataset(
    out: Path,
    images: int = 3000,
    val_images: int = 200,
    size: int = 64,
    seed: int = 0,
    workers: int = 1,
    force: bool = False,
    progress: bool = True,
    fmt: str = "voc",
) -> ToySummary:
    """Write the toy dataset to ``out`` atomically, in the VOC layout or (``fmt="custom"``)
    as a dataset of one's own; see the module docstring."""
    out = Path(out)
    _validate(images, val_images, size, seed)
    if fmt not in FORMATS:
        raise UsageError(f"unknown format {fmt!r}; known: {', '.join(FORMATS)}")
    dirs = FORMATS[fmt]
    params = toy_params(images, val_images, size, seed)
    if out.exists():
        if out.is_dir() and _is_complete(out, params, fmt) and not force:
            meta = read_toy_json(out) or {}
            return ToySummary(out, params, meta.get("stats", {}), skipped=True)
        if not force and not (out.is_dir() and not any(out.iterdir())):
            what = "a toy dataset with other parameters" if read_toy_json(out) else "other content"
            raise OutputExistsError(f"{out} holds {what}; pass --force to replace it")
        if read_toy_json(out) is None:  # --force replaces other content, never an incseg output

            held, run = kind_of(out), run_inside(out) if out.is_dir() else None
            if held not in (None, UNKNOWN) or run is not None:
                what = describe(held) if held not in (None, UNKNOWN) else f"the incseg run {run}"
                raise OutputExistsError(f"{out} holds {what}; --force never replaces an incseg output with a toy "
                                        "dataset, choose another --out")
        if not out.is_dir():
            out.unlink()

    t0 = time.perf_counter()
    totals = np.zeros(256, dtype=np.int64)
    class_images: dict[str, dict[str, int]] = {}
    with atomic_dir(out) as tmp:
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes it 0700; a dataset is for sharing
        for d in (dirs["images"], dirs["masks"], str(Path(dirs["train"]).parent)):
            (tmp / d).mkdir(parents=True, exist_ok=True)
        pool = ProcessPoolExecutor(max_workers=workers, initializer=signals.pool_worker_init) if workers > 1 else None
        try:
            for split, _, split_id in SPLITS:
                n = images if split_id == 0 else val_images
                ids = image_ids(split, n)
                chunk = max(1, min(100, -(-n // (4 * workers))))
                jobs = _chunks(tmp, seed, split_id, size, ids, chunk, fmt)
                results = pool.map(_write_chunk, jobs) if pool else map(_write_chunk, jobs)
                rows: list[tuple[str, list[int]]] = []
                per_class = np.zeros(NUM_CLASSES, dtype=np.int64)
                with _progress_bar(n, f"toy {split}", progress) as bar:
                    for res in results:
                        for image_id, present, counts in res:
                            rows.append((image_id, present))
                            totals += counts
                            per_class[present] += 1
                        bar.advance(len(res))
                class_images[split] = {TOY_CLASS_NAMES[c]: int(per_class[c]) for c in range(1, NUM_CLASSES)}
                (tmp / dirs["train" if split_id == 0 else "val"]).write_text(
                    "".join(f"{i}\n" for i, _ in rows))
                (tmp / f"image_labels_{split}.tsv").write_text(_label_table(rows))
        finally:
            if pool:
                pool.shutdown(cancel_futures=True)
        if fmt == "voc":
            (tmp / "classes.txt").write_text("\n".join(TOY_CLASS_NAMES) + "\n")
        else:
            (tmp / DESCRIPTION_FILE).write_text(json.dumps(custom_description(size), indent=2) + "\n")
        n_pix = int(totals.sum())
        stats = {
            "pixels": {
                "background": round(float(totals[0]) / n_pix, 4),
                "objects": round(float(totals[1:NUM_CLASSES].sum()) / n_pix, 4),
                "void": round(float(totals[IGNORE_INDEX]) / n_pix, 4),
            },
            "images_per_class": class_images,
        }
        meta = dict(params, stats=stats) if fmt == "voc" else dict(params, layout=fmt, stats=stats)
        (tmp / "toy.json").write_text(json.dumps(meta, indent=2) + "\n")
    return ToySummary(out, params, stats, skipped=False, seconds=time.perf_counter() - t0)


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


class _NoBar:
    def __enter__(self) -> "_NoBar":
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def advance(self, n: int = 1, postfix: str | None = None) -> None:
        pass


def _progress_bar(total: int, description: str, enabled: bool):
    if not enabled:
        return _NoBar()

    return ProgressBar(total, description)


__all__ = [
    "TOY_CLASS_NAMES",
    "SHAPES",
    "TEXTURES",
    "CLASS_CELLS",
    "ToySummary",
    "build_toy_dataset",
    "render",
    "toy_params",
    "voc_palette",
    "image_ids",
]
