"""A training stage from options to a finished run directory.

``TrainingStage`` decides skip / resume / fresh before any heavy work, then trains with the
shared loop, evaluates, and writes checkpoint.pt, metrics.json and the completed manifest.
train-base, train-step and finetune-classifier differ only in the model and method they
hand to it.
"""

from __future__ import annotations

import contextlib
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch

from incseg_cli import config, signals
from incseg_cli.config import option
from incseg_cli.limits import FRACTION
from incseg_cli.console import RunFiles, log, log_file, warn
from incseg_cli.data.dataset import SegmentationDataset
from incseg_cli.data.transforms import EvalTransform, TrainTransform
from incseg_cli.engine import distributed
from incseg_cli.engine.crops import CropOptions
from incseg_cli.engine.device import (
    TF32_CHOICES, TF32_HELP, amp_dtype, autotune, precision_record, resolve_device, warn_tf32,
)
from incseg_cli.engine.checkpoint import save_checkpoint
from incseg_cli.engine.examplegrid import ExampleGrid
from incseg_cli.models.util import unwrap
from incseg_cli.engine.evaluate import (
    BatchCallback, metrics_from_confusion, run_evaluation, unlearned_advice, unlearned_warnings,
)
from incseg_cli.engine.optim import PolyLR, build_optimizer
from incseg_cli.engine.lock import OutputLock
from incseg_cli.engine.outputs import Recipe
from incseg_cli.engine.rundir import COMPLETE, RESUME, RunDir, input_paths
from incseg_cli.engine.sampler import EpochBatchSampler
from incseg_cli.engine.speed import compile_model, loader_speed_options, prepare_models
from incseg_cli.engine.tracking import LOG_TARGETS, TrackingHook, check_log_target, tracking_hooks
from incseg_cli.engine.trainer import Hook, Trainer
from incseg_cli.errors import UsageError
from incseg_cli.fileio import check_writable, refuse_overlap, write_json
from incseg_cli.methods.base import Method
from incseg_cli.replay import MEMORY_FILE, ReplayMemory
from incseg_cli.models.deeplab import IncrementalDeepLab
from incseg_cli.tasks import Task


