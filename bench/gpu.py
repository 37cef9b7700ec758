"""A first run of incseg on a GPU box, then every stage timed at the VOC recipe.

**First, the commands as a user runs them** (``CLI checks``): on a small generated toy
dataset (``incseg make-toy-data``, ``prepare-splits``), ``train-base`` with CE (fp32) and with
``--loss bce`` (fp16 + GradScaler, its ``--amp auto``), ``train-step`` with every method
(ft with ``--amp fp16``, mib, plop, alife; wilson, fp16 + GradScaler, from the BCE step 0),
``evaluate`` and ``predict``, each as a subprocess with the default ``--device auto``, so that
device selection (``engine.distributed.device_for``) and each stage's precision are what
is checked; a training run whose manifest does not name a CUDA device fails. With several
GPUs, ``train-base`` and ``train-step --method mib`` also run under ``torchrun --nproc_per_node=N``
(DistributedDataParallel + SyncBatchNorm) and must record ``world_size`` N. Per check the
JSON (``cli``) has the command, exit code, seconds, ``pass`` / ``fail`` / ``skipped: ...`` and,
on failure, the last line of stderr (``stderr_last_line``) and the error line in it
(``error``). A check whose prerequisite failed is ``skipped: needs NAME``.

**Then the timing** (``stages``), on the device ``resolve_device("auto")`` gives (or
``--device``): DeepLabV3 ResNet-101, output stride 16, batch 24 (or the largest that fits),
512 px crops, VOC 15-5. Per stage (train-base CE and BCE, train-step ft / mib / plop / alife /
wilson, extract-features, fit-rotations, finetune-classifier, evaluate) and per
configuration (bf16 autocast or fp32; fp16 + GradScaler for the stages whose ``--amp auto``
it is, train-base BCE and WILSON; ``torch.compile`` off or on): images/s, seconds per
iteration, peak GPU memory, and the model FLOP utilisation (FLOPs of one iteration counted by
``FlopCounterMode``, achieved FLOP/s over the GPU's peak dense bf16 rate, from the table
below). The batches are the loader's (uint8 images and labels, pinned) held in memory and go
through the package's own code: ``Trainer.train_step`` with each method, ``crop_vectors`` of
extract-features and ``run_evaluation``. Then the real loader on JPEGs on disk (generated, or
``--data`` a VOC root): images/s with N workers against the model's, bytes per batch against
the float32 + int64 batches the loader handed over before, and train-base CE fed by that
loader.

    python bench/gpu.py                      # on the GPU box; JSON in bench/results/gpu.json
    python bench/gpu.py --dry-run --out /tmp/gpu.json   # CPU, tiny model, < 1 min (make test)

The whole run keeps to ``--budget`` seconds (default 420, for an 8-minute slot): a CLI check
starts only when its expected time is left (else ``skipped: budget``) and is stopped at the
time left (its process group gets SIGTERM, then SIGKILL); each measurement is a few warm-up
and timed iterations, capped at ``--stage-cap`` seconds, and a measurement that would not fit
(20 s, or 1.3 x the longest so far) is recorded as skipped; the JSON is written after each. An out-of-memory configuration is retried at half the batch and
recorded. The exit code is 1 when a CLI check failed or a measurement ended in an error.

``--dry-run`` runs the same code on the CPU: the CLI checks on a 32 px toy dataset with
``INCSEG_EMULATE_CUDA`` (``--emulate``, default 1 GPU) in their environment, so that the
CUDA branches of device selection, autocast and GradScaler are taken while the tensors stay
on the CPU (the JSON says ``emulated``), two at a time and beside the timing (about 30 s
on 2 cores); the timing at 32 px, batch 2, one timed iteration (bf16 and fp16 as CPU
autocast, ``--compile`` with the eager backend), so that the script cannot rot without a
test failing. ``INCSEG_EMULATE_CUDA`` set for the script itself emulates CUDA in the timing
too (figures are then meaningless: ``emulated`` in the JSON; ``--compile`` is skipped).
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from PIL import Image

from incseg_cli.data.dataset import SegmentationDataset
from incseg_cli.datasets import open_layout
from incseg_cli.data.transforms import TrainTransform
from incseg_cli.models.util import unwrap
from incseg_cli.engine.evaluate import run_evaluation
from incseg_cli.engine.optim import PolyLR, build_optimizer
from incseg_cli.engine.sampler import EpochBatchSampler
from incseg_cli.engine.speed import prepare_models
from incseg_cli.engine.device import autotune, resolve_device
from incseg_cli.engine.stage import make_train_loader
from incseg_cli.engine.trainer import Trainer
from incseg_cli.fileio import write_json
from incseg_cli.methods.alife import ALIFEClassifierFinetune, ALIFEStep1, RotationFitting, freeze_batchnorm
from incseg_cli.methods.base import Method
from incseg_cli.methods.ft import FineTuning
from incseg_cli.methods.mib import MiB
from incseg_cli.methods.plop import PLOP
from incseg_cli.models.util import freeze
from incseg_cli.methods.supervised import Supervised
from incseg_cli.methods.wilson import Wilson
from incseg_cli.models.deeplab import IncrementalDeepLab, ModelSpec, build_model
from incseg_cli.models.localizer import Localizer
from incseg_cli.models.rotations import CayleyRotations
from incseg_cli.stages.features import crop_vectors
from incseg_cli.tasks import get_task

sys.path.insert(0, str(Path(__file__).resolve().parent))
from old_paths import FloatItems  # noqa: E402  (the float32 + int64 items of before, for the bytes)

# Peak dense bf16 tensor FLOP/s by GPU name (vendor data sheets, no sparsity). The first
# entry whose key is in torch.cuda.get_device_name() applies, so the longer names come first.
PEAK_BF16_FLOPS: list[tuple[str, float]] = [
    ("H100 PCIe", 756e12),
    ("H100 NVL", 835e12),
    ("GH200", 989e12),
    ("H200", 989e12),
    ("H100", 989e12),
    ("H800", 989e12),
    ("H20", 148e12),
    ("B200", 2250e12),
    ("A100", 312e12),
    ("A800", 312e12),
    ("L40S", 362e12),
    ("L40", 181e12),
    ("L4", 121e12),
    ("RTX 4090", 165e12),
]
STEP_STAGES = ("train-step-ft", "train-step-mib", "train-step-plop", "train-step-alife", "train-step-wilson")
STAGES = ("train-base-ce", "train-base-bce", *STEP_STAGES, "extract-features", "fit-rotations", "finetune-classifier",
          "evaluate")
# fp16 + GradScaler is what --amp auto trains these in on CUDA (WILSON's official precision)
FP16_STAGES = ("train-base-bce", "train-step-wilson")
COMPILED_STAGES = ("train-base-ce", "evaluate")  # compile takes about a minute each: the two ends
BASE_CLASSES, NEW_CLASSES = 16, 5  # VOC 15-5: background + 15, then 5
ROTATED_FRACTION = 0.5  # fit-rotations: half the bank rotated (mixed signs), as at stage 2


def peak_bf16_flops(name: str | None) -> tuple[float | None, str | None]:
    for key, value in PEAK_BF16_FLOPS:
        if name and key in name:
            return value, key
    return None, None


@dataclass
class Settings:
    device: torch.device
    backbone: str
    crop: int
    batch: int
    warmup: int
    iterations: int
    stage_cap: float
    budget: float
    memory_rows: int
    loader_images: int
    loader_batches: int
    workers: list[int]
    compile_backend: str
    strict: bool  # raise instead of recording an error (the dry run)
    stages: list[str]
    emulated: bool = False  # torch.cuda is the CPU emulation (INCSEG_EMULATE_CUDA): no real figures
    out: Path | None = None  # the JSON, written after every measurement too (a run stopped early keeps them)
    started: float = field(default_factory=time.monotonic)
    longest: float = 0.0  # wall seconds of the longest measurement so far

    def left(self) -> float:
        return self.budget - (time.monotonic() - self.started)

    def fits(self, floor: float = 20.0) -> bool:
        """Whether another measurement can finish: ``floor`` seconds, or 1.3 x the longest so far."""
        return self.left() >= max(floor, 1.3 * self.longest)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _free(device: torch.device) -> None:
    """Give the finished configuration's GPU memory back (the next one's peak is its own)."""
    if device.type == "cuda":
        gc.collect()
        torch.cuda.empty_cache()


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def _peak_gib(device: torch.device) -> float | None:
    return round(torch.cuda.max_memory_allocated(device) / 2**30, 3) if device.type == "cuda" else None


# -- synthetic batches, as the loader hands them over ---------------------------------------------------
def synthetic_batch(batch: int, crop: int, classes: list[int], seed: int, device: torch.device) -> dict[str, torch.Tensor]:
    """uint8 images and blocky uint8 labels drawn from ``classes`` (plus 255 borders),
    pinned on CUDA as a loader with ``pin_memory`` gives them."""
    g = torch.Generator().manual_seed(seed)
    image = torch.randint(0, 256, (batch, 3, crop, crop), generator=g, dtype=torch.uint8)
    cells = max(1, crop // 32)
    pick = torch.randint(0, len(classes), (batch, cells, cells), generator=g)
    small = torch.tensor(classes, dtype=torch.uint8)[pick]
    label = small.repeat_interleave(crop // cells, 1).repeat_interleave(crop // cells, 2)
    label = torch.nn.functional.pad(label, (0, crop - label.shape[2], 0, crop - label.shape[1]), value=255)
    label[:, :, :: max(1, crop // 16)] = 255
    out = {"image": image, "label": label.contiguous(), "index": torch.arange(batch)}
    if device.type == "cuda":
        out = {k: v.pin_memory() for k, v in out.items()}
    return out


# -- the stages ----------------------------------------------------------------------------------------
@dataclass
class Runner:
    """One stage ready to run: ``step()`` does one iteration on the held batch."""

    step: Callable[[], Any]
    images: int
    keep: list[Any]  # models and methods, dropped together


def _spec(s: Settings, heads: list[int]) -> ModelSpec:
    return ModelSpec.for_backbone(s.backbone, heads, dilate_first_block=s.backbone != "tiny")


def _models(s: Settings, step: bool) -> tuple[IncrementalDeepLab, IncrementalDeepLab | None]:
    """(model, frozen old model): step 0 has no old model; a step model is the old one plus
    the new head (MiB init), on the device."""
    torch.manual_seed(0)
    base = build_model(_spec(s, [BASE_CLASSES]))
    if not step:
        return base.to(s.device), None
    model = build_model(_spec(s, [BASE_CLASSES]))
    model.load_state_dict(base.state_dict())
    model.add_step(NEW_CLASSES, "mib")
    return model.to(s.device), freeze(base).to(s.device)


def _trainer(s: Settings, model: torch.nn.Module, method: Method, params: list[dict], optimizer: str, lr: float,
             dtype: torch.dtype | None, tmp: Path) -> Trainer:
    opt = build_optimizer(params, optimizer, lr, 1e-4 if optimizer == "sgd" else 0.0, 0.9)
    sampler = EpochBatchSampler(10**6, s.batch, 0)
    # fp16 trains with a GradScaler, as the stages do (engine/stage.py)
    scaler = torch.amp.GradScaler(s.device.type) if dtype == torch.float16 else None
    return Trainer(model=model, method=method, loader=None, sampler=sampler, optimizer=opt,
                   scheduler=PolyLR(opt, 10**9), epochs=1, device=s.device, last_path=tmp / "last.pt",
                   fingerprint="bench", amp_dtype=dtype, grad_scaler=scaler)


def _train_runner(s: Settings, model: torch.nn.Module, method: Method, batch: dict, dtype: torch.dtype | None,
                  compiled: bool, tmp: Path, optimizer: str = "sgd", lr: float = 0.01) -> Runner:
    method.to(s.device)
    prepare_models(s.device, model, *method.frozen_modules().values(), *method.extra_modules().values())
    params = method.param_groups(unwrap(model), lr)
    trained = torch.compile(model, backend=s.compile_backend) if compiled else model
    trainer = _trainer(s, trained, method, params, optimizer, lr, dtype, tmp)
    if isinstance(method, PLOP):  # its pre-pass: the entropy thresholds, from the held batch
        method.before_train([{k: trainer._to_device(v) for k, v in batch.items()}], s.device)
    method.train_mode(trained)
    return Runner(lambda: trainer.train_step(batch), len(batch.get("index", ())), [model, method, trainer])


def _memory(s: Settings, dim: int, rotated: float) -> tuple[torch.Tensor, list[int]]:
    """A bank of BASE_CLASSES × memory_rows non-negative vectors (region means of ReLU
    features), the last ``rotated`` fraction of each class with mixed signs."""
    g = torch.Generator().manual_seed(3)
    memory = torch.relu(torch.randn(BASE_CLASSES, s.memory_rows, dim, generator=g) + 0.3)
    mixed = int(rotated * s.memory_rows)
    if mixed:
        memory[:, -mixed:] -= 0.2
    return memory.reshape(-1, dim), [s.memory_rows] * BASE_CLASSES


def build_stage(name: str, s: Settings, dtype: torch.dtype | None, compiled: bool, batch_size: int,
                tmp: Path) -> Runner:
    step_classes = [0, *range(BASE_CLASSES, BASE_CLASSES + NEW_CLASSES)]
    if name in ("train-base-ce", "train-base-bce"):
        model, _ = _models(s, step=False)
        batch = synthetic_batch(batch_size, s.crop, list(range(BASE_CLASSES)), 1, s.device)
        return _train_runner(s, model, Supervised(name.rsplit("-", 1)[1]), batch, dtype, compiled, tmp)
    if name in STEP_STAGES:
        model, old = _models(s, step=True)
        batch = synthetic_batch(batch_size, s.crop, step_classes, 2, s.device)
        if name == "train-step-ft":
            method: Method = FineTuning()
        elif name == "train-step-mib":
            method = MiB(old, BASE_CLASSES, 10.0)
        elif name == "train-step-plop":
            method = PLOP(old, BASE_CLASSES + NEW_CLASSES, 0.01, 0.0005)  # the VOC factors
        elif name == "train-step-alife":
            freeze_batchnorm([model.backbone, model.aspp])
            method = ALIFEStep1(old, 2.0, 1.0)
        else:
            labels = torch.zeros(batch_size, BASE_CLASSES + NEW_CLASSES - 1)
            labels[torch.arange(batch_size), BASE_CLASSES - 1 + torch.arange(batch_size) % NEW_CLASSES] = 1.0
            localizer = Localizer(model.body_channels, model.num_classes, model.spec.head_channels)
            method = Wilson(old_model=old, localizer=localizer, labels=labels, n_old=BASE_CLASSES, alpha=0.5,
                            pseudo_epochs=0, affinity=True, lambda_enc=1.0, lr_head=0.01, lr_localizer=0.01)
        return _train_runner(s, model, method, batch, dtype, compiled, tmp, lr=0.001)
    if name == "finetune-classifier":
        model, old = _models(s, step=True)
        for p in model.parameters():
            p.requires_grad_(False)
        for p in model.classifier.parameters():
            p.requires_grad_(True)
        memory, _ = _memory(s, model.spec.head_channels, 0.0)
        channels = torch.arange(BASE_CLASSES).repeat_interleave(s.memory_rows)
        method = ALIFEClassifierFinetune(old, memory, channels, 1.0, 10.0)
        batch = synthetic_batch(batch_size, s.crop, step_classes, 3, s.device)
        return _train_runner(s, model, method, batch, dtype, compiled, tmp, lr=0.001)
    if name == "fit-rotations":
        current, prev = _models(s, step=True)
        memory, counts = _memory(s, prev.spec.head_channels, ROTATED_FRACTION)
        method = RotationFitting(prev, freeze(current), memory, counts, torch.arange(BASE_CLASSES), 0.95, 10.0)
        rotations = CayleyRotations(BASE_CLASSES, prev.spec.head_channels).to(s.device)
        batch = synthetic_batch(batch_size, s.crop, step_classes, 4, s.device)
        batch.pop("label")  # fit-rotations reads no masks
        method.to(s.device)
        prepare_models(s.device, *method.frozen_modules().values())
        trainer = _trainer(s, rotations, method, method.param_groups(rotations, 0.01), "adam", 0.01, dtype, tmp)
        return Runner(lambda: trainer.train_step(batch), batch_size, [method, trainer])
    if name == "extract-features":
        model, _ = _models(s, step=False)
        model = freeze(model)
        prepare_models(s.device, model)
        run = torch.compile(model, backend=s.compile_backend) if compiled else model  # forwards .spec
        batch = synthetic_batch(batch_size, s.crop, list(range(BASE_CLASSES)), 5, s.device)

        def extract() -> None:
            means, large = crop_vectors(run, batch, 1, s.device, dtype)
            means.cpu(), large.cpu()  # the stage copies every batch's vectors to the host

        return Runner(extract, batch_size, [model, run])
    if name == "evaluate":
        model, _ = _models(s, step=False)
        model.eval()
        prepare_models(s.device, model)
        run = torch.compile(model, backend=s.compile_backend) if compiled else model
        batch = synthetic_batch(batch_size, s.crop, list(range(BASE_CLASSES)), 6, s.device)

        def evaluate() -> None:
            run_evaluation(run, [batch], BASE_CLASSES, s.device, dtype)

        return Runner(evaluate, batch_size, [model, run])
    raise ValueError(f"unknown stage {name!r}")


# -- measuring -------------------------------------------------------------------------------------------
def count_flops(runner: Runner) -> float:
    """FLOPs of one iteration (forward and backward), counted at the matmul/conv level."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        runner.step()
    return float(counter.get_total_flops())


