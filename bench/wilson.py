"""WILSON iteration cost: one training iteration of ``train-step --method wilson`` (after the
warm-up: old-model forward, two localizer passes, PAMR, five losses) against plain
cross-entropy training of the same model on the same batch, both through the shared
``Trainer.train_step``; and the time PAMR takes inside the WILSON iterations.

    python bench/wilson.py [--backbone tiny --crop 64 --batch 16] [--out bench/results/wilson.json]

The defaults are the toy preset (what ``make demo`` trains). Rounds alternate CE, WILSON and
WILSON-warm-up, so that load from other processes hits all of them alike; the medians of
the per-round means are reported.
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

import torch

from incseg_cli.engine.optim import PolyLR, build_optimizer
from incseg_cli.engine.sampler import EpochBatchSampler
from incseg_cli.engine.trainer import Trainer
from incseg_cli.fileio import write_json
from incseg_cli.methods.ft import FineTuning
from incseg_cli.models.util import freeze
from incseg_cli.methods.wilson import Wilson
from incseg_cli.models.deeplab import ModelSpec, build_model
from incseg_cli.models.localizer import PAMR, Localizer
from incseg_cli.tasks import get_task

TARGET_RATIO = 1.8


class TimedPAMR(PAMR):
    """PAMR that adds its own wall time to ``seconds`` (synchronising CUDA around it)."""

    def __init__(self) -> None:
        super().__init__()
        self.seconds = 0.0
        self.calls = 0

    def forward(self, image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        _sync(mask.device)
        start = time.perf_counter()
        out = super().forward(image, mask)
        _sync(mask.device)
        self.seconds += time.perf_counter() - start
        self.calls += 1
        return out


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _trainer(model, method, lr: float, device: torch.device, last: Path) -> Trainer:
    sampler = EpochBatchSampler(10_000, 2, 0)
    optimizer = build_optimizer(method.param_groups(model, lr), "adam", lr, 0.0)
    scheduler = PolyLR(optimizer, 10**9, 0.9, constant_iters=method.constant_lr_epochs * sampler.batches_per_epoch)
    return Trainer(model=model, method=method, loader=None, sampler=sampler, optimizer=optimizer,
                   scheduler=scheduler, epochs=1, device=device, last_path=last, fingerprint="bench")


def _time(trainer: Trainer, batch: dict, iterations: int, device: torch.device) -> float:
    _sync(device)
    start = time.perf_counter()
    for _ in range(iterations):
        trainer.train_step(batch)
    _sync(device)
    return (time.perf_counter() - start) / iterations


def run(args: argparse.Namespace) -> dict:
    load_before = list(os.getloadavg())
    torch.manual_seed(0)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    task = get_task("voc", "10-10-ov")
    spec = ModelSpec.for_backbone(args.backbone, task.head_sizes(0))
    old = freeze(build_model(spec)).to(device)

    def current() -> torch.nn.Module:
        model = build_model(ModelSpec.from_dict(spec.to_dict()))
        model.load_state_dict(old.state_dict())
        model.add_step(len(task.new_classes(1)), init="random")
        return model.to(device)

    b, size = args.batch, args.crop
    labels = torch.zeros(b, task.num_classes(1) - 1)
    gen = torch.Generator().manual_seed(0)
    for row in range(b):  # one or two new classes per image, as in VOC 10-10 (1.29 on average)
        picks = torch.randperm(10, generator=gen)[: 1 + row % 3 // 2]
        labels[row, 10 + picks] = 1.0
    # As the loader hands a batch over: uint8 image and labels (normalised on the device).
    batch = {
        "image": torch.randint(0, 256, (b, 3, size, size), generator=gen, dtype=torch.uint8),
        "label": torch.randint(0, task.num_classes(1), (b, size, size), generator=gen, dtype=torch.uint8),
        "index": torch.arange(b),
    }

    ce_model = current()
    ce = FineTuning()
    wilson_model = current()
    localizer = Localizer(wilson_model.body_channels, wilson_model.num_classes, spec.head_channels)
    method = Wilson(old_model=old, localizer=localizer, labels=labels, n_old=task.num_classes(0), alpha=0.5,
                    pseudo_epochs=1, affinity=True, lambda_enc=1.0, lr_head=args.lr, lr_localizer=args.lr)
    pamr = TimedPAMR()
    method.pamr = pamr
    method.to(device)
    with tempfile.TemporaryDirectory() as tmp:
        t_ce = _trainer(ce_model, ce, args.lr, device, Path(tmp) / "a.pt")
        t_w = _trainer(wilson_model, method, args.lr, device, Path(tmp) / "b.pt")
        t_warm = _trainer(wilson_model, method, args.lr, device, Path(tmp) / "c.pt")
        t_w.epoch = method.pseudo_epochs  # past the warm-up: every loss is on
        ce.train_mode(ce_model)
        method.train_mode(wilson_model)
        for trainer in (t_ce, t_w, t_warm):
            _time(trainer, batch, args.warmup, device)
        rounds: dict[str, list[float]] = {"ce": [], "wilson": [], "wilson_warmup": [], "pamr": []}
        for _ in range(args.rounds):
            rounds["ce"].append(_time(t_ce, batch, args.iterations, device))
            pamr.seconds, pamr.calls = 0.0, 0
            rounds["wilson"].append(_time(t_w, batch, args.iterations, device))
            rounds["pamr"].append(pamr.seconds / max(pamr.calls, 1))
            rounds["wilson_warmup"].append(_time(t_warm, batch, args.iterations, device))
    ms = {k: 1000 * statistics.median(v) for k, v in rounds.items()}
    ratio = ms["wilson"] / ms["ce"]
    h = size // spec.output_stride
    return {
        "benchmark": "wilson-iteration",
        "config": {"backbone": args.backbone, "crop": size, "batch": b, "feature_map": [h, h],
                   "classes": task.num_classes(1), "localizer_width": spec.head_channels,
                   "optimizer": "adam", "device": str(device), "threads": torch.get_num_threads(),
                   "iterations_per_round": args.iterations, "rounds": args.rounds},
        "ms_per_iteration": {k: round(v, 3) for k, v in ms.items() if k != "pamr"},
        "pamr_ms": round(ms["pamr"], 3),
        "ratio_wilson_over_ce": round(ratio, 3),
        "ratio_warmup_over_ce": round(ms["wilson_warmup"] / ms["ce"], 3),
        "pamr_over_rest_of_iteration": round(ms["pamr"] / (ms["wilson"] - ms["pamr"]), 4),
        "target_ratio": args.target,
        "within_target": ratio <= args.target,
        "rounds_ms": {k: [round(1000 * x, 3) for x in v] for k, v in rounds.items()},
        "versions": {"torch": torch.__version__, "python": platform.python_version()},
        "loadavg_before": load_before, "loadavg_after": list(os.getloadavg()),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="tiny", help="tiny (toy preset), resnet18/50/101 [tiny]")
    parser.add_argument("--crop", type=int, default=64, help="square training crop in pixels [64]")
    parser.add_argument("--batch", type=int, default=16, help="images per iteration [16]")
    parser.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate [1e-3]")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="cpu or cuda [cuda if available]")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads, 0 = torch's default [0]")
    parser.add_argument("--warmup", type=int, default=3, help="untimed iterations per variant [3]")
    parser.add_argument("--iterations", type=int, default=10, help="timed iterations per round [10]")
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds; medians are reported [5]")
    parser.add_argument("--target", type=float, default=TARGET_RATIO,
                        help=f"largest WILSON/CE ratio that passes [{TARGET_RATIO}; 1.4 for ResNet-101]")
    parser.add_argument("--out", type=Path, default=Path("bench/results/wilson.json"),
                        help="JSON output [bench/results/wilson.json]")
    args = parser.parse_args(argv)
    result = run(args)
    write_json(args.out, result)
    print(json.dumps(result, indent=2))
    print(f"wilson {result['ms_per_iteration']['wilson']:.1f} ms vs CE {result['ms_per_iteration']['ce']:.1f} ms "
          f"per iteration: {result['ratio_wilson_over_ce']:.2f}x (target <= {args.target}); "
          f"PAMR {result['pamr_ms']:.1f} ms = {100 * result['pamr_over_rest_of_iteration']:.1f}% of the rest",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
