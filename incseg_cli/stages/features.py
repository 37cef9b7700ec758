"""extract-features: ALIFE Step 2-1, the feature memory of the classes a model learned (ALIFE's
``extract_mem.py``).

For each class c learned at the model's step (background included at step 0), S vectors:
pick a training image of that step whose raw mask has c on more than 0.5% of its pixels
(uniformly, with replacement), augment it as in training, average the model's decoder
features over the crop's pixels labelled c (after the step's label remapping), and keep the
average when that region covers at least 0.5% of the crop. Unlike the official code this is
seeded: the same command gives the same bank. Classes are extracted and written one at a
time, so memory holds one class's vectors whatever the dataset size.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional

import numpy as np
import torch
import torch.nn.functional as F

from incseg_cli import presets, signals
from incseg_cli.config import option
from incseg_cli.console import ProgressBar, log, logs_beside
from incseg_cli.data.dataset import SegmentationDataset
from incseg_cli.data.splits import map_ids
from incseg_cli.data.transforms import TrainTransform, normalize_on_device
from incseg_cli.engine.checkpoint import Checkpoint, load_checkpoint, model_from_checkpoint
from incseg_cli.engine.outputs import COMPLETE, FileOutputs, Recipe
from incseg_cli.engine.rundir import input_paths
from incseg_cli.engine.speed import loader_speed_options, prepare_models
from incseg_cli.engine.device import amp_dtype, autotune, resolve_device, warn_tf32
from incseg_cli.engine.stage import seed_everything
from incseg_cli.errors import IncompatibleError, InputError, UsageError
from incseg_cli.fileio import sha256_file
from incseg_cli.bank import BankWriter, FeatureBank, check_bank, check_bank_fits, read_bank, space_name
from incseg_cli.models.deeplab import IncrementalDeepLab
from incseg_cli.models.util import freeze
from incseg_cli.stages.banks import StepImages, bank_output, feature_sources, recorded, single_process
from incseg_cli.stages.common import check_files, resolve_recipe, step_data
from incseg_cli.limits import AT_LEAST_1

MIN_REGION = 0.005  # a region must cover 0.5% of the image (candidates) / of the crop (samples)
MAX_DRAWS_PER_SAMPLE = 50  # give up on a class when fewer than 1 crop in 50 has a large enough region


@dataclass(kw_only=True)
class _Extraction:
    prev: Path = option(required=True, aliases=("--model",),
                        help="Run directory (or checkpoint.pt) whose step's classes to memorise: the final model of "
                             "stage t-1 (step 0: background included).")
    out: Path = option(required=True, volatile=True, help="Feature bank (HDF5) to write; never one of the inputs.")
    append: Optional[Path] = option(help="Copy the classes of this bank first (ALIFE-M stage t >= 2: the rotated bank "
                                         "of stage t-1, which must hold every class before --prev's step, in its "
                                         "features).")
    samples: int = option(1000, limit=AT_LEAST_1, help="Vectors per class (M in the paper).")
    batch_size: Optional[int] = option(help="Crops per forward pass.", preset=True)
    seed: int = option(0, help="Seed of the image draws and augmentations (the same seed gives the same bank).")


@dataclass(kw_only=True)
class ExtractFeaturesOptions(StepImages, _Extraction):
    """Every option of extract-features (``_Extraction``'s first in ``--help``, then the
    pass over the images)."""


def interpolation_matrix(size_in: int, size_out: int, device: torch.device | None = None,
                         dtype: torch.dtype = torch.float32, align_corners: bool = False) -> torch.Tensor:
    """``[size_in, size_out]``: column q holds the weights that linear upsampling (with
    ``align_corners`` as the model upsamples its logits) gives each input position."""
    eye = torch.eye(size_in, device=device, dtype=dtype).unsqueeze(0)
    return F.interpolate(eye, size=size_out, mode="linear", align_corners=align_corners)[0]


def region_means(features: torch.Tensor, masks: torch.Tensor,
                 align_corners: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean of the bilinearly upsampled ``features [B, D, h, w]`` over each ``masks [B, H, W]``
    region, without upsampling: the mask is pulled back through the (separable) interpolation,
    Σ_p M(p)·Up(f)(p) = Σ_q (A_h M A_wᵀ)(q)·f(q). Returns (means ``[B, D]``, pixel counts ``[B]``)."""
    b, d, h, w = features.shape
    height, width = masks.shape[-2:]
    a_h = interpolation_matrix(h, height, features.device, features.dtype, align_corners)
    a_w = interpolation_matrix(w, width, features.device, features.dtype, align_corners)
    masks = masks.to(features.dtype)
    weights = a_h @ masks @ a_w.T  # [B, h, w]
    counts = masks.sum(dim=(1, 2))
    sums = torch.einsum("bhw,bdhw->bd", weights, features)
    return sums / counts.clamp(min=1).unsqueeze(1), counts


def _raw_fractions(layout: Any, split: str, image_id: str) -> dict[int, float]:
    mask = layout.read_mask(split, image_id)
    values, counts = np.unique(mask, return_counts=True)
    return {int(v): float(c) / mask.size for v, c in zip(values, counts)}