def time_runner(runner: Runner, s: Settings, flops_per_iteration: float | None,
                peak: float | None) -> dict[str, Any]:
    """Warm-up, then timed iterations until ``iterations`` or the stage cap (at least 2)."""
    _reset_peak(s.device)
    warm_start = time.perf_counter()
    for _ in range(s.warmup):
        runner.step()
    _sync(s.device)
    warm_seconds = time.perf_counter() - warm_start
    start = time.perf_counter()
    n = 0
    while n < s.iterations and (n < 2 or time.perf_counter() - start < s.stage_cap):
        runner.step()
        n += 1
    _sync(s.device)
    seconds = (time.perf_counter() - start) / n
    out: dict[str, Any] = {"iterations": n, "warmup_seconds": round(warm_seconds, 3),
                           "seconds_per_iteration": round(seconds, 5),
                           "images_per_s": round(runner.images / seconds, 2), "peak_memory_gib": _peak_gib(s.device)}
    if flops_per_iteration:
        achieved = flops_per_iteration / seconds
        out["achieved_tflops"] = round(achieved / 1e12, 2)
        out["mfu_of_peak_bf16"] = round(achieved / peak, 4) if peak else None
    return out


PRECISIONS: dict[str, torch.dtype | None] = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}


def _oom(err: BaseException) -> bool:
    return isinstance(err, torch.cuda.OutOfMemoryError) or "out of memory" in str(err)


