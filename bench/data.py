"""Is the data pipeline the bottleneck? And how fast does prepare-splits scan masks?

1. DataLoader throughput (images/s: JPEG decode, random resized crop, flip, normalise) vs.
   the training throughput of DeepLabV3-ResNet-101 on batches of the same shape, measured
   in the same run on this machine.
2. ``prepare-splits``-style mask scanning (masks/s) with 1 and 2 worker processes on a
   generated set of a few thousand masks.

Writes bench/results/data.json. Usage: python bench/data.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

from incseg_cli.data.dataset import SegmentationDataset
from incseg_cli.datasets import open_layout
from incseg_cli.data.splits import scan_masks
from incseg_cli.data.toy import build_toy_dataset
from incseg_cli.data.transforms import TrainTransform
from incseg_cli.engine.stage import make_train_loader
from incseg_cli.losses.supervised import cross_entropy
from incseg_cli.models.deeplab import ModelSpec, build_model
from incseg_cli.tasks import get_task

RESULTS = Path(__file__).resolve().parent / "results"
MASK_SIZE = 320  # about a VOC mask (500x375 = 188k pixels; 320x320 = 102k)


def loader_throughput(root: Path, crop: int, batch: int, workers: int, batches: int) -> float:
    layout = open_layout("voc", root)
    ids = layout.ids("train")
    dataset = SegmentationDataset(layout, "train", ids, TrainTransform(crop), lut=get_task("voc", "offline").train_lut(0))
    loader, _ = make_train_loader(dataset, batch, seed=0, workers=workers, device=torch.device("cpu"))
    it = iter(loader)
    next(it)  # worker start-up is not throughput
    start = time.perf_counter()
    n = 0
    for _ in range(batches):
        n += next(it)["image"].shape[0]
    return n / (time.perf_counter() - start)


def training_throughput(backbone: str, crop: int, batch: int, iterations: int) -> float:
    torch.manual_seed(0)
    model = build_model(ModelSpec.for_backbone(backbone, [21])).train()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, nesterov=True)
    x = torch.randn(batch, 3, crop, crop)
    y = torch.randint(0, 21, (batch, crop, crop))

    def step() -> None:
        loss = cross_entropy(model(x)["logits"], y)
        opt.zero_grad()
        loss.backward()
        opt.step()

    step()  # warm-up
    start = time.perf_counter()
    for _ in range(iterations):
        step()
    return batch * iterations / (time.perf_counter() - start)


def scan_throughput(root: Path, workers: int) -> float:
    layout = open_layout("voc", root)
    n = len(layout.ids("train"))
    start = time.perf_counter()
    scan_masks(layout, "train", workers=workers)
    return n / (time.perf_counter() - start)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes, for a smoke run")
    parser.add_argument("--out", type=Path, default=RESULTS / "data.json")
    args = parser.parse_args()
    os.environ.setdefault("INCSEG_NO_PROGRESS", "1")
    crop, batch = (128, 2) if args.quick else (256, 4)
    masks = 600 if args.quick else 3000
    with tempfile.TemporaryDirectory() as tmp:
        # VOC-sized pictures (the toy generator at 384 px) for the loader.
        images = build_toy_dataset(Path(tmp) / "big", images=64, val_images=4, size=384, seed=0).out
        small = build_toy_dataset(Path(tmp) / "masks", images=masks, val_images=4, size=MASK_SIZE, seed=1, workers=2).out
        loader = {w: loader_throughput(images, crop, batch, w, 4 if args.quick else 12) for w in (0, 2)}
        train_r101 = training_throughput("resnet101", crop, batch, 1 if args.quick else 3)
        train_tiny = training_throughput("tiny", 64, 16, 20)
        scan = {w: scan_throughput(small, w) for w in (1, 2)}
    result = {
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "torch": torch.__version__,
                    "threads": torch.get_num_threads()},
        "dataloader_vs_training": {
            "crop": crop, "batch": batch,
            "loader_images_per_s": {f"workers_{w}": round(v, 2) for w, v in loader.items()},
            "resnet101_train_images_per_s": round(train_r101, 3),
            "loader_to_training_ratio": round(loader[0] / train_r101, 1),
            "data_pipeline_is_bottleneck": loader[0] < train_r101,
            "tiny_cnn_train_images_per_s_64px": round(train_tiny, 1),
        },
        "prepare_splits_scan": {
            "masks": masks, "mask_size": MASK_SIZE,
            "masks_per_s": {f"workers_{w}": round(v, 1) for w, v in scan.items()},
            "speedup_2_vs_1": round(scan[2] / scan[1], 2),
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