@dataclass(kw_only=True)
class TrainSettings(CropOptions):
    """What the training loop needs, declared once for every training stage (train-base,
    train-step, finetune-classifier). ``None`` is filled from the method and the preset."""

    epochs: Optional[int] = option(help="Training epochs.", preset=True)
    batch_size: Optional[int] = option(help="Global batch size in images (split across processes under torchrun).", preset=True)
    lr: Optional[float] = option(help="Base learning rate (WILSON: of the encoder).", preset=True)
    optimizer: Optional[str] = option(help="sgd (momentum, Nesterov) or adam.", choices=("sgd", "adam"), preset=True)
    weight_decay: Optional[float] = option(help="L2 weight decay on every parameter.", preset=True)
    momentum: Optional[float] = option(help="SGD momentum.", preset=True)
    lr_power: Optional[float] = option(help="Poly schedule power: lr·(1 − it/max_it)^power, per iteration.", preset=True)
    lr_warmup: Optional[float] = option(
        limit=FRACTION, since_default=True,
        help="Share of the iterations over which the rate ramps up linearly from 0.001× (DKD's ADE recipe: 0.2). "
             "[0: none; dkd on ade: 0.2]")
    eval_protocol: Optional[str] = option(
        help="crop: resize the shorter side to --eval-size and centre-crop (both papers); full: whole images.",
        choices=("crop", "full"), preset=True)
    eval_size: Optional[int] = option(help="Evaluation resize/crop size in pixels.", preset=True)
    val_set: Optional[str] = option(
        help="Val images of the validation and final evaluation: seen (those with a class of steps 0..t, as "
             "MiB, PLOP and ALIFE test) or all (every val image, as WILSON). Recorded in the manifest and "
             "metrics.json (docs/evaluation.md). [the method's paper: seen; wilson and --loss bce: all]",
        choices=("seen", "all"))
    val_interval: Optional[int] = option(help="Validate every N epochs during training, 0 = only at the end.", preset=True)
    workers: Optional[int] = option(
        help="DataLoader worker processes per process (auto on voc/coco/ade: the CPUs of this process / "
             "torchrun's processes on the node, 1 to 8).", preset=True, volatile=True)
    seed: int = option(0, help="Seed for weights init, data order and augmentation.")
    device: str = option("auto", help="auto (CUDA if present), cpu, cuda or cuda:N.", volatile=True)
    amp: str = option("auto", choices=("auto", "bf16", "fp16", "off"),
                      help="Precision on CUDA. auto: as the method's official code (fp16 with GradScaler for "
                           "WILSON and a --loss bce step 0; fp32 for ALIFE, MiB, PLOP, ft and the rest); bf16: "
                           "the speed option (not the papers' precision); fp16 (with GradScaler); off (fp32). "
                           "CPU runs are always fp32.")
    tf32: str = option("off", choices=TF32_CHOICES, help=TF32_HELP, since_default=True)
    compile: bool = option(False, flag="--compile", help="Compile the model with torch.compile (first iterations are slow while it compiles).")
    log_to: str = option("none", choices=LOG_TARGETS, volatile=True, since_default=True,
                         help="Also send the losses, learning rates, validation mIoU and a grid of 4 val images with "
                              "their ground truth and prediction at each validation to TensorBoard (events in "
                              "RUN/tensorboard/; pip install 'incseg[tensorboard]') or W&B (pip install wandb); "
                              "losses.csv is written either way.")

    def validate(self) -> None:
        # Unset values were refused when the preset filled them (stages/training.py
        # resolve_recipe); ranges of single values and choices come from the declarations;
        # below, what only a training run needs and what relates two values.
        config.validate(self)
        check_log_target(self.log_to)
        checks = [
            (self.batch_size >= 2, f"--batch-size must be >= 2 (BatchNorm needs 2 samples), got {self.batch_size}"),
            (self.scale_min <= self.scale_max, f"need --scale-min <= --scale-max, got {self.scale_min}, {self.scale_max}"),
            (self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:"), f"unknown --device {self.device!r}"),
        ]
        for ok, message in checks:
            if not ok:
                raise UsageError(message)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def make_train_loader(dataset: SegmentationDataset, batch_size: int, seed: int, workers: int,
                      device: torch.device) -> tuple[torch.utils.data.DataLoader, EpochBatchSampler]:
    """``batch_size`` is global: each process loads its share of every global batch."""
    world = distributed.world_from_env()
    per_process = distributed.per_process_batch(batch_size, world)
    sampler = EpochBatchSampler(len(dataset), per_process, seed, rank=world.rank, world_size=world.size)
    if sampler.batches_per_epoch == 0:
        raise UsageError(f"{len(dataset)} training images are fewer than one batch of {batch_size}; lower --batch-size")
    loader = signals.Loader(
        dataset,
        batch_sampler=sampler,
        # its own generator, so that making an iterator never draws from the global RNG
        generator=torch.Generator().manual_seed(seed),
        **loader_speed_options(workers, device),
    )
    return loader, sampler


def make_eval_loader(layout: Any, ids: list[str], task: Task, step: int, protocol: str, size: int,
                     batch_size: int, workers: int, device: torch.device | None = None) -> torch.utils.data.DataLoader:
    """Each process evaluates its own slice of ``ids``: every image counts exactly once."""
    ids = distributed.shard(ids, distributed.world_from_env())
    dataset = SegmentationDataset(layout, "val", ids, EvalTransform(protocol, size), lut=task.eval_lut(step))
    return signals.Loader(
        dataset, batch_size=batch_size if protocol == "crop" else 1, shuffle=False,
        **loader_speed_options(workers, device or torch.device("cpu")),
    )


def evaluate_on(model: IncrementalDeepLab, loader: torch.utils.data.DataLoader, task: Task, step: int,
                protocol: str, size: int, device: torch.device, dtype: torch.dtype | None,
                class_names: list[str] | None = None, on_batch: BatchCallback | None = None,
                val_set: str = "all") -> dict[str, Any]:
    with autotune(device, fixed_size=protocol == "crop"):
        cm = run_evaluation(model, loader, task.num_classes(step), device, dtype, total=len(loader.dataset),
                            on_batch=on_batch)
    images = distributed.all_sum(len(loader.dataset), device)
    proto = {"name": protocol, "size": size if protocol == "crop" else None, "images": images, "val_set": val_set}
    return metrics_from_confusion(cm.numpy(), task, step, proto, class_names)


class ValidationHook(Hook):
    """Evaluates every ``interval`` epochs (the final evaluation is done by the stage)."""

    def __init__(self, interval: int, evaluate: Any) -> None:
        self.interval = interval
        self.evaluate = evaluate

    def after_epoch(self, trainer: Trainer) -> None:
        if self.interval <= 0 or trainer.epoch % self.interval or trainer.epoch == trainer.epochs:
            return
        metrics = self.evaluate()
        trainer.epoch_record["val_miou"] = metrics["miou"]
        log(f"validation after epoch {trainer.epoch}: mIoU all {_pct(metrics['miou']['all'])}")


class ManifestHook(Hook):
    def __init__(self, run: RunDir, manifest: dict[str, Any]) -> None:
        self.run = run
        self.manifest = manifest

    def after_epoch(self, trainer: Trainer) -> None:
        if distributed.world_from_env().is_main:
            self.run.update_manifest(self.manifest, epochs=trainer.history + [trainer.epoch_record])


class ReplacedRunHook(Hook):
    """Deletes the run that ``--force`` moved aside once the new one has a ``last.pt``."""

    def __init__(self, run: RunDir) -> None:
        self.run = run

    def after_step(self, trainer: Trainer) -> None:
        if self.run.replaced is not None and self.run.last.exists():
            self.run.drop_replaced()

    after_epoch = after_step


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.2f}"


