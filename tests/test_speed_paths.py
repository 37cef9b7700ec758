"""The speed paths of issue 13 change no result: the compact data path (uint8 from the
workers, normalised on the device), the fused losses, the memory scan of fit-rotations, the
one DataLoader of extract-features, the ``--workers`` default; and bench/gpu.py still runs
(``--dry-run``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import typer

from helpers import REPO
from incseg_cli import presets
from incseg_cli.data.dataset import SegmentationDataset, label_dtype
from incseg_cli.datasets import open_layout
from incseg_cli.data.transforms import EvalTransform, TrainTransform, denormalize, normalize_on_device
from incseg_cli.engine.trainer import Trainer
from incseg_cli.losses.alife import MemoryScan, correlation_scores
from incseg_cli.losses.mib import calibrated_cross_entropy, calibrated_distillation, mib_losses
from incseg_cli.losses.supervised import bce_one_hot, cross_entropy
from incseg_cli.methods.alife import features_end_in_relu
from incseg_cli.models.deeplab import ModelSpec, build_model
from incseg_cli.stages.features import extract_classes
from incseg_cli.tasks import get_task

sys.path.insert(0, str(REPO / "bench"))
import old_paths  # noqa: E402  (the code paths before, kept for the benchmarks)

D64 = torch.float64


def _stack(items: list[dict], key: str) -> torch.Tensor:
    return torch.stack([item[key] for item in items])


# -- data path ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("transform", [TrainTransform(24), EvalTransform("crop", 24)])
def test_device_normalisation_equals_the_float_path_exactly(tiny_voc, transform):
    layout = open_layout("voc", tiny_voc["root"])
    ds = SegmentationDataset(layout, "train", layout.ids("train")[:4], transform, lut=get_task("voc", "15-5").train_lut(1))
    new = [ds[i] for i in range(4)]
    old = [old_paths.FloatItems(ds)[i] for i in range(4)]
    images = _stack(new, "image")
    assert images.dtype == torch.uint8 and _stack(new, "label").dtype == torch.uint8
    on_device = normalize_on_device(images, "cpu")
    assert on_device.dtype == torch.float32
    assert torch.equal(on_device, _stack(old, "image"))  # bit for bit, not approximately
    assert torch.equal(_stack(new, "label").long(), _stack(old, "label"))
    nhwc = normalize_on_device(images, "cpu", channels_last=True)
    assert nhwc.is_contiguous(memory_format=torch.channels_last) and torch.equal(nhwc, on_device)
    assert normalize_on_device(on_device, "cpu") is on_device  # an already normalised batch only moves
    assert torch.equal(denormalize(images), images.float() / 255)
    # 4 bytes of image and 8 of label per pixel before, 3 + 1 now
    old_bytes = sum(_stack(old, k).numel() * _stack(old, k).element_size() for k in ("image", "label"))
    new_bytes = sum(_stack(new, k).numel() * _stack(new, k).element_size() for k in ("image", "label"))
    assert old_bytes / new_bytes == 5.0


def test_no_label_without_masks_and_label_types(tiny_voc):
    layout = open_layout("voc", tiny_voc["root"])
    item = SegmentationDataset(layout, "train", layout.ids("train"), TrainTransform(8), read_masks=False)[0]
    assert set(item) == {"image", "index"}
    assert label_dtype(get_task("voc", "15-5").train_lut(1)) == np.uint8
    assert label_dtype(get_task("ade", "100-50").train_lut(1)) == np.uint8  # 150 classes + 255
    assert label_dtype(np.arange(256) * 2) == np.int16


def test_trainer_moves_images_normalised_and_labels_compact():
    fake = SimpleNamespace(device=torch.device("cpu"))
    images = torch.randint(0, 256, (2, 3, 4, 4), dtype=torch.uint8)
    labels = torch.randint(0, 3, (2, 4, 4), dtype=torch.uint8)
    assert torch.equal(Trainer._to_device(fake, images), normalize_on_device(images, "cpu"))
    assert Trainer._to_device(fake, labels).dtype == torch.uint8
    assert Trainer._to_device(fake, 7) == 7


# -- fused losses ----------------------------------------------------------------------------------------
def _mib_inputs(dtype=D64):
    g = torch.Generator().manual_seed(0)
    logits = (torch.randn(2, 9, 5, 6, generator=g, dtype=dtype) * 4).requires_grad_()
    old = torch.randn(2, 6, 5, 6, generator=g, dtype=dtype) * 3
    target = torch.randint(0, 9, (2, 5, 6), generator=g)
    target[target < 6] = 0
    target[0, 0, :3] = 255
    return logits, old, target


def test_fused_mib_losses_equal_the_old_ones_values_and_gradients():
    logits, old, target = _mib_inputs()
    ref_ce = old_paths.calibrated_cross_entropy(logits, target, 6)
    ref_kd = old_paths.calibrated_distillation(logits, old)
    ref_grad = torch.autograd.grad(ref_ce + 10 * ref_kd, logits)[0]
    for labels in (target, target.to(torch.uint8)):  # the loader's uint8 labels too
        ce, kd = mib_losses(logits, old, labels)
        assert abs(ce.item() - ref_ce.item()) < 1e-12 and abs(kd.item() - ref_kd.item()) < 1e-12
        grad = torch.autograd.grad(ce + 10 * kd, logits)[0]
        assert (grad - ref_grad).abs().max() < 1e-12
    per_pixel = calibrated_cross_entropy(logits, target.to(torch.uint8), 6, reduction="none")
    assert torch.allclose(per_pixel, old_paths.calibrated_cross_entropy(logits, target, 6, reduction="none"),
                          atol=1e-12, rtol=0)
    assert torch.allclose(calibrated_distillation(logits, old, "none"),
                          old_paths.calibrated_distillation(logits, old, "none"), atol=1e-12, rtol=0)


def test_bce_without_one_hot_equals_the_old_one():
    logits, _, target = _mib_inputs()
    ref = old_paths.bce_one_hot(logits, target)
    new = bce_one_hot(logits, target.to(torch.uint8))
    assert abs(new.item() - ref.item()) < 1e-12
    g_ref = torch.autograd.grad(ref, logits)[0]
    assert (torch.autograd.grad(bce_one_hot(logits, target), logits)[0] - g_ref).abs().max() < 1e-12
    assert cross_entropy(logits, target.to(torch.uint8)).item() == pytest.approx(cross_entropy(logits, target).item())


# -- the memory scan of fit-rotations --------------------------------------------------------------
def test_memory_scan_equals_the_old_loop():
    g = torch.Generator().manual_seed(1)
    features = torch.relu(torch.randn(40, 8, generator=g))  # decoder features come out of a ReLU
    memory = torch.rand(37, 8, generator=g)
    memory[5:20] -= 0.3  # rotated vectors: mixed signs, the ReLU matters
    memory[30] = 0.0  # a zero vector has cosine 0
    counts = [10, 20, 7]
    ref = old_paths.correlation_scores(features, memory, counts, chunk=4)
    for nonnegative in (True, False):
        scan = MemoryScan(memory, counts, features_nonnegative=nonnegative)
        for chunk in (1, 3, 25, 1000):
            assert torch.allclose(scan(features, chunk), ref, rtol=1e-5, atol=1e-5)
    # only the rows with a negative entry go through the ReLU, class by class
    shortcut = MemoryScan(memory, counts, features_nonnegative=True)
    negative = (memory < 0).any(dim=1).split(counts)
    assert shortcut.scanned_classes.tolist() == [c for c, rows in enumerate(negative) if rows.any()]
    assert shortcut.scanned.shape[1] == max(int(rows.sum()) for rows in negative)
    assert torch.allclose(correlation_scores(features, memory, counts, chunk=3), ref, rtol=1e-5, atol=1e-5)
    model = build_model(ModelSpec.for_backbone("tiny", [3]))
    assert features_end_in_relu(model)


# -- extract-features: one loader, the same bank whatever the workers --------------------------------
def test_extract_classes_one_loader_independent_of_workers(tiny_voc):
    layout = open_layout("voc", tiny_voc["root"])
    task = get_task("voc", "offline")
    ids = layout.ids("train")
    ds = SegmentationDataset(layout, "train", ids, TrainTransform(16), lut=task.train_lut(0))
    torch.manual_seed(0)
    model = build_model(ModelSpec.for_backbone("tiny", [21])).eval()
    plan = [(c, [i for i, image_id in enumerate(ids) if c in tiny_voc["classes"][image_id]]) for c in (0, 8, 17)]
    plan = [(c, cands) for c, cands in plan if cands]
    channels = [task.model_index(c) for c, _ in plan]
    runs = [list(extract_classes(model, ds, plan, channels, 3, 2, 5, workers, torch.device("cpu")))
            for workers in (0, 2)]
    assert [label for label, _, _ in runs[0]] == [c for c, _ in plan]
    for (la, va, ra), (lb, vb, rb) in zip(*runs):
        assert la == lb and ra == rb and np.array_equal(va, vb) and va.shape == (3, 64)


# -- the --workers default -------------------------------------------------------------------------
def test_workers_default_from_cores_and_the_same_in_every_command(monkeypatch):
    from incseg_cli.cli import app  # the commands register on it when the package is imported

    cpus = len(os.sched_getaffinity(0))
    assert presets.default_workers() == max(1, min(8, cpus))
    monkeypatch.setenv("LOCAL_WORLD_SIZE", str(cpus * 2))
    assert presets.default_workers() == 1
    for table in (presets.BASE_PRESETS, presets.STEP_PRESETS):
        assert all(table[name]["workers"] == table["voc"]["workers"] for name in ("voc", "coco", "ade"))
    assert presets.BASE_PRESETS["toy"]["workers"] == 0
    group = typer.main.get_command(app)
    commands = ("train-base", "train-step", "finetune-classifier", "extract-features", "fit-rotations", "evaluate")
    for name in commands:
        option = next(p for p in group.commands[name].params if p.name == "workers")
        assert option.default is None, name  # resolved as above


# -- bench/gpu.py --------------------------------------------------------------------------------------
GPU_BENCH_STAGES = {"train-base-ce", "train-base-bce", "train-step-ft", "train-step-mib", "train-step-plop",
                    "train-step-alife", "train-step-wilson", "extract-features", "fit-rotations",
                    "finetune-classifier", "evaluate"}
GPU_BENCH_CLI_CHECKS = ["make-toy-data", "prepare-splits", "train-base", "train-base-bce", "train-step-ft",
                        "train-step-mib", "train-step-plop", "train-step-alife", "train-step-wilson", "evaluate",
                        "predict"]


def test_gpu_benchmark_dry_run(tmp_path):
    """The dry run: the CLI checks as subprocesses under CUDA emulation (device selection,
    fp16 + GradScaler), beside them every stage timed on the CPU."""
    out = tmp_path / "gpu.json"
    start = time.monotonic()
    env = {k: v for k, v in os.environ.items() if k not in ("INCSEG_EMULATE_CUDA", "INCSEG_DEBUG")}
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "gpu.py"), "--dry-run", "--out", str(out)],
                          capture_output=True, text=True, timeout=180, cwd=REPO,
                          env=dict(env, INCSEG_NO_PROGRESS="1"))
    assert proc.returncode == 0, proc.stderr
    # about 30 s on 2 idle cores (11 incseg processes, two at a time, beside the timing); the
    # bound leaves room for a loaded machine
    assert time.monotonic() - start < 90
    result = json.loads(out.read_text())
    assert result["dry_run"] and result["emulated"] and set(result["stages"]) == GPU_BENCH_STAGES
    for name, stage in result["stages"].items():
        configs = stage["configs"]
        assert {(c["precision"], c["compile"]) for c in configs} >= {("bf16", False), ("fp32", False)}, name
        assert any(c["precision"] == "fp16" and c["grad_scaler"] for c in configs) == (
            name in ("train-base-bce", "train-step-wilson")), name
        assert all(c["images_per_s"] > 0 and "error" not in c for c in configs), name
        assert stage["gflops_per_image"] > 0, name
    assert any(c["compile"] for c in result["stages"]["train-base-ce"]["configs"])
    assert result["loader"]["bytes_ratio_before_over_now"] >= 4
    assert result["end_to_end_from_jpegs"]["images_per_s"] > 0
    assert len(result["machine"]["loadavg"]) == 3
    assert result["settings"]["device"] == "cpu"  # resolve_device("auto") of this process, not emulated
    cli = result["cli"]
    assert cli["emulated"] and cli["INCSEG_EMULATE_CUDA"] == "1" and cli["gpus"] == 1
    assert [c["name"] for c in cli["checks"]] == GPU_BENCH_CLI_CHECKS  # one GPU: no torchrun checks
    for check in cli["checks"]:
        assert check["status"] == "pass" and check["exit_code"] == 0 and check["seconds"] > 0, check
        assert check["command"].split()[0].endswith("incseg") or "incseg_cli" in check["command"], check
    assert (cli["passed"], cli["failed"], cli["skipped"]) == (len(GPU_BENCH_CLI_CHECKS), 0, 0)
    assert "--device" not in " ".join(c["command"] for c in cli["checks"])  # the default, auto
    assert "work" not in cli  # the temporary folder is gone when every check passed
