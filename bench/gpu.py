"""Every stage of incseg on a GPU box, at the VOC recipe: DeepLabV3 ResNet-101, output
stride 16, batch 24 (or the largest that fits), 512 px crops, VOC 15-5.

Per stage (train-base CE and BCE, train-step mib / alife / wilson, extract-features,
fit-rotations, finetune-classifier, evaluate) and per configuration (bf16 autocast or fp32,
``torch.compile`` off or on): images/s, seconds per iteration, peak GPU memory, and the
model FLOP utilisation (FLOPs of one iteration counted by ``FlopCounterMode``, achieved
FLOP/s over the GPU's peak dense bf16 rate, from the table below). The batches are the
loader's (uint8 images and labels, pinned) held in memory and go through the package's own
code: ``Trainer.train_step`` with each method, ``crop_vectors`` of extract-features and
``run_evaluation``. Then the real loader on JPEGs on disk (generated, or ``--data`` a VOC
root): images/s with N workers against the model's, bytes per batch against the float32 +
int64 batches the loader handed over before, and train-base CE fed by that loader.

    python bench/gpu.py                      # on the GPU box; JSON in bench/results/gpu.json
    python bench/gpu.py --dry-run --out /tmp/gpu.json   # CPU, tiny model, seconds (make test)

The whole run keeps to ``--budget`` seconds (default 420, for an 8-minute slot): each
measurement is a few warm-up and timed iterations, capped at ``--stage-cap`` seconds, and a
measurement that would not fit is recorded as skipped. An out-of-memory configuration is
retried at half the batch and recorded. ``--dry-run`` runs the same code on the CPU at
32 px, batch 2, one timed iteration (bf16 as CPU autocast, ``--compile`` with the eager
backend), so that the script cannot rot without a test failing.
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from PIL import Image

from incseg_cli.data.dataset import SegmentationDataset
from incseg_cli.data.layouts import open_layout
from incseg_cli.data.transforms import TrainTransform
from incseg_cli.models.util import unwrap
from incseg_cli.engine.evaluate import run_evaluation
from incseg_cli.engine.optim import PolyLR, build_optimizer
from incseg_cli.engine.sampler import EpochBatchSampler
from incseg_cli.engine.speed import prepare_models
from incseg_cli.engine.stage import make_train_loader
from incseg_cli.engine.trainer import Trainer
from incseg_cli.fileio import write_json
from incseg_cli.methods.alife import ALIFEClassifierFinetune, ALIFEStep1, RotationFitting, freeze_batchnorm
from incseg_cli.methods.base import Method
from incseg_cli.methods.mib import MiB
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
STAGES = ("train-base-ce", "train-base-bce", "train-step-mib", "train-step-alife", "train-step-wilson",
          "extract-features", "fit-rotations", "finetune-classifier", "evaluate")
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
    started: float = field(default_factory=time.monotonic)

    def left(self) -> float:
        return self.budget - (time.monotonic() - self.started)


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
    return Trainer(model=model, method=method, loader=None, sampler=sampler, optimizer=opt,
                   scheduler=PolyLR(opt, 10**9), epochs=1, device=s.device, last_path=tmp / "last.pt",
                   fingerprint="bench", amp_dtype=dtype)


def _train_runner(s: Settings, model: torch.nn.Module, method: Method, batch: dict, dtype: torch.dtype | None,
                  compiled: bool, tmp: Path, optimizer: str = "sgd", lr: float = 0.01) -> Runner:
    method.to(s.device)
    prepare_models(s.device, model, *method.frozen_modules().values(), *method.extra_modules().values())
    params = method.param_groups(unwrap(model), lr)
    trained = torch.compile(model, backend=s.compile_backend) if compiled else model
    trainer = _trainer(s, trained, method, params, optimizer, lr, dtype, tmp)
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
    if name in ("train-step-mib", "train-step-alife", "train-step-wilson"):
        model, old = _models(s, step=True)
        batch = synthetic_batch(batch_size, s.crop, step_classes, 2, s.device)
        if name == "train-step-mib":
            method: Method = MiB(old, BASE_CLASSES, 10.0)
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


def _oom(err: BaseException) -> bool:
    return isinstance(err, torch.cuda.OutOfMemoryError) or "out of memory" in str(err)


def measure(name: str, precision: str, compiled: bool, s: Settings, stage: dict[str, Any], peak: float | None,
            tmp: Path) -> dict[str, Any]:
    """One configuration of one stage; halves the batch on out-of-memory."""
    dtype = torch.bfloat16 if precision == "bf16" else None
    record: dict[str, Any] = {"precision": precision, "compile": compiled}
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
            record.update(time_runner(runner, s, flops, peak))
            record["wall_seconds"] = round(time.monotonic() - began, 2)  # building and counting included
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


# -- the run ----------------------------------------------------------------------------------------------
def machine(device: torch.device) -> dict[str, Any]:
    info: dict[str, Any] = {"platform": platform.platform(), "python": platform.python_version(),
                            "torch": torch.__version__, "cpus": os.cpu_count(), "device": str(device),
                            "loadavg": list(os.getloadavg())}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(gpu=torch.cuda.get_device_name(device), capability=list(torch.cuda.get_device_capability(device)),
                    gpu_memory_gib=round(props.total_memory / 2**30, 1), cuda=torch.version.cuda,
                    cudnn=torch.backends.cudnn.version(), cudnn_allow_tf32=torch.backends.cudnn.allow_tf32,
                    matmul_allow_tf32=torch.backends.cuda.matmul.allow_tf32)
    return info


def run(s: Settings, data: Path | None) -> dict[str, Any]:
    gpu = torch.cuda.get_device_name(s.device) if s.device.type == "cuda" else None
    peak, peak_key = peak_bf16_flops(gpu)
    result: dict[str, Any] = {
        "benchmark": "gpu", "machine": machine(s.device),
        "settings": {k: (str(v) if isinstance(v, torch.device) else v) for k, v in asdict(s).items() if k != "started"},
        "peak_bf16_flops": peak, "peak_table_entry": peak_key,
        "note": "images/s per stage on in-memory loader batches (uint8, pinned) through the package's code; "
                "mfu = achieved FLOP/s (FlopCounterMode count of one iteration) over the peak dense bf16 rate, "
                "for fp32 runs too; fit-rotations with a bank half extracted, half rotated",
        "stages": {}, "skipped": [],
    }
    precisions = ["bf16", "fp32"]
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        for name in s.stages:
            stage: dict[str, Any] = {"configs": []}
            result["stages"][name] = stage
            for precision in precisions:
                if s.left() < 20:
                    result["skipped"].append(f"{name} {precision}: time budget")
                    continue
                stage["configs"].append(measure(name, precision, False, s, stage, peak, tmp))
        rates = {name: next((c["images_per_s"] for c in st["configs"] if "images_per_s" in c and c["precision"] == "bf16"), None)
                 for name, st in result["stages"].items()}
        rates = {k: v for k, v in rates.items() if v}
        if s.left() > 60 or s.strict:
            dataset = jpeg_dataset(s, tmp, data)
            result["loader"] = {"root": str(data) if data else "generated 500x375 JPEGs",
                                **bench_loader(s, dataset, rates)}
            best = max(result["loader"]["by_workers"], key=lambda r: r["images_per_s"])["workers"]
            if s.left() > 40 or s.strict:
                result["end_to_end_from_jpegs"] = end_to_end(s, dataset, best, tmp)
        else:
            result["skipped"].append("loader: time budget")
        for name in COMPILED_STAGES:
            if name not in s.stages:
                continue
            if s.left() < 150 and not s.strict:
                result["skipped"].append(f"{name} bf16 --compile: time budget")
                continue
            result["stages"][name]["configs"].append(measure(name, "bf16", True, s, result["stages"][name], peak, tmp))
    for stage in result["stages"].values():
        if "flops_per_image" in stage:
            stage["gflops_per_image"] = round(stage.pop("flops_per_image") / 1e9, 3)
    result["seconds"] = round(time.monotonic() - s.started, 1)
    result["machine"]["loadavg_after"] = list(os.getloadavg())
    return result


def settings_from(args: argparse.Namespace) -> Settings:
    if args.dry_run:
        torch.set_num_threads(1)  # the tiny model gains nothing from threads, a loaded CPU loses much
        return Settings(device=torch.device("cpu"), backbone="tiny", crop=32, batch=2, warmup=1, iterations=1,
                        stage_cap=5.0, budget=120.0, memory_rows=20, loader_images=8, loader_batches=2,
                        workers=[0, 1], compile_backend="eager", strict=True, stages=list(args.stages or STAGES))
    if not torch.cuda.is_available() and args.device.startswith("cuda"):
        raise SystemExit("error: no CUDA device; run with --dry-run on a CPU")
    cpus = os.cpu_count() or 1
    workers = sorted({w for w in (4, 8, 16, cpus) if w <= cpus}) or [cpus]
    return Settings(device=torch.device(args.device), backbone=args.backbone, crop=args.crop, batch=args.batch,
                    warmup=args.warmup, iterations=args.iterations, stage_cap=args.stage_cap, budget=args.budget,
                    memory_rows=args.memory_rows, loader_images=args.loader_images, loader_batches=args.loader_batches,
                    workers=workers, compile_backend="inductor", strict=False, stages=list(args.stages or STAGES))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry-run", action="store_true", help="CPU, tiny model, 32 px, batch 2: checks the script")
    parser.add_argument("--device", default="cuda", help="cuda or cuda:N [cuda]")
    parser.add_argument("--backbone", default="resnet101", help="[resnet101]")
    parser.add_argument("--crop", type=int, default=512, help="[512]")
    parser.add_argument("--batch", type=int, default=24, help="images per iteration, halved on out-of-memory [24]")
    parser.add_argument("--warmup", type=int, default=3, help="untimed iterations per configuration [3]")
    parser.add_argument("--iterations", type=int, default=10, help="timed iterations per configuration [10]")
    parser.add_argument("--stage-cap", type=float, default=12.0, help="seconds of timed iterations at most [12]")
    parser.add_argument("--budget", type=float, default=420.0, help="seconds for the whole run [420]")
    parser.add_argument("--memory-rows", type=int, default=1000, help="bank vectors per class [1000]")
    parser.add_argument("--loader-images", type=int, default=240, help="JPEGs to generate for the loader [240]")
    parser.add_argument("--loader-batches", type=int, default=12, help="timed loader batches per worker count [12]")
    parser.add_argument("--data", type=Path, default=None, help="a VOC root to read instead of generated JPEGs")
    parser.add_argument("--stages", nargs="*", choices=STAGES, help="stages to run [all]")
    parser.add_argument("--out", type=Path, default=Path("bench/results/gpu.json"), help="[bench/results/gpu.json]")
    args = parser.parse_args(argv)
    s = settings_from(args)
    result = run(s, args.data)
    result["dry_run"] = bool(args.dry_run)
    write_json(args.out, result)
    rows = [(n, c) for n, st in result["stages"].items() for c in st["configs"]]
    for name, c in rows:
        figure = f"{c['images_per_s']:8.1f} img/s" if "images_per_s" in c else f"error: {c.get('error')}"
        print(f"{name:20s} {c['precision']:5s} compile={str(c['compile']):5s} batch {c.get('batch')}: {figure}"
              f"  peak {c.get('peak_memory_gib')} GiB  mfu {c.get('mfu_of_peak_bf16')}", file=sys.stderr)
    print(f"wrote {args.out} in {result['seconds']} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