def candidate_images(layout: Any, ids: list[str], classes: list[int], workers: int) -> dict[int, list[int]]:
    """Per class, the positions in ``ids`` whose raw mask has the class on > 0.5% of its pixels."""
    out: dict[int, list[int]] = {c: [] for c in classes}
    for i, (_, fractions) in enumerate(map_ids(layout, "train", ids, _raw_fractions, workers, "finding candidates")):
        for c in classes:
            if fractions.get(c, 0.0) > MIN_REGION:
                out[c].append(i)
    return out


class _ClassDraws:
    """Batch sampler of the one DataLoader that serves every class: batches of (image
    position, augmentation seed, class slot) keys. Class ``slot`` draws from its own seeded
    stream until the consumer moves ``current`` past it; batches the loader drew ahead for a
    finished class are dropped by the consumer. Each class sees the same draws whatever the
    number of workers, so the bank does not depend on it."""

    def __init__(self, plan: list[tuple[int, list[int]]], batch_size: int, seed: int) -> None:
        self.plan = plan  # (class label, candidate image positions) in extraction order
        self.batch_size = batch_size
        self.seed = seed
        self.current = 0

    def __iter__(self) -> Iterator[list[tuple[int, int, int]]]:
        for slot, (label, candidates) in enumerate(self.plan):
            rng = np.random.default_rng([self.seed, label])
            pool = np.asarray(candidates)
            while self.current == slot:
                picks = rng.choice(pool, size=self.batch_size, replace=True)
                seeds = rng.integers(0, 2**62, size=self.batch_size)
                yield [(int(i), int(s), slot) for i, s in zip(picks, seeds)]


class _Tagged(torch.utils.data.Dataset):
    """The training crops of ``dataset``, each tagged with the class slot it was drawn for."""

    def __init__(self, dataset: SegmentationDataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int, int]) -> dict[str, Any]:
        index, seed, slot = key
        return {**self.dataset[(index, seed)], "slot": slot}


