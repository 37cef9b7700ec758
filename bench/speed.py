"""The speed paths of issue 13 against the code paths they replaced, timed side by side in
one process (``bench/old_paths.py`` keeps the old ones), on the toy model and this CPU:

1. one training iteration (``Trainer.train_step``: batch to the device, forward, losses,
   backward, optimiser) of MiB and ALIFE Step 1 against plain cross-entropy on the same model
   and batch; MiB with its fused losses and uint8 batches, and as before (two log-partitions,
   ``torch.cat`` copies, float32 + int64 batches);
2. one fit-rotations iteration at 50 classes × 1,000 memory vectors: the memory normalised
   and grouped once (``MemoryScan``) against the per-iteration loop over classes, for a bank
   of extracted vectors (stage 1) and one whose vectors are rotated (a later stage);
3. the loader: bytes per batch of 24 crops of 512 px and images/s in the main process, uint8
   against the float32 + int64 items of before, on generated 500×375 JPEGs.

Rounds alternate the variants, so load from other processes hits all of them alike; the
medians of the per-round means are reported, with the machine load before and after.

    python bench/speed.py [--rounds 7] [--threads 1] [--out bench/results/speed.json]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import torch

from incseg_cli.data.dataset import SegmentationDataset
from incseg_cli.datasets import open_layout
from incseg_cli.data.transforms import TrainTransform
from incseg_cli.engine.optim import PolyLR, build_optimizer
from incseg_cli.engine.sampler import EpochBatchSampler
from incseg_cli.engine.trainer import Trainer
from incseg_cli.fileio import write_json
from incseg_cli.methods.alife import ALIFEStep1, RotationFitting, freeze_batchnorm
from incseg_cli.methods.ft import FineTuning
from incseg_cli.methods.mib import MiB
from incseg_cli.models.util import freeze
from incseg_cli.models.deeplab import ModelSpec, build_model
from incseg_cli.models.rotations import CayleyRotations
from incseg_cli.tasks import get_task

sys.path.insert(0, str(Path(__file__).resolve().parent))
import old_paths  # noqa: E402
from gpu import write_jpeg_root  # noqa: E402

TARGETS = {"mib_over_ce": 1.4, "alife_over_ce": 1.35, "fit_rotations_speedup": 2.0, "loader_bytes_ratio": 4.0}


def interleaved(variants: dict[str, Callable[[], object]], rounds: int, repeat: int, warmup: int = 2) -> dict:
    """Median over ``rounds`` of the mean seconds per call, the variants taking turns."""
    for fn in variants.values():
        for _ in range(warmup):
            fn()
    samples: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(rounds):
        for name, fn in variants.items():
            start = time.perf_counter()
            for _ in range(repeat):
                fn()
            samples[name].append((time.perf_counter() - start) / repeat)
    return {"median_seconds": {k: statistics.median(v) for k, v in samples.items()},
            "rounds_seconds": {k: [round(x, 5) for x in v] for k, v in samples.items()}}


def _trainer(model, method, lr: float, tmp: Path, optimizer: str = "adam") -> Trainer:
    opt = build_optimizer(method.param_groups(model, lr), optimizer, lr, 0.0)
    return Trainer(model=model, method=method, loader=None, sampler=EpochBatchSampler(10_000, 2, 0), optimizer=opt,
                   scheduler=PolyLR(opt, 10**9), epochs=1, device=torch.device("cpu"), last_path=tmp / "last.pt",
                   fingerprint="bench")


def _step_models(heads: list[int]) -> tuple[torch.nn.Module, torch.nn.Module]:
    """(frozen old model, new model = old + one head with MiB init), toy backbone."""
    torch.manual_seed(0)
    old = build_model(ModelSpec.for_backbone("tiny", heads[:-1]))
    model = build_model(ModelSpec.for_backbone("tiny", heads[:-1]))
    model.load_state_dict(old.state_dict())
    model.add_step(heads[-1], "mib")
    return freeze(old), model


def _batches(batch: int, crop: int, old: int, classes: int) -> tuple[dict, dict]:
    """The same step-1 batch as the loader hands it over now (uint8) and before (float32
    normalised images, int64 labels)."""
    g = torch.Generator().manual_seed(1)
    image = torch.randint(0, 256, (batch, 3, crop, crop), generator=g, dtype=torch.uint8)
    label = torch.randint(0, classes, (batch, crop, crop), generator=g, dtype=torch.uint8)
    label[label < old] = 0  # unlabelled pixels, as at a step t >= 1
    label[:, :2] = 255
    new = {"image": image, "label": label, "index": torch.arange(batch)}
    before = old_paths.FloatItems([{"image": i, "label": lb, "index": k} for k, (i, lb) in enumerate(zip(image, label))])
    items = [before[k] for k in range(batch)]
    return new, {k: torch.stack([torch.as_tensor(it[k]) for it in items]) for k in ("image", "label", "index")}


def bench_train_steps(batch: int, crop: int, rounds: int, tmp: Path) -> dict:
    heads = [11, 10]
    old, model = _step_models(heads)
    copies = {}
    for name in ("ce", "mib", "mib_before", "alife"):
        m = build_model(model.spec)
        m.load_state_dict(model.state_dict())
        copies[name] = m
    freeze_batchnorm([copies["alife"].backbone, copies["alife"].aspp])
    mib = MiB(old, heads[0], 10.0)
    methods = {"ce": FineTuning(), "mib": mib, "mib_before": old_paths.OldMiB(mib), "alife": ALIFEStep1(old, 1.0, 1.0)}
    trainers = {k: _trainer(copies[k], methods[k], 1e-3, tmp / k) for k in methods}
    ce_before = _trainer(copies["ce"], FineTuning(), 1e-3, tmp / "ce_before")
    for name, t in trainers.items():
        t.method.train_mode(t.model)
    now, before = _batches(batch, crop, heads[0], sum(heads))
    variants = {k: (lambda t=t: t.train_step(now)) for k, t in trainers.items()}
    variants["mib_before"] = lambda: trainers["mib_before"].train_step(before)
    variants["ce_before"] = lambda: ce_before.train_step(before)
    timing = interleaved(variants, rounds, 5)
    ms = {k: round(1000 * v, 3) for k, v in timing["median_seconds"].items()}
    return {
        "backbone": "tiny", "batch": batch, "crop": crop, "classes": heads, "optimizer": "adam",
        "ms_per_iteration": ms,
        "mib_over_ce": round(ms["mib"] / ms["ce"], 3),
        "alife_over_ce": round(ms["alife"] / ms["ce"], 3),
        "mib_over_ce_before": round(ms["mib_before"] / ms["ce_before"], 3),
        "rounds_ms": {k: [round(1000 * x, 3) for x in v] for k, v in timing["rounds_seconds"].items()},
        "note": "every variant goes through Trainer.train_step; the MiB and ALIFE iterations include the frozen "
                "old model's forward; *_before: float32 + int64 batches and MiB's losses as they were",
    }


def bench_fit_rotations(classes: int, samples: int, batch: int, crop: int, rounds: int, tmp: Path) -> dict:
    old, current = _step_models([classes, 10])
    current = freeze(current)
    dim = old.spec.head_channels
    g = torch.Generator().manual_seed(2)
    extracted = torch.relu(torch.randn(classes * samples, dim, generator=g) + 0.3)  # region means of ReLU features
    rotations_of = CayleyRotations(classes, dim, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():  # the same vectors rotated by random rotations close to I, as stage t >= 2 holds them
        rotated = (rotations_of.matrices().repeat_interleave(samples, 0) @ extracted.unsqueeze(2)).squeeze(2)
    counts, channels = [samples] * classes, torch.arange(classes)
    image = torch.randint(0, 256, (batch, 3, crop, crop), generator=g, dtype=torch.uint8)
    data = {"image": image, "index": torch.arange(batch)}
    variants, negative = {}, {}
    for bank, memory in (("extracted", extracted), ("rotated", rotated)):
        negative[bank] = round(float((memory < 0).any(dim=1).float().mean()), 4)
        for path, cls in (("now", RotationFitting), ("before", old_paths.OldRotationFitting)):
            method = cls(old, current, memory, counts, channels, 0.99, 10.0)
            trainer = _trainer(CayleyRotations(classes, dim, generator=torch.Generator().manual_seed(0)), method,
                               1e-2, tmp / f"{bank}-{path}")
            variants[f"{bank}_{path}"] = lambda t=trainer: t.train_step(data)
    timing = interleaved(variants, rounds, 3)
    ms = {k: round(1000 * v, 3) for k, v in timing["median_seconds"].items()}
    return {
        "backbone": "tiny", "classes": classes, "samples_per_class": samples, "feature_dim": dim, "batch": batch,
        "crop": crop, "positions": batch * (crop // old.spec.output_stride) ** 2,
        "rows_with_a_negative_entry": negative, "ms_per_iteration": ms,
        "speedup_extracted_bank": round(ms["extracted_before"] / ms["extracted_now"], 2),
        "speedup_rotated_bank": round(ms["rotated_before"] / ms["rotated_now"], 2),
        "rounds_ms": {k: [round(1000 * x, 3) for x in v] for k, v in timing["rounds_seconds"].items()},
        "note": "a fit-rotations iteration through Trainer.train_step (both frozen extractors, memory scan, "
                "attention prototypes, Cayley rotations, losses, Adam). Extracted vectors (every class at stage 1) "
                "have no negative entry: with ReLU features their cosines are never clipped, so MemoryScan sums "
                "them once per class; rotated vectors keep the full scan, batched over classes",
    }


def bench_loader(tmp: Path, crop: int, batch: int, images: int, rounds: int) -> dict:
    root = write_jpeg_root(tmp / "jpegs", images)
    layout = open_layout("voc", root)
    ids = layout.ids("train")
    dataset = SegmentationDataset(layout, "train", ids, TrainTransform(crop, (0.5, 2.0)),
                                  lut=get_task("voc", "15-5").train_lut(0))
    before = old_paths.FloatItems(dataset)
    collate = torch.utils.data.default_collate
    keys = [(i % len(ids), 1000 + i) for i in range(batch)]
    sizes = {}
    for name, ds in (("now", dataset), ("before", before)):
        b = collate([ds[k] for k in keys])
        sizes[name] = sum(v.numel() * v.element_size() for v in b.values() if torch.is_tensor(v))
    per_round = 8
    timing = interleaved({"now": lambda: [dataset[k] for k in keys[:per_round]],
                          "before": lambda: [before[k] for k in keys[:per_round]]}, rounds, 1, warmup=1)
    per_image = {k: v / per_round for k, v in timing["median_seconds"].items()}
    return {
        "crop": crop, "batch": batch, "images": len(ids), "image_size": "500x375 JPEG",
        "bytes_per_batch": sizes, "bytes_ratio_before_over_now": round(sizes["before"] / sizes["now"], 2),
        "main_process_images_per_s": {k: round(1 / v, 1) for k, v in per_image.items()},
        "worker_time_saved": round(1 - per_image["now"] / per_image["before"], 3),
        "note": "one item = read the JPEG and PNG, validate, random resized crop to 512, flip, remap labels; "
                "before, the item was also normalised to float32 and its label widened to int64",
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=7, help="alternating rounds; medians are reported [7]")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads [1: steadier on a shared machine]")
    parser.add_argument("--batch", type=int, default=16, help="toy batch [16]")
    parser.add_argument("--crop", type=int, default=64, help="toy crop [64]")
    parser.add_argument("--classes", type=int, default=50, help="fit-rotations classes [50]")
    parser.add_argument("--samples", type=int, default=1000, help="fit-rotations memory vectors per class [1000]")
    parser.add_argument("--out", type=Path, default=Path("bench/results/speed.json"), help="[bench/results/speed.json]")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    load_before = list(os.getloadavg())
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        result = {
            "benchmark": "speed-paths",
            "machine": {"platform": platform.platform(), "python": platform.python_version(),
                        "torch": torch.__version__, "cpus": os.cpu_count(), "threads": torch.get_num_threads(),
                        "loadavg_before": load_before},
            "train_step": bench_train_steps(args.batch, args.crop, args.rounds, tmp),
            "fit_rotations": bench_fit_rotations(args.classes, args.samples, args.batch, args.crop, args.rounds, tmp),
            "loader": bench_loader(tmp, 512, 24, 48, args.rounds),
        }
    result["machine"]["loadavg_after"] = list(os.getloadavg())
    result["seconds"] = round(time.monotonic() - started, 1)
    result["targets"] = TARGETS
    result["targets_met"] = {
        "mib_over_ce <= 1.4": result["train_step"]["mib_over_ce"] <= TARGETS["mib_over_ce"],
        "alife_over_ce <= 1.35": result["train_step"]["alife_over_ce"] <= TARGETS["alife_over_ce"],
        "fit_rotations_speedup (extracted bank) >= 2":
            result["fit_rotations"]["speedup_extracted_bank"] >= TARGETS["fit_rotations_speedup"],
        "loader_bytes_ratio >= 4": result["loader"]["bytes_ratio_before_over_now"] >= TARGETS["loader_bytes_ratio"],
    }
    write_json(args.out, result)
    t, f, d = result["train_step"], result["fit_rotations"], result["loader"]
    print(f"MiB/CE {t['mib_over_ce']} (before {t['mib_over_ce_before']}), ALIFE/CE {t['alife_over_ce']}; "
          f"fit-rotations {f['classes']} classes: {f['speedup_extracted_bank']}x (extracted bank), "
          f"{f['speedup_rotated_bank']}x (rotated); loader bytes {d['bytes_ratio_before_over_now']}x fewer; "
          f"targets met: {all(result['targets_met'].values())}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
