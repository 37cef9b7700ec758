"""The one training loop every method runs.

A method turns a batch into named losses; the loop sums them, steps the optimiser and the
poly schedule, writes ``last.pt`` at every epoch end (and at the next iteration boundary
after SIGINT/SIGTERM), and resumes from it. What varies between stages (validation,
manifest bookkeeping) is a hook. The losses stay on the device between the loop's reads of
them (``engine/monitor.py``), which also write losses.csv and progress.json.
"""

from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from torch import nn

from incseg_cli import signals
from incseg_cli.console import RunFiles, is_main_process, log
from incseg_cli.data.transforms import normalize_on_device
from incseg_cli.engine import distributed
from incseg_cli.engine.checkpoint import load_sealed, save_sealed
from incseg_cli.models.util import unwrap
from incseg_cli.engine.sampler import EpochBatchSampler
from incseg_cli.engine.monitor import INTERRUPTED, Monitor
from incseg_cli.errors import CorruptFileError, IncsegError, Interrupted
from incseg_cli.methods.base import Method, StepInfo


# Under torchrun the stop check is a collective (a sync): every this many iterations, the
# same ones on every rank. A single process checks its flag, which costs nothing, each time.
STOP_CHECK_EVERY = 5
# The sampler epoch of a method's pre-pass (``Method.before_train``): fixed, so equal seeds give
# equal pre-pass crops, and far from the training epochs so it repeats none of them.
PREPASS_EPOCH = 1_000_003


class Hook:
    def before_train(self, trainer: "Trainer") -> None: ...
    def after_step(self, trainer: "Trainer") -> None: ...
    def after_epoch(self, trainer: "Trainer") -> None: ...
    def after_train(self, trainer: "Trainer") -> None: ...


