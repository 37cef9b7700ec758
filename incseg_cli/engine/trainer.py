"""The one training loop every method runs.

A method turns a batch into named losses; the loop sums them, steps the optimiser and the
poly schedule, writes ``last.pt`` at every epoch end (and at the next iteration boundary
after SIGINT/SIGTERM), and resumes from it. What varies between stages (validation,
manifest bookkeeping) is a hook.
"""

from __future__ import annotations

import math
import random
import signal
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from incseg_cli.console import ProgressBar, is_main_process, log
from incseg_cli.engine import distributed
from incseg_cli.engine.checkpoint import load_file, unwrap
from incseg_cli.engine.sampler import EpochBatchSampler
from incseg_cli.errors import CorruptFileError, Interrupted, NonFiniteError
from incseg_cli.fileio import torch_save
from incseg_cli.methods.base import Method, StepInfo


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
                 hooks: list[Hook] | None = None) -> None:
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
        self.epoch_record: dict[str, Any] = {}
        self.last_losses: dict[str, float] = {}
        self._stop_signal: int | None = None

    # -- state --------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "fingerprint": self.fingerprint,
            "epoch": self.epoch,
            "batch": self.batch_in_epoch,
            "iteration": self.iteration,
            "model": unwrap(self.model).state_dict(),
            "extra": {k: unwrap(m).state_dict() for k, m in self.method.extra_modules().items()},
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "rng": {
                "torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
                "python": random.getstate(),
                "numpy": _numpy_rng_state(),
            },
            "history": self.history,
        }

    def save_last(self) -> None:
        if is_main_process():
            torch_save(self.state_dict(), self.last_path)

    def load_last(self) -> bool:
        """Restore from ``last.pt`` if it belongs to this run; returns whether it did."""
        if not self.last_path.is_file():
            return False
        state = load_file(self.last_path, "resume state")
        if not isinstance(state, dict) or state.get("fingerprint") != self.fingerprint:
            raise CorruptFileError(f"{self.last_path}: belongs to another run; pass --force to start over")
        unwrap(self.model).load_state_dict(state["model"])
        for k, m in self.method.extra_modules().items():
            unwrap(m).load_state_dict(state["extra"][k])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        rng = state["rng"]
        torch.set_rng_state(rng["torch"])
        if rng.get("cuda") and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])
        random.setstate(_tuples(rng["python"]))
        _set_numpy_rng_state(rng["numpy"])
        self.epoch, self.batch_in_epoch = int(state["epoch"]), int(state["batch"])
        self.iteration = int(state["iteration"])
        self.history = list(state.get("history", []))
        return True

    # -- signals ------------------------------------------------------------------------------
    def _on_signal(self, signum: int, frame: Any) -> None:
        if self._stop_signal is not None:  # a second Ctrl-C: stop at once
            raise KeyboardInterrupt
        self._stop_signal = signum
        log(f"{signal.Signals(signum).name}: stopping at the next iteration boundary, writing last.pt")

    def _install_signals(self) -> dict[int, Any]:
        previous = {}
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                previous[sig] = signal.signal(sig, self._on_signal)
            except ValueError:  # not the main thread
                pass
        return previous

    # -- loop ---------------------------------------------------------------------------------
    def _check_finite(self, values: dict[str, float]) -> None:
        for name, value in values.items():
            if not math.isfinite(value):
                raise NonFiniteError(
                    f"loss {name} is {value} at epoch {self.epoch + 1}, iteration {self.batch_in_epoch + 1}; "
                    f"{self.last_path.name} keeps the last finished epoch (try a lower --lr)"
                )

    def _to_device(self, value: Any) -> Any:
        if not torch.is_tensor(value):
            return value
        value = value.to(self.device, non_blocking=True)
        if self.device.type == "cuda" and value.dim() == 4 and value.is_floating_point():
            value = value.contiguous(memory_format=torch.channels_last)
        return value

    def train_step(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        batch = {k: self._to_device(v) for k, v in batch.items()}
        info = StepInfo(self.epoch, self.iteration, self.iters_per_epoch)
        with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
            losses = self.method.losses(self.model, batch, info)
        losses = {k: v.float() for k, v in losses.items()}
        total = sum(losses.values())
        # One device-to-host copy per iteration for the check and the log, not one per loss.
        host = torch.stack([*losses.values(), total]).detach().cpu().tolist()
        values = dict(zip(losses, host))
        self._check_finite(values)
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(total).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            total.backward()
            self.optimizer.step()
        self.scheduler.step()
        values["total"] = host[-1]
        return values

    def fit(self) -> None:
        previous = self._install_signals()
        try:
            for hook in self.hooks:
                hook.before_train(self)
            while self.epoch < self.epochs:
                self._run_epoch()
            for hook in self.hooks:
                hook.after_train(self)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _run_epoch(self) -> None:
        self.sampler.set_epoch(self.epoch, self.batch_in_epoch)
        self.method.train_mode(self.model)
        sums: dict[str, float] = {}
        count = 0
        start = time.monotonic()
        with ProgressBar(self.iters_per_epoch, f"epoch {self.epoch + 1}/{self.epochs}") as bar:
            bar.advance(self.batch_in_epoch)
            for batch in self.loader:
                values = self.train_step(batch)
                self.iteration += 1
                self.batch_in_epoch += 1
                count += 1
                for k, v in values.items():
                    sums[k] = sums.get(k, 0.0) + v
                self.last_losses = values
                bar.advance(1, postfix=f"loss {values['total']:.4f}")
                for hook in self.hooks:
                    hook.after_step(self)
                # Under torchrun every rank must stop at the same iteration.
                if distributed.any_rank(self._stop_signal is not None, self.device):
                    self.save_last()
                    raise Interrupted(
                        f"stopped at epoch {self.epoch + 1}, iteration {self.batch_in_epoch}; rerun the command to resume"
                    )
        self.epoch_record = {
            "epoch": self.epoch + 1,
            "seconds": round(time.monotonic() - start, 3),
            "iterations": count,
            "lr": [g["lr"] for g in self.optimizer.param_groups],
            "losses": {k: v / max(count, 1) for k, v in sums.items()},
        }
        self.epoch += 1
        self.batch_in_epoch = 0
        for hook in self.hooks:
            hook.after_epoch(self)
        self.history.append(self.epoch_record)
        losses = " ".join(f"{k} {v:.4f}" for k, v in self.epoch_record["losses"].items())
        log(f"epoch {self.epoch}/{self.epochs}: {losses} ({self.epoch_record['seconds']:.1f} s)")
        self.save_last()


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