def measure(name: str, precision: str, compiled: bool, s: Settings, stage: dict[str, Any], peak: float | None,
            tmp: Path) -> dict[str, Any]:
    """One configuration of one stage; halves the batch on out-of-memory."""
    dtype = PRECISIONS[precision]
    record: dict[str, Any] = {"precision": precision, "compile": compiled}
    if dtype == torch.float16:
        record["grad_scaler"] = True
    batch = s.batch
    began = time.monotonic()
    while True:
        runner = None
        try:
            runner = build_stage(name, s, dtype, compiled, batch, tmp)
            record["batch"] = batch
            if "flops_per_image" not in stage and not compiled:  # count on an eager runner, once
                stage["flops_per_image"] = count_flops(runner) / batch
            flops = stage.get("flops_per_image", 0.0) * batch or None
            with autotune(s.device, fixed_size=True):  # every stage here sees one crop size, as in training
                record.update(time_runner(runner, s, flops, peak))
            record["wall_seconds"] = round(time.monotonic() - began, 2)  # building and counting included
            s.longest = max(s.longest, record["wall_seconds"]) if not compiled else s.longest
            return record
        except Exception as err:  # noqa: BLE001  (recorded; the run goes on)
            if s.strict:
                raise
            if _oom(err) and batch > 1:
                record.setdefault("out_of_memory_at_batch", []).append(batch)
                batch //= 2
                continue
            record["error"] = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
            record["traceback"] = traceback.format_exc(limit=4)
            return record
        finally:
            del runner
            _free(s.device)