class Trainer:
    def __init__(self, *, model: nn.Module, method: Method, loader: torch.utils.data.DataLoader,
                 sampler: EpochBatchSampler, optimizer: torch.optim.Optimizer, scheduler: Any,
                 epochs: int, device: torch.device, last_path: Path, fingerprint: str,
                 amp_dtype: torch.dtype | None = None, grad_scaler: torch.amp.GradScaler | None = None,
                 hooks: list[Hook] | None = None, files: RunFiles | None = None,
                 outputs: Sequence[str] = ()) -> None:
        """``files``: where losses.csv and progress.json go (none written without it);
        ``outputs``: the files the stage will write, for ``incseg status``."""
        self.model = model
        self.method = method
        self.loader = loader
        self.sampler = sampler
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.epochs = epochs
        self.device = device
        self.last_path = Path(last_path)
        self.fingerprint = fingerprint
        self.amp_dtype = amp_dtype
        self.scaler = grad_scaler
        self.hooks = hooks or []
        self.iters_per_epoch = sampler.batches_per_epoch
        self.epoch = 0
        self.batch_in_epoch = 0
        self.iteration = 0
        self.history: list[dict[str, Any]] = []
        self.resumed = False  # set by load_last: the method's pre-pass is then not rerun
        self.epoch_record: dict[str, Any] = {}
        self._rng: dict[str, Any] = {}  # every rank's random streams at the last save_last
        self.monitor = Monitor(epochs=epochs, iters_per_epoch=self.iters_per_epoch, last_path=self.last_path,
                               files=files, outputs=outputs,
                               lr_names=[str(g.get("name", i)) for i, g in enumerate(optimizer.param_groups)])

    # -- state --------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "fingerprint": self.fingerprint,
            "epoch": self.epoch,
            "batch": self.batch_in_epoch,
            "iteration": self.iteration,
            "model": unwrap(self.model).state_dict(),
            "extra": {k: unwrap(m).state_dict() for k, m in self.method.extra_modules().items()},
            "method_state": self.method.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "rng": self._rng,
            "history": self.history,
        }

    @property
    def last_losses(self) -> dict[str, float]:
        """The losses of the last iteration read on the host."""
        return self.monitor.last

    def save_last(self) -> None:
        self.monitor.flush()  # checks the losses first: last.pt never holds diverged weights
        # every rank's random streams, gathered to rank 0 (a collective: all ranks save together)
        self._rng = {"world_size": distributed.world_from_env().size,
                     "ranks": distributed.gather_objects(rng_state(self.device))}
        if is_main_process():
            save_sealed(self.state_dict(), self.last_path)  # checksum of the whole state

    def load_last(self) -> bool:
        """Restore from ``last.pt`` if it belongs to this run; returns whether it did."""
        if not self.last_path.is_file():
            return False
        state = load_sealed(self.last_path, "resume state", advice="pass --force to start the run over")
        if not isinstance(state, dict) or state.get("fingerprint") != self.fingerprint:
            raise CorruptFileError(f"{self.last_path}: belongs to another run; pass --force to start over")
        unwrap(self.model).load_state_dict(state["model"])
        for k, m in self.method.extra_modules().items():
            unwrap(m).load_state_dict(state["extra"][k])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self._restore_rng(state["rng"])
        self.epoch, self.batch_in_epoch = int(state["epoch"]), int(state["batch"])
        self.iteration = int(state["iteration"])
        self.history = list(state.get("history", []))
        # last.pt files written before methods had state hold none
        self.method.load_state_dict(state.get("method_state") or {})
        self.resumed = True
        return True

    def _restore_rng(self, rng: dict[str, Any]) -> None:
        """This rank's random streams as saved. On another process count each rank takes the
        saved rank of its number (rank 0's past the saved count): data order and augmentation
        follow from the seed and the iteration and stay exact, per-process streams (dropout,
        random crops drawn in the main process) are then not those of an uninterrupted run."""
        world = distributed.world_from_env()
        ranks = rng.get("ranks")
        if ranks is None:  # last.pt of incseg <= 0.1.0: rank 0's streams and every visible GPU's
            legacy = dict(rng)
            cuda = legacy.pop("cuda", None) or []
            index = self.device.index if self.device.type == "cuda" else None
            legacy["cuda"] = cuda[index] if index is not None and index < len(cuda) else None
            ranks, saved_world = [legacy], 1
        else:
            saved_world = int(rng.get("world_size", len(ranks)))
        if saved_world != world.size:
            log(f"note: {self.last_path.name} was written by {saved_world} process(es), this run has {world.size}: "
                "data order and augmentation resume exactly, per-process random streams (dropout) do not")
        set_rng_state(ranks[world.rank] if world.rank < len(ranks) else ranks[0], self.device)

    # -- signals (incseg_cli/signals.py) -------------------------------------------------------
    def _where(self) -> str:
        if self.batch_in_epoch == 0:
            return f"after epoch {self.epoch}" if self.epoch else "before the first iteration"
        return f"at epoch {self.epoch + 1}, iteration {self.batch_in_epoch}"

    def _at_boundary(self) -> None:
        """An iteration boundary, the same one on every rank: a SIGUSR1 writes last.pt and
        training goes on; SIGINT/SIGTERM write last.pt and stop with ``Interrupted``."""
        stop, save = distributed.any_rank_flags(
            [signals.stop_requested() is not None, signals.take_save_request()], self.device)
        if stop:
            self._interrupt()
        if save:
            self.save_last()
            log(f"wrote {self.last_path.name} {self._where()} (SIGUSR1); training goes on")

    def _interrupt(self) -> None:
        self.save_last()
        # Saving flushes the losses, which publishes "running": the stop must be the last word.
        self.monitor.publish(INTERRUPTED)
        raise Interrupted(f"stopped {self._where()}; {self.last_path.name} is written, "
                          "rerun the same command to resume")

    def _interrupted_by(self, err: Exception) -> bool:
        """A stop signal sent to a whole process group can kill what the loop waits on
        (a DataLoader worker forked by other code, a peer rank) before the loop sees its
        own flag: after a stop signal such an error is the interruption, and the state of
        the last completed iteration is what to keep."""
        if signals.stop_requested() is None or isinstance(err, IncsegError):
            return False
        if self.batch_in_epoch == 0 and self.epoch_record.get("epoch") == self.epoch > len(self.history):
            self.history.append(self.epoch_record)  # failed in an epoch-end hook, after the epoch
        return True

    # -- loop ---------------------------------------------------------------------------------
    def _to_device(self, value: Any) -> Any:
        """One value of a loader batch on the device. Images ``[B, 3, H, W]`` (uint8 from the
        loader) are normalised there, in channels-last on CUDA; labels stay uint8 until a
        loss widens them."""
        if not torch.is_tensor(value):
            return value
        if value.dim() == 4:
            return normalize_on_device(value, self.device)
        return value.to(self.device, non_blocking=True)

    def train_step(self, batch: dict[str, torch.Tensor]) -> None:
        """One optimiser step; its losses go to the monitor's device buffer (no host sync)."""
        batch = {k: self._to_device(v) for k, v in batch.items()}
        info = StepInfo(self.epoch, self.iteration, self.iters_per_epoch)
        with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
            losses = self.method.losses(self.model, batch, info)
        losses = {k: v.float() for k, v in losses.items()}
        total = sum(losses.values())
        # The rate this iteration trains with (the schedule steps after it), for losses.csv.
        lrs = [g["lr"] for g in self.optimizer.param_groups]
        self.monitor.record(self.epoch + 1, self.iteration + 1, losses, total, lrs)
        self.optimizer.zero_grad(set_to_none=True)
        (self.scaler.scale(total) if self.scaler is not None else total).backward()
        for p in self.method.idle_parameters(unwrap(self.model), info):
            p.grad = None  # zeros from a compiled model: the optimiser must skip them, as in eager
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.scheduler.step()

    def _prepass_batches(self) -> Iterator[dict[str, Any]]:
        self.sampler.set_epoch(PREPASS_EPOCH)
        for batch in self.loader:
            yield {k: self._to_device(v) for k, v in batch.items()}

    def fit(self, announce: str | None = None) -> None:
        """Train to the last epoch. ``announce`` is logged once signals are deferred: a stop
        after that line is always served at an iteration boundary, with last.pt written."""
        # Inside, SIGINT/SIGTERM/SIGUSR1 are served at iteration boundaries (a stop during the
        # pre-pass is served at the first one, and last.pt then holds the method's state).
        with signals.deferred():
            if announce:
                log(announce)
            if not self.resumed:
                self.method.before_train(self._prepass_batches(), self.device)
            for hook in self.hooks:
                hook.before_train(self)
            try:
                while self.epoch < self.epochs:
                    self._at_boundary()
                    self._run_epoch()
                self._at_boundary()
            except Exception as err:
                if not self._interrupted_by(err):
                    raise
                self._interrupt()
            for hook in self.hooks:
                hook.after_train(self)

    def _run_epoch(self) -> None:
        self.sampler.set_epoch(self.epoch, self.batch_in_epoch)
        self.method.train_mode(self.model)
        try:
            # First epoch of this invocation: losses.csv cut back to the restored iteration.
            self.monitor.start(self.epoch, self.iteration)
            self._train_epoch()
        except BaseException as err:
            # After a stop signal an error is the interruption (see ``_interrupted_by``).
            self.monitor.stopped(err, interrupted=signals.stop_requested() is not None
                                 and not isinstance(err, IncsegError))
            raise

    def _stop_check_due(self) -> bool:
        return not distributed.world_from_env().distributed or self.iteration % STOP_CHECK_EVERY == 0

    def _train_epoch(self) -> None:
        count = 0
        start = time.monotonic()
        for batch in self.loader:
            self.train_step(batch)
            self.iteration += 1
            self.batch_in_epoch += 1
            count += 1
            self.monitor.advance(self.iteration)
            for hook in self.hooks:
                hook.after_step(self)
            # Under torchrun every rank must stop at the same iteration.
            if self._stop_check_due():
                self._at_boundary()
        self.monitor.flush()
        self.epoch_record = {
            "epoch": self.epoch + 1,
            # seconds and iterations: this invocation's part of the epoch
            "seconds": round(time.monotonic() - start, 3),
            "iterations": count,
            "lr": [g["lr"] for g in self.optimizer.param_groups],
            # over every iteration of the epoch, those before a resume included (losses.csv)
            "losses": self.monitor.epoch_means(),
        }
        self.epoch += 1
        self.batch_in_epoch = 0
        for hook in self.hooks:
            hook.after_epoch(self)
        self.history.append(self.epoch_record)
        losses = " ".join(f"{k} {v:.4f}" for k, v in self.epoch_record["losses"].items())
        log(f"epoch {self.epoch}/{self.epochs}: {losses} ({self.epoch_record['seconds']:.1f} s)")
        self.save_last()
        self.monitor.end_epoch(self.epoch)


def rng_state(device: torch.device) -> dict[str, Any]:
    """This process's random streams: CPU, Python, NumPy and its own GPU's (not every
    visible GPU's: another machine may show fewer)."""
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
        "python": random.getstate(),
        "numpy": _numpy_rng_state(),
    }


def set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    """``rng_state``'s streams back; a GPU state goes to this process's own GPU."""
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], device)
    random.setstate(_tuples(state["python"]))
    _set_numpy_rng_state(state["numpy"])


def _tuples(obj: Any) -> Any:
    """``random.setstate`` wants tuples; weights_only loading gives lists back."""
    if isinstance(obj, (list, tuple)):
        return tuple(_tuples(x) for x in obj)
    return obj


def _numpy_rng_state() -> dict[str, Any]:
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
            "has_gauss": int(has_gauss), "cached": float(cached)}


def _set_numpy_rng_state(state: dict[str, Any]) -> None:
    keys = state["keys"].numpy().astype(np.uint32)
    np.random.set_state(("MT19937", keys, state["pos"], state["has_gauss"], state["cached"]))