@torch.no_grad()
def crop_vectors(model: IncrementalDeepLab, batch: dict[str, torch.Tensor], channel: int, device: torch.device,
                 amp: torch.dtype | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """One loader batch on ``device``: the model's features averaged over each crop's
    pixels of ``channel`` (``[B, D]``, float32) and whether that region covers at least
    0.5% of the crop (``[B]``)."""
    image = normalize_on_device(batch["image"], device)
    masks = batch["label"].to(device, non_blocking=True) == channel
    with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
        features = model(image, upsample=False)["features"]
    means, counts = region_means(features.float(), masks, model.spec.align_corners)
    return means, counts >= MIN_REGION * masks[0].numel()


@torch.no_grad()
def extract_classes(model: IncrementalDeepLab, dataset: SegmentationDataset, plan: list[tuple[int, list[int]]],
                    channels: list[int], samples: int, batch_size: int, seed: int, workers: int,
                    device: torch.device, amp: torch.dtype | None = None) -> Iterator[tuple[int, np.ndarray, int]]:
    """For each class of ``plan`` in turn: (label, its S vectors, crops rejected because the
    region was under 0.5%). One pinned DataLoader serves every class (its workers start
    once); the model runs under ``amp`` autocast when given, the region means in float32."""
    draws = _ClassDraws(plan, batch_size, seed)
    loader = signals.Loader(_Tagged(dataset), batch_sampler=draws, generator=torch.Generator().manual_seed(seed),
                            **loader_speed_options(workers, device))
    batches = iter(loader)
    dim = model.spec.head_channels
    for slot, ((label, _), channel) in enumerate(zip(plan, channels)):
        out = np.empty((samples, dim), dtype=np.float32)
        filled = drawn = rejected = 0
        with ProgressBar(samples, f"class {label}") as bar:
            for batch in batches:
                if int(batch["slot"][0]) != slot:  # drawn ahead for the class before
                    continue
                means, large = crop_vectors(model, batch, channel, device, amp)
                large = large.cpu()
                rejected += int((~large).sum())
                keep = large.nonzero().flatten()[: samples - filled]
                out[filled : filled + len(keep)] = means.cpu().numpy()[keep.numpy()]
                filled += len(keep)
                drawn += len(large)
                bar.advance(len(keep))
                if filled == samples:
                    break
                if drawn >= MAX_DRAWS_PER_SAMPLE * samples:
                    raise InputError(
                        f"class {label}: only {filled} of {drawn} augmented crops had a region of at least "
                        f"{100 * MIN_REGION:g}% of the crop; lower --samples or use a larger --crop-size"
                    )
        draws.current = slot + 1  # before the loader asks its sampler for the next batch
        yield label, out, rejected


def _check_append(bank: FeatureBank, model: Checkpoint, model_sha: str, new_classes: list[int]) -> None:
    """The bank to extend must be the memory of the classes before the model's step, in the
    model's feature space (ALIFE-M stage t ≥ 2: the rotated bank of stage t−1)."""
    overlap = sorted(set(bank.labels) & set(new_classes))
    if overlap:
        raise IncompatibleError(f"{bank.path}: already holds classes {overlap} that --prev's step {model.step} "
                                "would extract")
    h, step = model.header, model.step
    check_bank_fits(bank, dataset=h["dataset"], step=step, classes=model.task.old_classes(step),
                    feature_dim=model.spec.head_channels, sources=feature_sources(model_sha, h),
                    model=f"--prev {model.path}", purpose=f"appending the classes of step {step}")


def bank_summary(report: dict[str, Any], **extra: Any) -> dict[str, Any]:
    a = report["attrs"]
    return {"bank": report["path"], "dataset": a.get("dataset"), "task": a.get("task"), "step": a.get("step"),
            "space": a.get("space"), "feature_dim": a.get("feature_dim"),
            "source_checkpoint_sha256": a.get("source_checkpoint_sha256"),
            "classes": {str(c["label"]): c.get("count") for c in report["classes"]}, **extra}


@logs_beside("out")
def extract_features(opts: ExtractFeaturesOptions) -> dict[str, Any]:
    """Write the bank ``opts.out``; returns a summary (classes and counts, seconds)."""
    single_process("extract-features")
    model_ckpt = load_checkpoint(opts.prev)
    task, step = model_ckpt.task, model_ckpt.step
    opts = resolve_recipe(opts, task.dataset, presets.BASE_PRESETS)
    out = Path(opts.out)
    outputs = FileOutputs([bank_output("--out", out)], opts.force,
                          advice="banks are immutable: pass --force to replace it or choose another --out")
    outputs.check([*input_paths("--prev", opts.prev), *input_paths("--append", opts.append), ("--data", opts.data),
                   ("--splits", opts.splits)], inside_ok=("--data", "--splits"))
    classes = task.new_classes(step)
    model_sha = sha256_file(model_ckpt.path)
    appended = None
    if opts.append:
        if step == 0:
            raise UsageError(f"--append needs a model of step >= 1; {model_ckpt.path} is step 0 (nothing came before)")
        appended = read_bank(opts.append)
        _check_append(appended, model_ckpt, model_sha, classes)
    layout, root, ids, inputs = step_data(task, step, opts.data, opts.splits)
    inputs[str(model_ckpt.path)] = model_sha
    if appended is not None:
        inputs[str(appended.path)] = sha256_file(appended.path)
    opts = dataclasses.replace(opts, splits=root)
    recipe = Recipe.of([opts], inputs)
    with outputs.open(recipe.fingerprint) as state:  # one writer per bank, from the decision to the rename
        if state == COMPLETE:
            log(f"{out}: already written with the same options and inputs, skipping (--force rewrites it)")
            return bank_summary(check_bank(out), skipped=True)
        check_files(layout, "train", ids)

        started = time.monotonic()
        candidates = candidate_images(layout, ids, classes, max(opts.workers, 1))
        empty = [c for c in classes if not candidates[c]]
        if empty:
            raise InputError(f"no training image of step {step} has class {empty[0]} on more than "
                             f"{100 * MIN_REGION:g}% of its pixels; cannot build its memory")
        seed_everything(opts.seed)
        device = resolve_device(opts.device, opts.tf32)
        warn_tf32(device, opts.tf32)
        model = freeze(model_from_checkpoint(model_ckpt)).to(device)
        prepare_models(device, model)
        transform = TrainTransform(opts.crop_size, (opts.scale_min, opts.scale_max), hflip=opts.hflip)
        dataset = SegmentationDataset(layout, "train", ids, transform, lut=task.train_lut(step))
        attrs = {"feature_dim": model.spec.head_channels, "step": step, "dataset": task.dataset, "task": task.key,
                 "source_checkpoint_sha256": model_sha, "space": space_name(step), "source_checkpoint": str(model_ckpt.path),
                 "samples_per_class": opts.samples, "seed": opts.seed, "fingerprint": recipe.fingerprint,
                 "options": recorded(recipe.options), "appended_from": str(appended.path) if appended else ""}
        rejected: dict[str, int] = {}
        log(f"extracting {opts.samples} features for each of classes {classes} of {task.dataset}/{task.key} "
            f"step {step} from {len(ids)} training images on {device}")
        with BankWriter(out, attrs) as writer, autotune(device, fixed_size=True):
            if appended is not None:
                for e in appended.classes.values():
                    writer.add(e.label, e.features, e.name, e.source, e.step)
            extracted = extract_classes(
                model, dataset, [(c, candidates[c]) for c in classes], [task.model_index(c) for c in classes],
                opts.samples, opts.batch_size, opts.seed, opts.workers, device, amp_dtype(opts.amp, device))
            for c, vectors, rejected[str(c)] in extracted:
                writer.add(c, vectors, layout.class_names[c], "extracted", step)
        seconds = round(time.monotonic() - started, 3)
        log(f"wrote {out} ({len(writer.labels)} classes × {opts.samples} vectors in {seconds:.1f} s), {out.name}.log")
        return bank_summary(check_bank(out), skipped=False, seconds=seconds, extracted=classes,
                            appended=appended.labels if appended else [], rejected_crops=rejected,
                            candidates={str(c): len(v) for c, v in candidates.items()})