# -- the loader on JPEGs ------------------------------------------------------------------------------
def write_jpeg_root(root: Path, images: int, seed: int = 0) -> Path:
    """A VOC-layout root of ``images`` smooth 500×375 JPEGs with block masks (VOC's size)."""
    rng = np.random.default_rng(seed)
    for sub in ("JPEGImages", "SegmentationClassAug", "ImageSets/Segmentation"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    ids = []
    for k in range(images):
        image_id = f"bench_{k:05d}"
        small = rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)
        photo = Image.fromarray(small).resize((500, 375), Image.BILINEAR)
        noisy = np.clip(np.asarray(photo, np.int16) + rng.integers(-12, 13, (375, 500, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(noisy).save(root / "JPEGImages" / f"{image_id}.jpg", quality=90)
        mask = np.kron(rng.integers(0, BASE_CLASSES, (6, 8)), np.ones((63, 63), np.int64))[:375, :500]
        Image.fromarray(mask.astype(np.uint8), mode="L").save(root / "SegmentationClassAug" / f"{image_id}.png")
        ids.append(image_id)
    for name in ("train_aug", "val"):
        (root / "ImageSets" / "Segmentation" / f"{name}.txt").write_text("\n".join(ids) + "\n")
    return root


def _batch_bytes(batch: dict[str, Any]) -> int:
    return sum(v.numel() * v.element_size() for v in batch.values() if torch.is_tensor(v))


def _batches(dataset: torch.utils.data.Dataset, s: Settings, workers: int):
    """Endless batches of the real training loader (pinned on CUDA), epoch after epoch."""
    loader, sampler = make_train_loader(dataset, s.batch, 0, workers, s.device)
    epoch = 0
    while True:
        sampler.set_epoch(epoch)
        yield from loader
        epoch += 1


def _rate(batches, skip: int, count: int, cap: float, device: torch.device,
          consume: Callable[[dict], Any] = lambda b: None) -> tuple[float, dict]:
    """Images/s over ``count`` batches (fewer past ``cap`` seconds, at least 2) after
    ``skip`` untimed ones (the workers starting, the first iterations)."""
    for _ in range(skip):
        consume(next(batches))
    _sync(device)
    start = time.perf_counter()
    images = n = 0
    while n < count and (n < 2 or time.perf_counter() - start < cap):
        batch = next(batches)
        consume(batch)
        images += batch["image"].shape[0]
        n += 1
    _sync(device)
    return images / (time.perf_counter() - start), batch


def loader_rate(dataset: torch.utils.data.Dataset, s: Settings, workers: int) -> dict[str, Any]:
    batches = _batches(dataset, s, workers)
    rate, last = _rate(batches, max(1, workers), s.loader_batches, s.stage_cap, s.device)
    batches.close()  # shuts the workers down
    return {"workers": workers, "images_per_s": round(rate, 2), "bytes_per_batch": _batch_bytes(last)}


def jpeg_dataset(s: Settings, tmp: Path, data: Path | None) -> SegmentationDataset:
    """VOC 15-5 step-0 training crops (random resized 0.5-2, flip) of ``data`` or of
    generated JPEGs, through the real reader and transform."""
    root = data if data is not None else write_jpeg_root(tmp / "jpegs", s.loader_images)
    layout = open_layout("voc", root)
    ids = layout.ids("train")[: max(s.loader_images, s.batch)]
    transform = TrainTransform(s.crop, (0.5, 2.0))
    return SegmentationDataset(layout, "train", ids, transform, lut=get_task("voc", "15-5").train_lut(0))


def bench_loader(s: Settings, dataset: SegmentationDataset, model_rates: dict[str, float]) -> dict[str, Any]:
    out: dict[str, Any] = {"images": len(dataset), "crop": s.crop, "batch": s.batch, "cpus": os.cpu_count(),
                           "by_workers": []}
    for workers in s.workers:
        if s.left() < 30 and out["by_workers"]:
            out.setdefault("skipped", []).append(f"workers {workers}: time budget")
            continue
        out["by_workers"].append(loader_rate(dataset, s, workers))
    best = max(out["by_workers"], key=lambda r: r["images_per_s"])
    old = loader_rate(FloatItems(dataset), s, best["workers"])
    out["float_path_before"] = {**old, "note": "float32 images + int64 labels, normalised in the workers"}
    out["bytes_ratio_before_over_now"] = round(old["bytes_per_batch"] / best["bytes_per_batch"], 2)
    out["model_images_per_s_bf16"] = model_rates
    out["loader_keeps_up_with"] = {k: best["images_per_s"] >= v for k, v in model_rates.items()}
    return out


def end_to_end(s: Settings, dataset: SegmentationDataset, workers: int, tmp: Path) -> dict[str, Any]:
    """train-base CE in bf16 (fp32 on CPU) fed by the real loader from the JPEGs."""
    dtype = torch.bfloat16 if s.device.type == "cuda" else None
    model, _ = _models(s, step=False)
    runner = _train_runner(s, model, Supervised("ce"), {}, dtype, False, tmp)
    trainer = runner.keep[2]
    batches = _batches(dataset, s, workers)
    rate, _ = _rate(batches, max(1, s.warmup, workers), s.iterations, s.stage_cap, s.device, trainer.train_step)
    batches.close()
    del runner, trainer, model
    _free(s.device)
    return {"stage": "train-base-ce", "precision": "bf16" if dtype else "fp32", "workers": workers,
            "images_per_s": round(rate, 2)}


# -- the CLI checks: the commands a user runs, each a subprocess with --device auto ---------------------
EMULATE_ENV = "INCSEG_EMULATE_CUDA"
TASK = "10-10-ov"
KILL_GRACE = 10.0  # seconds between SIGTERM (a stage writes last.pt and exits 130) and SIGKILL
RESERVE = 5.0  # seconds kept for writing the JSON after the last check


@dataclass
class Check:
    """One command of the chain. ``needs``: checks that must have passed first; ``expect``:
    (file, regex) pairs the outputs must match (a run on the CPU fails here); ``seconds``:
    about what it takes, the time it must have left to start."""

    name: str
    argv: list[str]
    needs: tuple[str, ...] = ()
    expect: tuple[tuple[str, str], ...] = ()
    seconds: float = 20.0


@dataclass
class CliSettings:
    images: int
    val_images: int
    size: int  # toy images' side
    crop: int  # --crop-size and --eval-size
    batch: int
    jobs: int  # checks run side by side
    seconds_scale: float  # times each check's expected seconds
    gpus: int
    emulate: str | None  # INCSEG_EMULATE_CUDA of the checks (None: real CUDA or the CPU)


def incseg_command() -> list[str]:
    """The ``incseg`` console script of this Python (the entry point a user runs), else
    ``python -m incseg_cli``."""
    script = Path(sys.executable).with_name("incseg")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "incseg_cli"]


_ERROR = re.compile(r"^(error: |interrupted: |[\w.]*(Error|Exception|Interrupt)\b)")
_RANK = re.compile(r"^\[(rank|default)\d+\]:\s*")


def error_line(stderr: str) -> str | None:
    """The line that says why a command failed: the last ``error: ...`` line or exception
    line (a torchrun worker's ``[rankN]: `` prefix dropped), else the last line with words
    (not torchrun's ``=====`` rulers)."""
    lines = [_RANK.sub("", line).strip() for line in stderr.splitlines()]
    lines = [line for line in lines if line]
    for line in reversed(lines):
        if _ERROR.match(line):
            return line
    return next((line for line in reversed(lines) if re.search(r"[A-Za-z]{2}", line)), None)


def run_process(argv: list[str], env: dict[str, str], cwd: Path, timeout: float, log: Path) -> tuple[int, str, bool]:
    """(exit code, stderr, timed out) of ``argv``, stdout and stderr in ``log``.out/.err.
    The command runs in its own process group, which gets SIGTERM at ``timeout`` (then
    SIGKILL): torchrun's workers and DataLoader workers stop with it."""
    with open(f"{log}.out", "wb") as out, open(f"{log}.err", "wb") as err:
        proc = subprocess.Popen(argv, stdout=out, stderr=err, stdin=subprocess.DEVNULL, env=env, cwd=cwd,
                                start_new_session=True)
        timed_out = False
        try:
            proc.wait(timeout=max(timeout, 0.1))
        except subprocess.TimeoutExpired:
            timed_out = True
            for sig, grace in ((signal.SIGTERM, KILL_GRACE), (signal.SIGKILL, None)):
                try:
                    os.killpg(proc.pid, sig)
                except ProcessLookupError:
                    break
                try:
                    proc.wait(timeout=grace)
                    break
                except subprocess.TimeoutExpired:
                    continue
            proc.wait()
    return proc.returncode, Path(f"{log}.err").read_text(errors="replace"), timed_out


def cli_checks(c: CliSettings, work: Path) -> list[Check]:
    """The chain on a toy dataset: data and splits, step 0 (CE fp32; BCE fp16 + GradScaler),
    one step per method (ft with --amp fp16), evaluate, predict; with several GPUs, the
    trainings under torchrun too."""
    incseg = incseg_command()
    toy, runs = "toy", "runs"
    train = ["--data", toy, "--preset", "toy", "--batch-size", str(c.batch), "--crop-size", str(c.crop),
             "--eval-size", str(c.crop), "--epochs", "1", "--force"]
    # where the runs must have gone, in which precision (a CPU run is fp32 whatever is asked)
    on_device = r'"device": "cuda:\d+"' if c.gpus else r'"device": "cpu"'
    scaler = r'"grad_scaler": true'

    def run_expect(run: str, *patterns: str) -> tuple[tuple[str, str], ...]:
        if not c.gpus:
            patterns = tuple(p for p in patterns if "amp" not in p and "grad_scaler" not in p)
        return tuple((f"{runs}/{run}/manifest.json", pattern) for pattern in (on_device, *patterns))

    checks = [
        Check("make-toy-data", [*incseg, "make-toy-data", "--out", toy, "--images", str(c.images), "--val-images",
                                str(c.val_images), "--size", str(c.size), "--seed", "0"], seconds=10),
        Check("prepare-splits", [*incseg, "prepare-splits", "--dataset", "voc", "--data", toy, "--task", TASK,
                                 "--out", "splits"], needs=("make-toy-data",), seconds=10),
        Check("train-base", [*incseg, "train-base", "--task", TASK, *train, "--out", f"{runs}/step0"],
              needs=("prepare-splits",), expect=run_expect("step0", r'"amp": "off"')),
        Check("train-base-bce", [*incseg, "train-base", "--task", TASK, "--loss", "bce", *train,
                                 "--out", f"{runs}/step0-bce"],
              needs=("prepare-splits",), expect=run_expect("step0-bce", r'"amp": "torch.float16"', scaler)),
    ]
    for method in ("ft", "mib", "plop", "alife", "wilson"):
        prev = "step0-bce" if method == "wilson" else "step0"
        extra = {"wilson": ["--pseudo-epochs", "0"], "ft": ["--amp", "fp16"]}.get(method, [])
        patterns = (r'"amp": "torch.float16"', scaler) if method in ("wilson", "ft") else (r'"amp": "off"',)
        checks.append(Check(f"train-step-{method}", [*incseg, "train-step", "--prev", f"{runs}/{prev}", "--method",
                                                      method, *train, *extra, "--out", f"{runs}/step1-{method}"],
                            needs=(f"train-base{'-bce' if method == 'wilson' else ''}",),
                            expect=run_expect(f"step1-{method}", *patterns)))
    checks += [
        Check("evaluate", [*incseg, "evaluate", f"{runs}/step1-mib", "--data", toy, "--out", "evaluate.json"],
              needs=("train-step-mib",), expect=(("evaluate.json", r'"miou"'),), seconds=10),
        Check("predict", [*incseg, "predict", f"{runs}/step1-mib", f"{toy}/JPEGImages", "--out", "predict",
                          "--force"],
              needs=("train-step-mib",), expect=(("predict/predict.json", on_device),), seconds=10),
    ]
    if c.gpus > 1:
        torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(c.gpus)]
        script = incseg if len(incseg) == 1 else ["-m", "incseg_cli"]
        world = rf'"world_size": {c.gpus}\b'
        per_process = max(2, -(-c.batch // c.gpus))  # the global batch splits evenly, 2 images or more each
        train = [*train[:train.index("--batch-size") + 1], str(c.gpus * per_process),
                 *train[train.index("--batch-size") + 2:]]
        checks += [
            Check(f"ddp{c.gpus}-train-base", [*torchrun, *script, "train-base", "--task", TASK, *train,
                                              "--out", f"{runs}/ddp-step0"],
                  needs=("prepare-splits",), expect=run_expect("ddp-step0", world), seconds=40),
            Check(f"ddp{c.gpus}-train-step-mib", [*torchrun, *script, "train-step", "--prev", f"{runs}/ddp-step0",
                                                  "--method", "mib", *train, "--out", f"{runs}/ddp-step1-mib"],
                  needs=(f"ddp{c.gpus}-train-base",), expect=run_expect("ddp-step1-mib", world), seconds=40),
        ]
    for check in checks:
        check.seconds *= c.seconds_scale
    return checks


def _unmet(check: Check, work: Path) -> str | None:
    for name, pattern in check.expect:
        path = work / name
        if not path.is_file():
            return f"{name} was not written"
        if not re.search(pattern, path.read_text(errors="replace")):
            return f"{name} does not match {pattern!r}"
    return None


def run_cli_checks(c: CliSettings, work: Path, left: Callable[[], float], log: Callable[[str], None]) -> dict[str, Any]:
    """Every check in dependency order, ``c.jobs`` at a time; a check starts only when its
    expected time is left and is stopped at the time left."""
    checks = cli_checks(c, work)
    logs = work / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, INCSEG_NO_PROGRESS="1", INCSEG_SPLITS=str(work / "splits"),
               INCSEG_CACHE_DIR=str(work / "cache"))
    if c.emulate:
        env[EMULATE_ENV] = c.emulate
    if c.jobs > 1:
        env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // c.jobs)))
    records: dict[str, dict[str, Any]] = {}
    lock = threading.Lock()

    def run_one(check: Check) -> None:
        record: dict[str, Any] = {"name": check.name, "command": shlex.join(check.argv)}
        timeout = left() - RESERVE - KILL_GRACE  # a stopped command has KILL_GRACE more to end
        if timeout < check.seconds:
            record["status"] = "skipped: budget"
            record["seconds_left"] = round(timeout, 1)
        else:
            began = time.monotonic()
            code, stderr, timed_out = run_process(check.argv, env, work, timeout, logs / check.name)
            record.update(exit_code=code, seconds=round(time.monotonic() - began, 2), timeout=round(timeout, 1))
            problem = None
            if timed_out:
                problem = f"stopped at the time left ({timeout:.0f} s of the budget)"
            elif code == 0:
                problem = _unmet(check, work)
            if code == 0 and problem is None:
                record["status"] = "pass"
            else:
                record["status"] = "fail"
                lines = [line for line in stderr.splitlines() if line.strip()]
                record["stderr_last_line"] = lines[-1].strip() if lines else None
                record["error"] = problem or error_line(stderr)
        with lock:
            records[check.name] = record
        seconds = f"{record['seconds']:.1f}" if "seconds" in record else "-"
        tail = f": {record['error']}" if record["status"] == "fail" else ""
        log(f"{record['status'].upper() if record['status'] in ('pass', 'fail') else record['status']:16s} "
            f"{check.name} {seconds} s{tail}")

    started = time.monotonic()
    pending = list(checks)
    running: dict[str, Any] = {}
    with ThreadPoolExecutor(max_workers=max(1, c.jobs)) as pool:
        while pending or running:
            for name in [n for n, f in running.items() if f.done()]:
                running.pop(name).result()
            with lock:
                done = dict(records)
            for check in list(pending):
                failed = [n for n in check.needs if n in done and done[n]["status"] != "pass"]
                if failed:
                    pending.remove(check)
                    with lock:
                        records[check.name] = {"name": check.name, "command": shlex.join(check.argv),
                                               "status": f"skipped: needs {failed[0]}"}
                    log(f"{'skipped':16s} {check.name}: needs {failed[0]}")
                elif all(n in done for n in check.needs) and len(running) < max(1, c.jobs):
                    pending.remove(check)
                    running[check.name] = pool.submit(run_one, check)
            time.sleep(0.05)
    ordered = [records[check.name] for check in checks]
    count = {k: sum(r["status"].startswith(k) for r in ordered) for k in ("pass", "fail", "skipped")}
    return {"emulated": bool(c.emulate), EMULATE_ENV: c.emulate, "gpus": c.gpus, "jobs": c.jobs,
            "toy": {"images": c.images, "val_images": c.val_images, "size": c.size, "crop_and_eval_size": c.crop,
                    "batch": c.batch, "task": TASK},
            "incseg": shlex.join(incseg_command()), "checks": ordered,
            "passed": count["pass"], "failed": count["fail"], "skipped": count["skipped"],
            "seconds": round(time.monotonic() - started, 1)}


# -- the run ----------------------------------------------------------------------------------------------
def machine(device: torch.device) -> dict[str, Any]:
    info: dict[str, Any] = {"platform": platform.platform(), "python": platform.python_version(),
                            "torch": torch.__version__, "cpus": os.cpu_count(), "device": str(device),
                            "loadavg": list(os.getloadavg())}
    if device.type == "cuda" and emulating():
        info["emulated"] = f"{EMULATE_ENV}={os.environ[EMULATE_ENV]}: torch.cuda is the CPU emulation"
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(gpu=torch.cuda.get_device_name(device), capability=list(torch.cuda.get_device_capability(device)),
                    gpu_memory_gib=round(props.total_memory / 2**30, 1), cuda=torch.version.cuda,
                    cudnn=torch.backends.cudnn.version(), cudnn_allow_tf32=torch.backends.cudnn.allow_tf32,
                    matmul_allow_tf32=torch.backends.cuda.matmul.allow_tf32)
    return info


def cli_part(result: dict[str, Any], s: Settings, cli: CliSettings, work: Path | None) -> None:
    """The CLI checks, in ``work`` (a temporary folder unless given; kept, and named in the
    JSON, when a check failed)."""
    def log(line: str) -> None:
        print(f"cli: {line}", file=sys.stderr, flush=True)

    folder = work or Path(tempfile.mkdtemp(prefix="incseg-gpu-bench-"))
    folder.mkdir(parents=True, exist_ok=True)
    result["cli"] = run_cli_checks(cli, folder.resolve(), s.left, log)
    if work is None and not result["cli"]["failed"]:
        shutil.rmtree(folder, ignore_errors=True)
    else:
        result["cli"]["work"] = str(folder)


def run(s: Settings, data: Path | None, cli: CliSettings | None = None, work: Path | None = None) -> dict[str, Any]:
    gpu = torch.cuda.get_device_name(s.device) if s.device.type == "cuda" else None
    peak, peak_key = peak_bf16_flops(None if s.emulated else gpu)
    result: dict[str, Any] = {
        "benchmark": "gpu", "machine": machine(s.device),
        "settings": {k: (str(v) if isinstance(v, torch.device) else v) for k, v in asdict(s).items()
                     if k not in ("started", "out", "longest")},
        "peak_bf16_flops": peak, "peak_table_entry": peak_key,
        "note": "images/s per stage on in-memory loader batches (uint8, pinned) through the package's code; "
                "mfu = achieved FLOP/s (FlopCounterMode count of one iteration) over the peak dense bf16 rate, "
                "for fp32 runs too; fit-rotations with a bank half extracted, half rotated; "
                "fp16 with a GradScaler",
        "stages": {}, "skipped": [],
    }
    failure: list[BaseException] = []

    def checks() -> None:
        try:
            cli_part(result, s, cli, work)
        except BaseException as err:  # noqa: BLE001  (raised again below)
            failure.append(err)

    beside = None
    if cli is None:
        result["skipped"].append("cli checks: --no-cli")
    elif s.strict:  # the dry run: the checks' processes run beside the timing, whose figures mean nothing
        beside = threading.Thread(target=checks, name="cli-checks")
        beside.start()
    else:  # on the GPU: first the commands, then the timing alone on the machine
        checks()
    try:
        timing(result, s, data, peak)
    finally:
        if beside is not None:
            beside.join()
    if failure:
        raise failure[0]
    for stage in result["stages"].values():
        if "flops_per_image" in stage:
            stage["gflops_per_image"] = round(stage.pop("flops_per_image") / 1e9, 3)
    result["seconds"] = round(time.monotonic() - s.started, 1)
    result["machine"]["loadavg_after"] = list(os.getloadavg())
    return result


def timing(result: dict[str, Any], s: Settings, data: Path | None, peak: float | None) -> None:
    """Every stage and configuration on in-memory batches, the loader, --compile."""
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        for name in s.stages:
            stage: dict[str, Any] = {"configs": []}
            result["stages"][name] = stage
            for precision in ["bf16", "fp32", *(["fp16"] if name in FP16_STAGES else [])]:
                if not s.fits():
                    result["skipped"].append(f"{name} {precision}: time budget")
                    continue
                stage["configs"].append(measure(name, precision, False, s, stage, peak, tmp))
                if s.out is not None and not s.strict:  # (the dry run's CLI thread writes result too)
                    write_json(s.out, {**result, "partial": True, "seconds": round(time.monotonic() - s.started, 1)})
        rates = {name: next((c["images_per_s"] for c in st["configs"] if "images_per_s" in c and c["precision"] == "bf16"), None)
                 for name, st in result["stages"].items()}
        rates = {k: v for k, v in rates.items() if v}
        if s.fits(60) or s.strict:
            dataset = jpeg_dataset(s, tmp, data)
            result["loader"] = {"root": str(data) if data else "generated 500x375 JPEGs",
                                **bench_loader(s, dataset, rates)}
            best = max(result["loader"]["by_workers"], key=lambda r: r["images_per_s"])["workers"]
            if s.fits(40) or s.strict:
                result["end_to_end_from_jpegs"] = end_to_end(s, dataset, best, tmp)
            else:
                result["skipped"].append("end to end from JPEGs: time budget")
        else:
            result["skipped"].append("loader: time budget")
        for name in COMPILED_STAGES:
            if name not in s.stages:
                continue
            if s.emulated:  # dynamo fails on the emulation's tensors, inductor looks for libcuda
                result["skipped"].append(f"{name} bf16 --compile: not under CUDA emulation")
                continue
            if s.left() < 150 + 1.3 * s.longest and not s.strict:
                result["skipped"].append(f"{name} bf16 --compile: time budget")
                continue
            result["stages"][name]["configs"].append(measure(name, "bf16", True, s, result["stages"][name], peak, tmp))


def emulating() -> bool:
    return os.environ.get(EMULATE_ENV, "0") not in ("", "0")


def device_from(name: str) -> torch.device:
    """The device a stage would take: ``resolve_device`` (``engine.distributed.device_for``)."""
    from incseg_cli.errors import IncsegError

    try:
        return resolve_device(name)
    except IncsegError as err:
        raise SystemExit(f"error: {err}") from None


def settings_from(args: argparse.Namespace) -> Settings:
    stages = list(args.stages or STAGES)
    if args.dry_run:
        torch.set_num_threads(1)  # the tiny model gains nothing from threads, a loaded CPU loses much
        return Settings(device=device_from(args.device), backbone="tiny", crop=32, batch=2, warmup=1, iterations=1,
                        stage_cap=5.0, budget=args.budget or 120.0, memory_rows=20, loader_images=8,
                        loader_batches=2, workers=[0, 1], compile_backend="eager", strict=True, stages=stages,
                        emulated=emulating())
    device = device_from(args.device)
    if device.type != "cuda" and args.device != "cpu":
        raise SystemExit("error: no CUDA device (--device auto found none); run with --dry-run on a CPU")
    cpus = os.cpu_count() or 1
    workers = sorted({w for w in (4, 8, 16, cpus) if w <= cpus}) or [cpus]
    return Settings(device=device, backbone=args.backbone, crop=args.crop, batch=args.batch,
                    warmup=args.warmup, iterations=args.iterations, stage_cap=args.stage_cap,
                    budget=args.budget or 420.0, memory_rows=args.memory_rows, loader_images=args.loader_images,
                    loader_batches=args.loader_batches, workers=workers, compile_backend="inductor", strict=False,
                    stages=stages, emulated=emulating())


def cli_settings_from(args: argparse.Namespace, s: Settings) -> CliSettings | None:
    if args.no_cli:
        return None
    if args.dry_run:
        from incseg_cli.testing.cuda import parse

        emulate = os.environ.get(EMULATE_ENV) if emulating() else args.emulate
        gpus = parse(emulate)[0] if emulate and emulate != "0" else 0
        return CliSettings(images=32, val_images=6, size=32, crop=32, batch=8, jobs=args.jobs or min(2, os.cpu_count() or 1),
                           seconds_scale=0.4, gpus=gpus, emulate=emulate if gpus else None)
    gpus = torch.cuda.device_count() if s.device.type == "cuda" else 0
    return CliSettings(images=48, val_images=8, size=64, crop=64, batch=8, jobs=args.jobs or 1, seconds_scale=1.0,
                       gpus=gpus, emulate=os.environ[EMULATE_ENV] if emulating() else None)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry-run", action="store_true",
                        help="CPU: the CLI checks at 32 px under CUDA emulation, the timing with a tiny model at 32 px, "
                             "batch 2: checks the script")
    parser.add_argument("--device", default="auto", help="of the timing: auto (as the stages choose), cuda, cuda:N "
                                                         "[auto]")
    parser.add_argument("--backbone", default="resnet101", help="[resnet101]")
    parser.add_argument("--crop", type=int, default=512, help="[512]")
    parser.add_argument("--batch", type=int, default=24, help="images per iteration, halved on out-of-memory [24]")
    parser.add_argument("--warmup", type=int, default=3, help="untimed iterations per configuration [3]")
    parser.add_argument("--iterations", type=int, default=10, help="timed iterations per configuration [10]")
    parser.add_argument("--stage-cap", type=float, default=12.0, help="seconds of timed iterations at most [12]")
    parser.add_argument("--budget", type=float, default=None, help="seconds for the whole run [420; --dry-run 120]")
    parser.add_argument("--memory-rows", type=int, default=1000, help="bank vectors per class [1000]")
    parser.add_argument("--loader-images", type=int, default=240, help="JPEGs to generate for the loader [240]")
    parser.add_argument("--loader-batches", type=int, default=12, help="timed loader batches per worker count [12]")
    parser.add_argument("--data", type=Path, default=None, help="a VOC root to read instead of generated JPEGs")
    parser.add_argument("--stages", nargs="*", choices=STAGES, help="stages to run [all]")
    parser.add_argument("--no-cli", action="store_true", help="skip the CLI checks (scripts/gpu-check.sh ran them)")
    parser.add_argument("--jobs", type=int, default=None, help="CLI checks side by side [1; --dry-run 2]")
    parser.add_argument("--emulate", default="1",
                        help=f"--dry-run: {EMULATE_ENV} of the CLI checks, N[,MAJOR.MINOR] (N > 1: the torchrun "
                             "checks too); 0: plain CPU [1]")
    parser.add_argument("--work", type=Path, default=None,
                        help="folder of the CLI checks' data, runs and logs [a temporary one, kept on failure]")
    parser.add_argument("--out", type=Path, default=Path("bench/results/gpu.json"), help="[bench/results/gpu.json]")
    args = parser.parse_args(argv)
    if emulating():  # as incseg does: this process sees the emulated GPUs too
        from incseg_cli.testing import cuda

        if cuda.active() is None:
            cuda.install_from_env()
    s = settings_from(args)
    s.out = args.out
    cli = cli_settings_from(args, s)
    result = run(s, args.data, cli, args.work)
    result["dry_run"] = bool(args.dry_run)
    result["emulated"] = s.emulated or bool(cli and cli.emulate)
    write_json(args.out, result)
    rows = [(n, c) for n, st in result["stages"].items() for c in st["configs"]]
    for name, c in rows:
        figure = f"{c['images_per_s']:8.1f} img/s" if "images_per_s" in c else f"error: {c.get('error')}"
        print(f"{name:20s} {c['precision']:5s} compile={str(c['compile']):5s} batch {c.get('batch')}: {figure}"
              f"  peak {c.get('peak_memory_gib')} GiB  mfu {c.get('mfu_of_peak_bf16')}", file=sys.stderr)
    failed = result.get("cli", {}).get("failed", 0)
    errors = sum("error" in c for _, c in rows)
    if "cli" in result:
        cli_result = result["cli"]
        print(f"cli checks{' (CUDA emulated)' if cli_result['emulated'] else ''}: {cli_result['passed']} passed, "
              f"{failed} failed, {cli_result['skipped']} skipped in {cli_result['seconds']} s"
              + (f"; logs in {cli_result['work']}/logs" if failed else ""), file=sys.stderr)
    print(f"wrote {args.out} in {result['seconds']} s", file=sys.stderr)
    if failed or errors:
        first = next((f"cli check {c['name']}: {c.get('error')}" for c in result.get("cli", {}).get("checks", [])
                      if c["status"] == "fail"), None)
        first = first or next(f"{n} {c['precision']}: {c['error']}" for n, c in rows if "error" in c)
        print(f"error: {failed} CLI check(s) failed, {errors} measurement(s) ended in an error; first: {first}",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
