"""predict: a finished run's masks for images of one's own.

``predict(PredictOptions)`` writes, for every input image, ``DIR/<name>.png``: the label ids
of the run's classes at the image's own size, as a palette PNG in the dataset's palette,
with ``--overlay`` ``DIR/overlays/<name>.jpg``; then ``DIR/areas.csv`` and ``areas.json``
(each image's pixels and fraction per class) and ``DIR/predict.json`` (the run, the resize
policy, the precision and the counts).

The resize policy is ``evaluate``'s, from the run's manifest unless given
(``plan_evaluation``): on its val images ``predict`` writes what ``evaluate
--save-predictions`` writes, through the same code (``Predictor.labels`` is
``engine.evaluate.predict_batch``, the writing ``stages.evaluate.save_prediction``).

Safety: every input and the output are checked before ``DIR`` is touched; ``DIR`` is locked
(``engine/lock.py``); each file is written atomically, so an interrupted run loses nothing
and a rerun skips the images whose outputs are on disk (same run and settings: recorded as a
fingerprint in ``predict.json``; others are refused unless ``--force``).
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import stat
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence

import numpy as np
import torch
from PIL import Image

from incseg_cli import datasets, presets, signals
from incseg_cli.config import option
from incseg_cli.console import ProgressBar, log, log_file, warn
from incseg_cli.data.transforms import EVAL_PROTOCOLS, EvalTransform
from incseg_cli.datasets.layout import WIDE_GRAY_MODES, image_size, read_label_png, read_rgb, wide_gray_to_rgb
from incseg_cli.engine import distributed
from incseg_cli.engine.checkpoint import Checkpoint, load_checkpoint, model_from_checkpoint
from incseg_cli.engine.evaluate import predict_batch
from incseg_cli.engine.lock import OutputLock
from incseg_cli.engine.rundir import check_side_outputs
from incseg_cli.engine.speed import loader_speed_options
from incseg_cli.version import __version__
from incseg_cli.engine.device import (
    AMP_DTYPES, TF32_CHOICES, TF32_HELP, amp_dtype, autotune, inference_amp, resolve_device, tf32_active,
    warn_tf32,
)
from incseg_cli.errors import IncompatibleError, IncsegError, InputError, Interrupted, OutputExistsError, UsageError
from incseg_cli.fileio import read_json_object, sha256_file, sha256_json, write_json, write_text
from incseg_cli.stages.evaluate import (
    OVERLAY_DIR,
    EvalPlan,
    label_ids,
    plan_evaluation,
    run_manifest,
    save_prediction,
)
from incseg_cli.visual import at_image_size

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm")
LIST_SUFFIX = ".txt"
SETTINGS_FILE = "predict.json"
AREAS_CSV = "areas.csv"
AREAS_JSON = "areas.json"
LOG_FILE = "log.txt"
VOID = "void"  # the JSON key and CSV column of pixels the crop protocol leaves unpredicted
# Files and folders one input folder may hold (links followed): a walk stops with an error
# past it rather than run for ever (a mount of the whole disk, a link to /).
MAX_FOLDER_ENTRIES = 100_000


@dataclass(kw_only=True)
class PredictOptions:
    """Everything ``incseg predict`` takes."""

    run: Path = option(required=True, argument=True, metavar="RUN",
                       help="A finished run directory or its checkpoint.pt.")
    inputs: list[Path] = option(required=True, argument=True, metavar="INPUT...",
                                help="Images, folders (searched recursively, links followed, each real folder "
                                     "once; hidden files and folders skipped; at most "
                                     f"{MAX_FOLDER_ENTRIES:,} entries a folder) or list files ({LIST_SUFFIX}: one "
                                     "image path per line, relative to the list file; blank lines and # comments "
                                     "skipped). a.jpg and a.png in one folder are refused (both would be a.png).")
    out: Path = option(required=True, metavar="DIR",
                       help="Output folder: DIR/NAME.png per image (NAME: the file name without its suffix; "
                            "for a folder's images their path inside it, subfolders kept), areas.csv, "
                            "areas.json, predict.json.")
    overlay: bool = option(False, flag="--overlay",
                           help="Also write DIR/overlays/NAME.jpg: the image with its mask blended in.")
    eval_protocol: Optional[str] = option(choices=EVAL_PROTOCOLS,
                                          help="How an image is resized before the model, as evaluate: crop (shorter "
                                               "side to --eval-size, centre crop; pixels outside the crop are 255, "
                                               "void) or full (the whole image). [the run's; crop without a manifest]")
    eval_size: Optional[int] = option(help="Resize/crop size of the crop protocol in pixels. "
                                           "[the run's; 512 without a manifest]")
    batch_size: Optional[int] = option(help="Images per forward pass (under full, only images of one size share a "
                                            "batch). [the run's; 8 without a manifest]")
    device: str = option("auto", volatile=True, help="auto (CUDA if present), cpu, cuda or cuda:N.")
    amp: str = option("auto", choices=tuple(["auto", *AMP_DTYPES]),
                      help="Precision on CUDA: auto (bf16 on GPUs that compute it natively, compute capability 8.0 "
                           "and newer; fp16 below), bf16, fp16 or off (fp32, what evaluate uses: masks equal to "
                           "evaluate --save-predictions). CPU is always fp32.")
    tf32: str = option("off", choices=TF32_CHOICES, help=TF32_HELP, since_default=True)
    workers: Optional[int] = option(volatile=True,
                                    help="Image-reading worker processes. [the CPUs of this process, 1 to 8]")
    force: bool = option(False, flag="--force", volatile=True,
                         help="Predict every image again, also over masks of another run or other settings in DIR.")


# -- the run ---------------------------------------------------------------------------------
def finished_checkpoint(run: str | Path) -> Path:
    """The checkpoint of a finished run (a run directory or a checkpoint file); InputError
    when there is none, IncompatibleError when its run says it is not complete."""
    run = Path(run)
    if not run.exists():
        raise InputError(f"{run}: no such run directory or checkpoint")
    path = run / "checkpoint.pt" if run.is_dir() else run
    if not path.is_file():
        why = ("its training has not finished (last.pt is there: rerun the training command to finish it)"
               if (run / "last.pt").exists() else "not a finished run directory")
        raise InputError(f"{run}: no checkpoint.pt, {why}")
    manifest = path.parent / "manifest.json"
    if path.name == "checkpoint.pt" and manifest.is_file():
        status = read_json_object(manifest, "run manifest").get("status")
        if status != "complete":
            raise IncompatibleError(f"{path.parent}: the run is not complete (status {status or '?'} in "
                                    f"{manifest}); finish it (rerun its command) first")
    return path


def _check_settings(protocol: str | None, size: int | None, batch_size: int | None) -> None:
    if protocol is not None and protocol not in EVAL_PROTOCOLS:
        raise UsageError(f"--eval-protocol must be crop or full, got {protocol!r}")
    if size is not None and size < 16:
        raise UsageError(f"--eval-size must be >= 16, got {size}")
    if batch_size is not None and batch_size < 1:
        raise UsageError(f"--batch-size must be >= 1, got {batch_size}")


class Predictor:
    """A finished run's model on its device, with the resize policy (``EvalPlan``) and the
    precision it predicts with: what ``predict`` and the Python API (``api.Model``) share."""

    def __init__(self, ckpt: Checkpoint, plan: EvalPlan, device: torch.device, dtype: torch.dtype | None,
                 tf32: str = "off") -> None:
        self.ckpt, self.plan, self.device, self.dtype, self.tf32 = ckpt, plan, device, dtype, tf32
        self.task, self.step = ckpt.task, ckpt.step
        self.info = datasets.for_header(ckpt.header)
        self.to_label = label_ids(self.task, self.step)
        self.transform = EvalTransform(plan.protocol, plan.size)
        self.model = model_from_checkpoint(ckpt).to(device).eval()

    @classmethod
    def load(cls, run: str | Path, device: str = "auto", amp: str = "auto", protocol: str | None = None,
             size: int | None = None, batch_size: int | None = None, what: str = "these masks",
             tf32: str = "off") -> "Predictor":
        """The finished run ``run`` with ``evaluate``'s resize policy unless given; ``amp``
        auto is ``engine.device.inference_amp`` (bf16 where native, else fp16)."""
        _check_settings(protocol, size, batch_size)
        if amp != "auto" and amp not in AMP_DTYPES:
            raise UsageError(f"--amp must be one of auto, {', '.join(AMP_DTYPES)}, got {amp!r}")
        path = finished_checkpoint(run)
        ckpt = load_checkpoint(path)
        manifest, manifest_path = run_manifest(path, ckpt)
        plan = plan_evaluation(ckpt, manifest, manifest_path, {"eval_protocol": protocol, "eval_size": size},
                               batch_size, what=what)
        dev = resolve_device(device, tf32)
        warn_tf32(dev, tf32)
        return cls(ckpt, plan, dev, amp_dtype(amp, dev, auto=inference_amp(dev)), tf32)

    @property
    def classes(self) -> dict[int, str]:
        """Label id -> class name of every class the run predicts (background included)."""
        names = self.info.class_names
        return {int(i): names[i] if i < len(names) else str(int(i)) for i in self.to_label}

    @property
    def protocol(self) -> str:
        return self.plan.protocol

    @property
    def size(self) -> int:
        return self.plan.size

    def view_size(self, width: int, height: int) -> tuple[int, int]:
        """(width, height) of what the model sees of an image of that size."""
        return (self.size, self.size) if self.protocol == "crop" else (width, height)

    def view(self, image: Image.Image) -> torch.Tensor:
        """uint8 [3, h, w]: the image as the model sees it (evaluate's transform)."""
        return self.transform(image, None)[0]

    @torch.no_grad()
    def labels(self, views: torch.Tensor) -> np.ndarray:
        """uint8 [N, h, w]: label ids of a batch of views (uint8 [N, 3, h, w])."""
        pred = predict_batch(self.model, views, self.device, self.dtype)
        return self.to_label[pred.cpu().numpy()]

    def full_size(self, labels: np.ndarray, width: int, height: int) -> np.ndarray:
        return at_image_size(labels, width, height, self.protocol, self.size)

    def predict(self, images: Sequence[Image.Image], batch_size: int | None = None) -> list[np.ndarray]:
        """uint8 label ids at each image's own size, in order."""
        sizes = [self.view_size(*image.size) for image in images]
        out: list[Any] = [None] * len(images)
        for batch in batches_by_size(sizes, batch_size or self.plan.batch_size):
            labels = self.labels(torch.stack([self.view(images[i]) for i in batch]))
            for i, lab in zip(batch, labels):
                out[i] = self.full_size(lab, *images[i].size)
        return out

    def describe(self) -> dict[str, Any]:
        """What predict.json (and an exported program's metadata) records of the run and
        the policy."""
        h = self.ckpt.header
        return {
            "checkpoint": str(self.ckpt.path),
            "dataset": h["dataset"], "task": h["task"], "step": h["step"], "method": h["method"],
            "classes": {str(k): v for k, v in self.classes.items()},
            "protocol": {"name": self.protocol, "size": self.size if self.protocol == "crop" else None},
            "evaluation": self.plan.to_json(),
        }


def batches_by_size(sizes: Sequence[tuple[int, int]], batch_size: int) -> list[list[int]]:
    """Indices in batches of at most ``batch_size`` whose views share one size (a batch is
    one tensor), in order of each size's first image."""
    groups: dict[tuple[int, int], list[int]] = {}
    for i, size in enumerate(sizes):
        groups.setdefault(size, []).append(i)
    return [members[k:k + batch_size] for members in groups.values() for k in range(0, len(members), batch_size)]


def as_rgb(image: Any, where: str) -> Image.Image:
    """A PIL image, a numpy array (H x W gray, H x W x 3 RGB, H x W x 4 RGBA; uint8, or uint16
    gray) or a path, as the 8-bit RGB image ``read_rgb`` makes of a file."""
    if isinstance(image, (str, os.PathLike)):
        return read_rgb(Path(image))
    if isinstance(image, np.ndarray):
        ok = (image.dtype == np.uint8 and (image.ndim == 2 or (image.ndim == 3 and image.shape[2] in (3, 4)))
              or image.dtype == np.uint16 and image.ndim == 2)
        if not ok:
            raise UsageError(f"{where}: expected a uint8 H x W, H x W x 3 or H x W x 4 array (or uint16 H x W), "
                             f"got {image.dtype} {tuple(image.shape)}")
        image = Image.fromarray(np.ascontiguousarray(image))
    if not isinstance(image, Image.Image):
        raise UsageError(f"{where}: expected a PIL image, a numpy array or a path, got {type(image).__name__}")
    if image.mode in WIDE_GRAY_MODES:
        return wide_gray_to_rgb(Path(where), image)
    if image.mode == "F":
        raise UsageError(f"{where}: floating-point image (PIL mode F); convert it to 8-bit RGB")
    return image.convert("RGB")


# -- the inputs ------------------------------------------------------------------------------
@dataclass(frozen=True)
class ImageItem:
    path: Path  # as given or found
    name: str  # output name: DIR/<name>.png
    width: int
    height: int


def _folder_images(folder: Path, skipped: dict[str, int]) -> list[Path]:
    """The images under ``folder``, each folder's files in name order before its subfolders.
    Links are followed, but every real folder is walked once however many links lead to it
    (``a -> .`` ends there). What is not taken is counted in ``skipped``, by reason."""

    def skip(reason: str) -> None:
        skipped[reason] = skipped.get(reason, 0) + 1

    try:
        top = folder.stat()
    except OSError as err:
        raise InputError(f"{folder}: cannot read the folder ({err.strerror or err})") from None
    visited = {(top.st_dev, top.st_ino)}
    found: list[Path] = []
    walked = 0
    stack = [folder]
    while stack:
        current = stack.pop()
        try:
            with os.scandir(current) as listing:
                entries = sorted(listing, key=lambda e: e.name)
        except OSError as err:
            if current == folder:
                raise InputError(f"{folder}: cannot read the folder ({err.strerror or err})") from None
            skip("unreadable folder")
            continue
        subfolders = []
        for entry in entries:
            walked += 1
            if walked > MAX_FOLDER_ENTRIES:
                raise InputError(f"{folder}: more than {MAX_FOLDER_ENTRIES:,} files and folders under it (links "
                                 f"followed); give smaller folders or a list file ({LIST_SUFFIX})")
            if entry.name.startswith("."):
                skip("hidden")
                continue
            try:
                info = entry.stat()  # through a link: what it points to
            except OSError:
                skip("broken link or unreadable")
                continue
            if stat.S_ISDIR(info.st_mode):
                if (info.st_dev, info.st_ino) in visited:
                    skip("folder reached again through a link")
                    continue
                visited.add((info.st_dev, info.st_ino))
                subfolders.append(Path(entry.path))
            elif not stat.S_ISREG(info.st_mode):
                skip("not a regular file")  # a FIFO would block the read for ever
            elif os.path.splitext(entry.name)[1].lower() in IMAGE_SUFFIXES:
                found.append(Path(entry.path))
            else:
                skip("not an image (suffix)")
        stack.extend(reversed(subfolders))
    return found


def describe_skipped(skipped: dict[str, int]) -> str:
    """``skipped`` as one phrase: ``3 entries skipped (2 hidden, 1 not an image (suffix))``."""
    total = sum(skipped.values())
    reasons = ", ".join(f"{n} {reason}" for reason, n in sorted(skipped.items(), key=lambda kv: (-kv[1], kv[0])))
    return f"{total} entr{'ies' if total != 1 else 'y'} skipped ({reasons})"


def _list_images(path: Path) -> list[Path]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise InputError(f"{path}: cannot read the list file ({type(err).__name__})") from None
    found = []
    for number, line in enumerate(lines, 1):
        entry = line.strip()
        if not entry or entry.startswith("#"):
            continue
        image = Path(entry) if Path(entry).is_absolute() else path.parent / entry
        if not image.is_file():
            image = _image_of_id(path, entry)
        if image is None:
            raise InputError(f"{path}:{number}: {entry}: no such image file (nor an image id of the dataset the "
                             "list sits in)")
        found.append(image)
    return found


def _image_of_id(list_file: Path, entry: str) -> Path | None:
    """The image of a dataset's id list entry (``train.txt`` of a dataset of one's own, VOC's
    ``ImageSets/Segmentation/val.txt``): ``ID.<image suffix>`` in the dataset's image folder."""
    if "/" in entry or "\\" in entry:
        return None
    root = list_file.parent
    folders = [root / "images", root / "JPEGImages"]
    description = root / "incseg-dataset.json"
    if description.is_file():
        try:
            images = json.loads(description.read_text()).get("images")
        except (OSError, ValueError, AttributeError):
            images = None
        if isinstance(images, str):
            folders.insert(0, root / images)
    if root.name == "Segmentation" and root.parent.name == "ImageSets":
        folders.append(root.parent.parent / "JPEGImages")
    for folder in folders:
        for suffix in IMAGE_SUFFIXES:
            for name in (entry + suffix, entry + suffix.upper()):
                if (folder / name).is_file():
                    return folder / name
    return None


def resolve_inputs(inputs: Iterable[str | Path], skipped: dict[str, int] | None = None) -> list[ImageItem]:
    """Every image the inputs name, each once, with its output name and size (read from its
    header: an unreadable image fails here, before anything is written). ``skipped``, when
    given, receives the count of files left out of the input folders, by reason."""
    skipped = {} if skipped is None else skipped
    named: dict[str, Path] = {}
    seen: set[Path] = set()
    items = []
    for given in map(Path, inputs):
        if given.is_dir():
            found = [(p, p.relative_to(given).with_suffix("").as_posix()) for p in _folder_images(given, skipped)]
            if not found:
                warn(f"{given}: no images ({', '.join(IMAGE_SUFFIXES)}) in this folder")
        elif given.is_file() and given.suffix.lower() == LIST_SUFFIX:
            found = [(p, p.stem) for p in _list_images(given)]
        elif given.is_file():
            found = [(given, given.stem)]
        else:
            raise InputError(f"{given}: no such image, folder or list file")
        for path, name in found:
            real = path.resolve()
            if real in seen:
                skipped["same file as another input"] = skipped.get("same file as another input", 0) + 1
                continue
            seen.add(real)
            if name in named:
                raise UsageError(f"{named[name]} and {path} would both be written as {name}.png; "
                                 "give them in separate predict commands or rename one")
            named[name] = path
            width, height = image_size(path)
            items.append(ImageItem(path, name, width, height))
    if not items:
        raise InputError(f"no images in {', '.join(map(str, inputs))}")
    return items


# -- the output ------------------------------------------------------------------------------
def mask_path(out: Path, item: ImageItem) -> Path:
    return out / f"{item.name}.png"


def overlay_path(out: Path, item: ImageItem) -> Path:
    return out / OVERLAY_DIR / f"{item.name}.jpg"


def check_output(out: Path, run: Path, inputs: Sequence[Path], items: Sequence[ImageItem]) -> None:
    """``out`` can be written and writing it can change no input: not the run's files, not
    inside an input folder (its masks would be read as images next time), no output file
    that is an input image."""
    check_side_outputs(run, [("--out", out, True)])
    resolved = out.resolve()
    for given in inputs:
        folder = Path(given).resolve()
        if Path(given).is_dir() and (resolved == folder or folder in resolved.parents):
            raise UsageError(f"--out {out} lies inside the input folder {given}; its masks would be read as "
                             "images next time: choose --out outside it")
    sources = {item.path.resolve() for item in items}
    for item in items:
        for written in (mask_path(out, item), overlay_path(out, item)):
            if written.resolve() in sources:
                raise UsageError(f"--out {out}: {written} would overwrite an input image; choose another --out")


def fingerprint(predictor: Predictor) -> str:
    """What decides the masks: the weights, the resize policy and the precision."""
    return sha256_json({"checkpoint": sha256_file(predictor.ckpt.path), "protocol": predictor.protocol,
                        "size": predictor.size if predictor.protocol == "crop" else None,
                        "precision": str(predictor.dtype).replace("torch.", "") if predictor.dtype else "fp32",
                        # TF32 changes the masks only where it runs; absent otherwise (older records)
                        **({"tf32": True} if tf32_active(predictor.device, predictor.tf32) else {})})


def check_previous(out: Path, mark: str, force: bool) -> None:
    """Refuse an ``out`` that holds masks of another run or settings, or files predict did
    not write (``--force`` goes ahead)."""
    if not out.is_dir() or force:
        return
    settings = out / SETTINGS_FILE
    if settings.is_file():
        previous = read_json_object(settings, "predict settings", "; pass --force to predict again")
        if previous.get("fingerprint") != mark:
            raise OutputExistsError(
                f"{out}: holds masks of another run or other settings (see {settings}); --force predicts every "
                "image again, or choose another --out")
        return
    entries = sorted(p.name for p in out.iterdir() if not p.name.startswith("."))
    if entries:
        raise OutputExistsError(f"{out}: exists and was not written by incseg predict ({', '.join(entries[:3])}...); "
                                "choose another --out (or --force to write into it)")


def _done(out: Path, item: ImageItem, overlay: bool) -> bool:
    """Its outputs are on disk (written atomically: present means whole) and fit the image."""
    mask = mask_path(out, item)
    if not mask.is_file() or (overlay and not overlay_path(out, item).is_file()):
        return False
    try:
        return image_size(mask) == (item.width, item.height)
    except InputError:
        return False


class _Views(torch.utils.data.Dataset):
    """The model's view (uint8 [3, h, w]) of each image, read in loader workers."""

    def __init__(self, items: Sequence[ImageItem], transform: EvalTransform) -> None:
        self.items, self.transform = list(items), transform

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {"image": self.transform(read_rgb(self.items[index].path), None)[0], "index": index}


def area_counts(mask: np.ndarray) -> np.ndarray:
    return np.bincount(mask.ravel(), minlength=256)


def _areas(counts: np.ndarray, classes: dict[int, str], total: int) -> dict[str, Any]:
    def entry(n: int) -> dict[str, Any]:
        return {"pixels": int(n), "fraction": round(float(n) / total, 6) if total else 0.0}

    return {"areas": {name: entry(counts[i]) for i, name in classes.items()}, VOID: entry(counts[255])}


def write_areas(out: Path, items: Sequence[ImageItem], counts: Sequence[np.ndarray],
                classes: dict[int, str]) -> None:
    """``areas.json`` and ``areas.csv``: each image's pixels and fraction of the image per
    class (and void: pixels outside the crop protocol's crop)."""
    rows = []
    for item, count in zip(items, counts):
        rows.append({"image": str(item.path), "mask": mask_path(Path("."), item).as_posix(),
                     "width": item.width, "height": item.height,
                     **_areas(count, classes, item.width * item.height)})
    write_json(out / AREAS_JSON, {"classes": {str(k): v for k, v in classes.items()}, "images": rows})
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    names = [*classes.values(), VOID]
    writer.writerow(["image", "mask", "width", "height"]
                    + [f"{n} {kind}" for n in names for kind in ("pixels", "fraction")])
    for row in rows:
        values = [row["areas"][n] for n in classes.values()] + [row[VOID]]
        writer.writerow([row["image"], row["mask"], row["width"], row["height"]]
                        + [v for a in values for v in (a["pixels"], f"{a['fraction']:.6f}")])
    write_text(out / AREAS_CSV, buffer.getvalue())


def predict(options: PredictOptions) -> dict[str, Any]:
    """Write the masks (and overlays, areas, settings) of ``options.inputs`` into
    ``options.out``; returns what ``predict.json`` holds. See the module docstring."""
    if distributed.world_from_env().size > 1:
        raise UsageError("predict runs in one process; start it without torchrun")
    if options.workers is not None and options.workers < 0:
        raise UsageError(f"--workers must be >= 0, got {options.workers}")
    out = Path(options.out)
    # Everything is checked before the output is touched.
    predictor = Predictor.load(options.run, options.device, options.amp, options.eval_protocol,
                               options.eval_size, options.batch_size, tf32=options.tf32)
    left_out: dict[str, int] = {}
    items = resolve_inputs(options.inputs, left_out)
    check_output(out, Path(options.run), options.inputs, items)
    mark = fingerprint(predictor)
    workers = presets.workers_or_default(options.workers)
    with OutputLock(out):
        check_previous(out, mark, options.force)
        with log_file(out / LOG_FILE):
            try:
                return _predict(predictor, items, out, mark, options, workers, left_out)
            except BaseException as err:
                _record_stop(out, mark, err)
                raise


def _record_stop(out: Path, mark: str, err: BaseException) -> None:
    """predict.json says why a run stopped (the masks written so far are kept for a rerun)."""
    path = out / SETTINGS_FILE
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return
    if not isinstance(record, dict) or record.get("fingerprint") != mark or record.get("status") != "running":
        return
    stopped = isinstance(err, (KeyboardInterrupt, signals.Stop, Interrupted))
    lines = str(err).strip().splitlines() or [type(err).__name__]
    # an error re-raised from a loader worker carries the worker's traceback text
    record.update(status="interrupted" if stopped else "failed",
                  error=re.sub(r"^incseg_cli\.errors\.\w+: ", "", lines[-1].strip()))
    try:
        write_json(path, record)
    except (OSError, IncsegError):
        # No room for a new file (the disk that stopped the run is full): over the old
        # record's own bytes, compact, so that it fits in the space it already holds. The
        # error that stopped the run is the one to report, not this one.
        try:
            with open(path, "r+", encoding="utf-8") as fh:
                fh.write(json.dumps(record, separators=(",", ":")) + "\n")
                fh.truncate()
        except OSError:
            pass


def _predict(predictor: Predictor, items: list[ImageItem], out: Path, mark: str, options: PredictOptions,
             workers: int, left_out: dict[str, int]) -> dict[str, Any]:
    if options.force:
        # Masks of the replaced settings go before the new record is written: an interrupted
        # --force must not leave old masks that a rerun would take for done.
        for item in items:
            mask_path(out, item).unlink(missing_ok=True)
            overlay_path(out, item).unlink(missing_ok=True)
    pending = [i for i, item in enumerate(items) if options.force or not _done(out, item, options.overlay)]
    record = {
        "command": "predict", "status": "running", "fingerprint": mark, **predictor.describe(),
        "precision": str(predictor.dtype).replace("torch.", "") if predictor.dtype else "fp32",
        "device": str(predictor.device), "tf32": tf32_active(predictor.device, predictor.tf32),
        "batch_size": predictor.plan.batch_size, "overlay": options.overlay,
        "palette": f"{predictor.info.name}'s (every mask PNG carries it)", "images": len(items),
        "inputs": [str(p) for p in options.inputs], "inputs_skipped": left_out, "incseg_version": __version__,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    write_json(out / SETTINGS_FILE, record)
    skipped = len(items) - len(pending)
    log(f"predicting {len(pending)} images with {predictor.ckpt.describe()} ({predictor.protocol}"
        f"{f' {predictor.size} px' if predictor.protocol == 'crop' else ''}, {record['precision']} on "
        f"{predictor.device})" + (f"; {skipped} already written, skipped" if skipped else ""))
    if left_out:
        log(f"inputs: {describe_skipped(left_out)}; see inputs_skipped in {SETTINGS_FILE}")
    todo = [items[i] for i in pending]
    oblong = sum(1 for item in todo if item.width != item.height)
    if predictor.protocol == "crop" and oblong:
        warn(f"{oblong} of {len(todo)} images are not square: the run's crop protocol predicts only their centre "
             f"{predictor.size} x {predictor.size} crop after resizing, the sides are void (255); "
             "--eval-protocol full predicts every pixel of photos of any shape")
    counts: dict[int, np.ndarray] = {}
    palette = predictor.info.palette
    if todo:
        sizes = [predictor.view_size(item.width, item.height) for item in todo]
        loader = signals.Loader(_Views(todo, predictor.transform),
                                batch_sampler=batches_by_size(sizes, predictor.plan.batch_size),
                                **loader_speed_options(workers, predictor.device))
        with ProgressBar(len(todo), "predict", unit="img") as bar, \
                autotune(predictor.device, fixed_size=predictor.protocol == "crop"):
            for batch in loader:
                for index, labels in zip(batch["index"].tolist(), predictor.labels(batch["image"])):
                    item = todo[index]
                    image = read_rgb(item.path) if options.overlay else None
                    full = save_prediction(out, item.name, labels, item.width, item.height, predictor.protocol,
                                           predictor.size, palette, image)
                    counts[pending[index]] = area_counts(full)
                    bar.advance(1)
    all_counts = [counts[i] if i in counts else area_counts(read_label_png(mask_path(out, item)))
                  for i, item in enumerate(items)]
    write_areas(out, items, all_counts, predictor.classes)
    record.update(status="complete", predicted=len(todo), skipped=skipped,
                  finished=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    write_json(out / SETTINGS_FILE, record)
    extra = f", overlays in {out / OVERLAY_DIR}" if options.overlay else ""
    log(f"wrote {len(todo)} masks to {out}" + (f" ({skipped} were already there)" if skipped else "")
        + f"{extra}; class areas in {out / AREAS_CSV} and {AREAS_JSON}, settings in {SETTINGS_FILE}")
    return record
