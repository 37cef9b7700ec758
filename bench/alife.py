"""ALIFE benchmarks (JSON out):

- Cayley rotations, 16 classes at D = 256 (VOC 15-5), the same inputs for both: one batched
  ``torch.linalg.solve`` (incseg) against a per-class loop with explicit inverses (the
  official ``cayley_rot.py``), for all R matrices and for one fit-rotations step (rotate a
  prototype per class, forward + backward);
- fit-rotations: time of one iteration through the shared ``Trainer.train_step``;
- bank size on disk (HDF5, gzip + shuffle) against the same vectors as one float32 tensor
  file (``torch.save``, what the official code stores);
- train-step: one ALIFE Step-1 iteration (old-model forward, CE + ALI + KD) against plain
  cross-entropy training of the same model on the same batch.

    python bench/alife.py [--device cpu] [--bank BANK.h5] [--out bench/results/alife.json]

Rounds alternate the compared variants so that load from other processes hits both alike;
medians over rounds are reported.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from incseg_cli.engine.optim import PolyLR, build_optimizer
from incseg_cli.engine.sampler import EpochBatchSampler
from incseg_cli.engine.trainer import Trainer
from incseg_cli.fileio import write_json
from incseg_cli.bank import BankWriter, read_bank, space_name
from incseg_cli.methods.alife import ALIFEStep1, RotationFitting, freeze_batchnorm
from incseg_cli.methods.ft import FineTuning
from incseg_cli.models.util import freeze
from incseg_cli.models.deeplab import ModelSpec, build_model
from incseg_cli.models.rotations import CayleyRotations, cayley, cayley_apply, num_params, skew_matrices

TARGET_SOLVE_SPEEDUP = 3.0
TARGET_STEP_RATIO = 1.35


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _median_times(variants: dict[str, Callable[[], object]], rounds: int, repeat: int,
                  device: torch.device) -> dict[str, float]:
    """Median over ``rounds`` of the mean seconds per call; variants alternate each round."""
    for fn in variants.values():  # warm-up (allocator, kernels, lazy init)
        fn()
    samples: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(rounds):
        for name, fn in variants.items():
            _sync(device)
            start = time.perf_counter()
            for _ in range(repeat):
                fn()
            _sync(device)
            samples[name].append((time.perf_counter() - start) / repeat)
    return {name: statistics.median(v) for name, v in samples.items()}


# -- Cayley: batched solve vs per-class explicit inverse ----------------------------------------------
def _loop_matrices(u: torch.Tensor, dim: int) -> torch.Tensor:
    eye = torch.eye(dim, dtype=u.dtype, device=u.device)
    out = []
    for c in range(u.shape[0]):
        s = skew_matrices(u[c : c + 1], dim)[0]
        out.append((eye - s) @ torch.inverse(eye + s))
    return torch.stack(out)


def bench_cayley(classes: int, dim: int, device: torch.device, rounds: int) -> dict:
    g = torch.Generator().manual_seed(0)
    bound = 1 / num_params(dim) ** 0.5
    u0 = ((torch.rand(classes, num_params(dim), generator=g) * 2 - 1) * bound).to(device)
    x = torch.rand(classes, dim, generator=g).to(device)
    diff = (cayley(u0, dim) - _loop_matrices(u0, dim)).abs().max().item()

    def batched_step() -> None:
        u = u0.clone().requires_grad_()
        cayley_apply(u, dim, x).sum().backward()

    def loop_step() -> None:
        u = u0.clone().requires_grad_()
        r = _loop_matrices(u, dim)
        (r @ x.unsqueeze(2)).sum().backward()

    with torch.no_grad():
        mats = _median_times({"batched_solve": lambda: cayley(u0, dim), "loop_inverse": lambda: _loop_matrices(u0, dim)},
                             rounds, 3, device)
    steps = _median_times({"batched_solve": batched_step, "loop_inverse": loop_step}, rounds, 3, device)
    return {
        "classes": classes, "feature_dim": dim, "max_abs_difference": diff,
        "all_matrices_seconds": mats, "all_matrices_speedup": mats["loop_inverse"] / mats["batched_solve"],
        "rotation_step_seconds": steps, "rotation_step_speedup": steps["loop_inverse"] / steps["batched_solve"],
        "note": "rotation_step = what fit-rotations does per iteration: rotate one prototype per class, "
                "forward + backward (incseg solves (I+S)⁻¹(I−S)r without forming R); "
                "all_matrices = every R_c, no gradient (what rotating a bank needs)",
        "target_speedup": TARGET_SOLVE_SPEEDUP,
    }


# -- one training iteration through the shared loop ---------------------------------------------------
def _trainer(model, method, lr: float, device: torch.device, last: Path, optimizer: str = "adam") -> Trainer:
    sampler = EpochBatchSampler(10_000, 2, 0)
    opt = build_optimizer(method.param_groups(model, lr), optimizer, lr, 0.0)
    return Trainer(model=model, method=method, loader=None, sampler=sampler, optimizer=opt,
                   scheduler=PolyLR(opt, 10**9), epochs=1, device=device, last_path=last, fingerprint="bench")


def _toy_models(device: torch.device, heads: list[int]) -> tuple[torch.nn.Module, torch.nn.Module]:
    torch.manual_seed(0)
    old = build_model(ModelSpec.for_backbone("tiny", heads[:-1])).to(device)
    model = build_model(ModelSpec.for_backbone("tiny", heads[:-1])).to(device)
    model.load_state_dict(old.state_dict())
    model.add_step(heads[-1], "mib")
    return freeze(old), model.to(device)


def _batch(device: torch.device, batch: int, crop: int, classes: int) -> dict:
    """A step-1 batch as the loader hands it over: uint8 image and labels (on the host;
    the trainer moves it and normalises the image on the device)."""
    g = torch.Generator().manual_seed(1)
    label = torch.randint(0, classes, (batch, crop, crop), generator=g, dtype=torch.uint8)
    label[label < 11] = 0  # unlabelled pixels, as at step 1 of 10-10
    label[:, :2] = 255
    return {"image": torch.randint(0, 256, (batch, 3, crop, crop), generator=g, dtype=torch.uint8), "label": label,
            "index": torch.arange(batch)}


def bench_train_step(device: torch.device, batch: int, crop: int, rounds: int, tmp: Path) -> dict:
    old, model = _toy_models(device, [11, 10])
    freeze_batchnorm([model.backbone, model.aspp])
    alife = ALIFEStep1(old, 1.0, 1.0)
    ce_model = build_model(model.spec).to(device)
    ce_model.load_state_dict(model.state_dict())
    data = _batch(device, batch, crop, 21)
    trainers = {"ce": _trainer(ce_model, FineTuning(), 1e-3, device, tmp / "a.pt"),
                "alife_ce_ali_kd": _trainer(model, alife, 1e-3, device, tmp / "b.pt")}
    for name, t in trainers.items():
        t.method.train_mode(t.model)
    times = _median_times({k: (lambda t=t: t.train_step(data)) for k, t in trainers.items()}, rounds, 10, device)
    return {"backbone": "tiny", "batch": batch, "crop": crop, "seconds_per_iteration": times,
            "ratio": times["alife_ce_ali_kd"] / times["ce"], "target_ratio": TARGET_STEP_RATIO,
            "note": "ALIFE includes the frozen old model's forward; same model, batch and optimiser (Adam)"}


def bench_fit_iteration(device: torch.device, batch: int, crop: int, samples: int, rounds: int, tmp: Path) -> dict:
    prev, current = _toy_models(device, [11, 10])
    current = freeze(current)
    dim = prev.spec.head_channels
    g = torch.Generator().manual_seed(2)
    memory = torch.rand(11 * samples, dim, generator=g)
    method = RotationFitting(prev, current, memory, [samples] * 11, torch.arange(11), 0.99, 10.0).to(device)
    rotations = CayleyRotations(11, dim).to(device)
    trainer = _trainer(rotations, method, 1e-2, device, tmp / "r.pt")
    data = _batch(device, batch, crop, 21)
    times = _median_times({"fit_rotations": lambda: trainer.train_step(data)}, rounds, 10, device)
    return {"backbone": "tiny", "classes": 11, "feature_dim": dim, "samples_per_class": samples, "batch": batch,
            "crop": crop, "seconds_per_iteration": times["fit_rotations"]}


# -- bank size -----------------------------------------------------------------------------------------
def _sizes(features: dict[int, np.ndarray], dim: int, tmp: Path, name: str) -> dict:
    h5 = tmp / f"{name}.h5"
    attrs = {"feature_dim": dim, "step": 0, "dataset": "voc", "task": "bench", "source_checkpoint_sha256": "0" * 64,
             "space": space_name(0)}
    start = time.perf_counter()
    with BankWriter(h5, attrs) as w:
        for c, x in features.items():
            w.add(c, x, str(c), "extracted", 0)
    write_seconds = time.perf_counter() - start
    start = time.perf_counter()
    read_bank(h5)
    read_seconds = time.perf_counter() - start
    pt = tmp / f"{name}.pt"
    torch.save(torch.from_numpy(np.stack(list(features.values()))), pt)
    rows = sum(len(x) for x in features.values())
    return {"classes": len(features), "vectors": rows, "feature_dim": dim, "raw_float32_bytes": rows * dim * 4,
            "hdf5_bytes": h5.stat().st_size, "torch_tensor_bytes": pt.stat().st_size,
            "hdf5_over_tensor": h5.stat().st_size / pt.stat().st_size,
            "hdf5_write_seconds": write_seconds, "hdf5_read_validate_seconds": read_seconds}


def bench_bank(bank_path: Path | None, tmp: Path) -> dict:
    # VOC 15-5 shape: 16 classes × 1000 × 256. Synthetic entries: region means of post-ReLU
    # features (non-negative, dense); real banks are more regular, see "given_bank".
    rng = np.random.default_rng(0)
    synthetic = {c: np.maximum(rng.normal(0.2, 1.0, (1000, 256)), 0).astype(np.float32) * rng.random(256, np.float32)
                 for c in range(16)}
    out = {"synthetic_voc_15_5": _sizes(synthetic, 256, tmp, "synthetic")}
    if bank_path is not None:
        bank = read_bank(bank_path)
        sizes = _sizes({c: e.features for c, e in bank.classes.items()}, bank.feature_dim, tmp, "given")
        out["given_bank"] = {"path": str(bank_path), "space": bank.attrs["space"], **sizes}
    return out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--classes", type=int, default=16)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--crop", type=int, default=64)
    parser.add_argument("--samples", type=int, default=1000, help="memory vectors per class for fit-rotations")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--bank", type=Path, default=None, help="also measure this bank's size")
    parser.add_argument("--out", type=Path, default=Path("bench/results/alife.json"))
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        result = {
            "benchmark": "alife",
            "machine": {"platform": platform.platform(), "python": sys.version.split()[0], "torch": torch.__version__,
                        "device": str(device), "threads": torch.get_num_threads(), "loadavg": list(os.getloadavg()),
                        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None},
            "cayley": bench_cayley(args.classes, args.dim, device, args.rounds),
            "fit_rotations": bench_fit_iteration(device, args.batch, args.crop, args.samples, args.rounds, tmp),
            "bank_size": bench_bank(args.bank, tmp),
            "train_step": bench_train_step(device, args.batch, args.crop, args.rounds, tmp),
        }
    result["targets_met"] = {
        "rotation_step_speedup >= 3": result["cayley"]["rotation_step_speedup"] >= TARGET_SOLVE_SPEEDUP,
        "train_step_ratio <= 1.35": result["train_step"]["ratio"] <= TARGET_STEP_RATIO,
    }
    write_json(args.out, result)
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