# Options naming files or directories a training stage reads.
INPUT_OPTIONS = ("data", "splits", "prev", "current", "old", "bank", "image_labels", "backbone_weights")


def stage_inputs(options: dict[str, Any], inputs: dict[str, str]) -> list[tuple[str, Path]]:
    """Every input of a stage as ``(option, path)``, the runs of checkpoints included."""
    items: list[tuple[str, Path]] = []
    for key in INPUT_OPTIONS:
        value = options.get(key)
        if value and not (key == "backbone_weights" and value in ("imagenet", "none")):
            items += input_paths("--" + key.replace("_", "-"), value)
    for path in inputs:
        items += input_paths("input", path)
    return items


class TrainingStage:
    """Open with the resolved options and input hashes; ``complete`` says whether to skip.

    Opening touches nothing: it refuses an ``--out`` that is, contains or lies inside an
    input, one that cannot be written, and one holding something else, and decides
    skip/resume/fresh. ``train`` then locks ``--out`` and makes the directory, so a stage
    builds and validates its model and method between the two and a mistake found there
    leaves nothing behind."""

    def __init__(self, out: str | Path, options: Sequence[Any], inputs: dict[str, str], force: bool,
                 given: Sequence[str] = ()) -> None:
        """``options``: the stage's resolved option objects (declared in ``config`` style):
        recorded in the manifest, and all but their volatile ones in the fingerprint.
        ``given``: the names the user set (the rest came from the method or the preset),
        recorded as ``given_options`` for ``--config``."""
        self.given = sorted(given)
        recipe = Recipe.of(options, inputs)
        self.run = RunDir(out)
        self.options = recipe.options
        self.inputs = recipe.inputs
        self.force = force
        self.fingerprint = recipe.fingerprint
        self.device = resolve_device(self.options.get("device", "auto"), self.options.get("tf32", "off"))
        self.world = distributed.init(self.device)
        self._lock: OutputLock | None = None

        def decide() -> str:
            refuse_overlap(out, "--out", stage_inputs(self.options, inputs), inside_ok=("--data", "--splits"))
            check_writable(out, "--out", directory=True)
            return self.run.decide(self.fingerprint, force)

        # Rank 0 alone looks at the directory; the others learn its decision (or its error).
        self.state = distributed.on_main(decide)

    @property
    def complete(self) -> bool:
        return self.state == COMPLETE

    def existing_metrics(self) -> dict[str, Any]:
        """The metrics of the complete run that makes this invocation a no-op."""
        import json

        log(f"{self.run.path}: already complete with the same options and inputs, skipping (--force reruns)")
        return json.loads(self.run.metrics_path.read_text())

    def _open(self) -> str:
        """Lock ``--out`` (refused while another process writes it), decide again under the
        lock and make the directory; ``--force`` moves the old run aside."""
        def prepare() -> str:
            self._lock = self.run.lock().acquire()
            return self.run.prepare(self.fingerprint, self.force)

        return distributed.on_main(prepare)

    def train(self, **kwargs: Any) -> dict[str, Any]:
        """Train, evaluate and write the run (see ``_train``). A run that fails or is
        interrupted before its first ``last.pt`` leaves nothing behind (and puts back the run
        ``--force`` was replacing); one with a ``last.pt`` or a finished epoch is never
        deleted. What it logs also goes to OUT/log.txt."""
        try:
            self.state = self._open()
            if self.state == COMPLETE:  # another process finished it meanwhile
                return self.existing_metrics()
            files = RunFiles.of(self.run.path, directory=True)
            # what earlier attempts left to resume from; this one's epochs count only once saved
            had_progress = self.world.is_main and self.run.has_progress()
            try:
                # The run, not the log, decides what a failure removes: a log beside a kept
                # last.pt keeps every attempt's lines and errors (appended).
                with log_file(files.log, remove_refused=False):
                    metrics = self._train(**kwargs)
            except BaseException:
                if self.world.is_main:
                    if not had_progress and not self.run.last.exists() and not self.run.checkpoint.exists():
                        # The epochs this attempt recorded in the manifest were never saved
                        # (last.pt could not be written: a full disk): nothing to resume from.
                        with contextlib.suppress(OSError):
                            self.run.manifest_path.unlink(missing_ok=True)
                    self.run.abandon(extra=[files.log, files.losses, files.progress, self.run.path / MEMORY_FILE])
                raise
            self.run.drop_replaced()
            return metrics
        finally:
            if self._lock is not None:
                self._lock.release()

    def _train(self, *, model: IncrementalDeepLab, method: Method, task: Task, step: int, layout: Any,
              train_ids: list[str], val_ids: list[str], settings: TrainSettings, header: dict[str, Any],
              class_names: list[str] | None = None, replay: ReplayMemory | None = None) -> dict[str, Any]:
        device, world, main = self.device, self.world, self.world.is_main
        dtype = amp_dtype(settings.amp, device, method.precision)
        eval_dtype = amp_dtype(settings.amp, device)
        model.to(device)
        method.to(device)
        # the frozen old model too: its convolutions see the same channels-last batches
        prepare_models(device, model, *method.frozen_modules().values(), *method.extra_modules().values())
        transform = TrainTransform(settings.crop_size, (settings.scale_min, settings.scale_max), hflip=settings.hflip)
        train_set = SegmentationDataset(layout, "train", train_ids, transform, lut=task.train_lut(step),
                                        read_masks=method.reads_masks, seed=settings.seed)
        loader, sampler = make_train_loader(train_set, settings.batch_size, settings.seed, settings.workers, device)
        val_loader = make_eval_loader(layout, val_ids, task, step, settings.eval_protocol, settings.eval_size,
                                      max(1, settings.batch_size // world.size), settings.workers, device)
        optimizer = build_optimizer(method.param_groups(model, settings.lr), settings.optimizer, settings.lr,
                                    settings.weight_decay, settings.momentum)
        # The optimiser holds the raw parameters; wrappers only change how forward/backward run.
        # DDP first, then compile: compiling the DDP module lets DDP overlap its gradient
        # all-reduce with the backward pass (DDPOptimizer); the other order loses that.
        trained = distributed.wrap(model, device, method.ddp_find_unused_parameters)
        trained = compile_model(trained) if settings.compile else trained
        method.distribute(lambda m: distributed.wrap(m, device, method.ddp_find_unused_parameters))
        iters = sampler.batches_per_epoch
        scheduler = PolyLR(optimizer, iters * settings.epochs, settings.lr_power,
                           constant_iters=method.constant_lr_epochs * iters,
                           warmup_iters=(settings.lr_warmup or 0.0) * iters * settings.epochs)
        scaler = torch.amp.GradScaler("cuda") if dtype == torch.float16 else None
        # The tracker's example grid keeps its predictions from the validation passes below, on
        # rank 0 (which alone tracks) and over rank 0's slice of the val set: no forward pass
        # or collective operation of its own.
        examples = (ExampleGrid(layout, val_loader.dataset.ids, task, step, settings.eval_protocol,
                                settings.eval_size) if main and settings.log_to != "none" else None)

        def evaluate() -> dict[str, Any]:
            # every rank evaluates rank 0's weights and statistics: those that are saved
            distributed.sync_from_rank0(model)
            return evaluate_on(model, val_loader, task, step, settings.eval_protocol, settings.eval_size,
                               device, eval_dtype, class_names, val_set=self.options.get("val_set", "all"),
                               on_batch=examples.on_batch if examples is not None else None)

        manifest_extra = {
            "device": str(device), "world_size": world.size, "per_device_batch": settings.batch_size // world.size,
            "global_batch": settings.batch_size, "amp": str(dtype) if dtype else "off",
            "grad_scaler": scaler is not None, "eval_amp": str(eval_dtype) if eval_dtype else "off",
            "precision": precision_record(device, dtype, settings.tf32),
            "train_images": len(train_ids), "val_images": len(val_ids), "iterations_per_epoch": iters,
            "given_options": self.given,
        }
        if replay is not None:  # the memory the next step reads back (--prev), and what it holds on disk
            if main:
                replay.write(self.run.path)
            manifest_extra["replay"] = replay.summary(replay.image_bytes(layout))
        manifest = self.run.start_manifest("", self.options, self.fingerprint, self.inputs, manifest_extra) if main else {}
        files = RunFiles.of(self.run.path, directory=True)
        trackers: list[TrackingHook] = []
        try:
            trackers = (tracking_hooks(settings.log_to, self.run.path, files.losses, self.options,
                                       examples.grid if examples is not None else None) if main else [])
            trainer = Trainer(model=trained, method=method, loader=loader, sampler=sampler, optimizer=optimizer,
                              scheduler=scheduler, epochs=settings.epochs, device=device, last_path=self.run.last,
                              fingerprint=self.fingerprint, amp_dtype=dtype, grad_scaler=scaler,
                              hooks=[ValidationHook(settings.val_interval, evaluate), ManifestHook(self.run, manifest),
                                     ReplacedRunHook(self.run), *method.hooks(), *trackers],
                              files=files,
                              outputs=[str(self.run.checkpoint), str(self.run.metrics_path)])
            if self.state == RESUME and trainer.load_last():
                log(f"resuming {self.run.path} from epoch {trainer.epoch + 1}, "
                    f"iteration {trainer.batch_in_epoch + 1}")
            warn_tf32(device, settings.tf32)
            started = time.monotonic()
            with autotune(device, fixed_size=True):  # training crops all have one size
                trainer.fit(announce=f"training {task.dataset}/{task.key} step {step} ({method.name}) on {device}: "
                                     f"{len(train_ids)} images, {iters} iterations/epoch, {settings.epochs} epochs")
            train_seconds = time.monotonic() - started
            metrics = evaluate()
            metrics["run"] = str(self.run.path)
            metrics["method"] = method.name
            metrics["warnings"] = unlearned_warnings(metrics, unlearned_advice(step, self.options))
            if main:
                # the method's settings under its name: its keys never meet the header's own
                method_settings = method.header()
                save_checkpoint(self.run.checkpoint,
                                {**header, **({method.name: method_settings} if method_settings else {})}, model,
                                {k: unwrap(m).state_dict() for k, m in method.extra_modules().items()})
                write_json(self.run.metrics_path, metrics)
                # the method's settings and state (PLOP's thresholds) as the checkpoint header has them
                self.run.update_manifest(manifest, status="complete", method=method.name,
                                         method_settings=method_settings, epochs=trainer.history,
                                         train_seconds=round(sum(e["seconds"] for e in trainer.history), 3),
                                         wall_seconds_this_invocation=round(train_seconds, 3),
                                         finished=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
                self.run.last.unlink(missing_ok=True)
                log(f"wrote {self.run.checkpoint}, metrics.json, manifest.json, losses.csv, log.txt")
        except BaseException:
            for tracker in trackers:
                with contextlib.suppress(Exception):  # the stage's own error is the one to report
                    tracker.close(ok=False)
            raise
        # once the run is written: a tracker's end (W&B's upload) never holds back its checkpoint,
        # and its failure does not fail a complete run (nor leave the other ranks at the barrier)
        for tracker in trackers:  # the final evaluation is the last epoch's validation
            try:
                tracker.finish(metrics["miou"], trainer.iteration)
            except Exception as err:
                warn(f"--log-to {settings.log_to}: the tracker failed at the end of the run ({err}); "
                     f"the run is complete, losses.csv and metrics.json hold what it did not send")
                with contextlib.suppress(Exception):
                    tracker.close(ok=False)
        distributed.barrier()
        return metrics

