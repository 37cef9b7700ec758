"""What the training loop reports, without a host sync per iteration.

Each iteration's losses stay on the device (one small stacked tensor appended to a buffer);
``flush`` reads the buffer on the host with one copy (under torchrun after one all_reduce
that averages it over the ranks) every ``FLUSH_EVERY`` iterations, every ``FLUSH_SECONDS``
on a single process, at every epoch end and before every ``last.pt``. A flush checks the
losses (a NaN or Inf raises ``NonFiniteError`` before ``last.pt`` is written, so it never
holds diverged weights), appends them to ``losses.csv``, adds them to the epoch's means,
and publishes ``progress.json`` for ``incseg status``. Flushes happen at the same
iterations on every rank, since under torchrun they are collectives.
"""

from __future__ import annotations

import math
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.distributed as dist

from incseg_cli.console import ProgressBar, RunFiles, command_line, is_main_process, timestamp
from incseg_cli.engine.losstable import LossTable, split_row
from incseg_cli.errors import IncsegError, Interrupted, NonFiniteError
from incseg_cli.fileio import write_json

FLUSH_EVERY = 50  # iterations between host reads of the losses
FLUSH_SECONDS = 10.0  # or this long on a single process (a clock is not the same on every rank)

RUNNING, TRAINED, INTERRUPTED, FAILED = "running", "trained", "interrupted", "failed"


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def stage_name() -> str:
    """The incseg command this process runs (``train-base``), from its arguments."""
    return next((a for a in sys.argv[1:] if not a.startswith("-")), "")


class Monitor:
    """Owned by a ``Trainer``: the loss buffer, the epoch's sums, the stage's bar,
    ``losses.csv`` and ``progress.json`` (rank 0 writes the files; ``files`` None writes none)."""

    def __init__(self, *, epochs: int, iters_per_epoch: int, last_path: Path, files: RunFiles | None = None,
                 outputs: Sequence[str] = (), lr_names: Sequence[str] = ()) -> None:
        """``lr_names``: the parameter groups' names (their ``name`` key), for the lr_<name>
        columns of losses.csv; their positions when missing or repeated."""
        self.epochs = epochs
        self.iters_per_epoch = iters_per_epoch
        self.total = epochs * iters_per_epoch
        self.last_path = Path(last_path)
        self.files = files if is_main_process() else None
        self.outputs = [str(o) for o in outputs]
        self.lr_names = list(lr_names)
        self.table = LossTable(self.files.losses) if self.files is not None else None
        self._pending: list[torch.Tensor] = []
        self._meta: list[tuple[int, int, tuple[str, ...], list[float]]] = []
        self._last_flush = time.monotonic()
        self.sums: dict[str, float] = {}
        self.count = 0
        self.last: dict[str, float] = {}
        self.last_lr: list[float] = []
        self.epoch = 0  # 1-based epoch in progress
        self.iteration = 0  # iterations done (global)
        self.bar: ProgressBar | None = None
        self.started = timestamp()

    # -- per iteration, on the device ------------------------------------------------------------
    def record(self, epoch: int, iteration: int, losses: dict[str, torch.Tensor], total: torch.Tensor,
               lrs: list[float]) -> None:
        """Buffer iteration ``iteration``'s (1-based, of 1-based ``epoch``) losses: no sync."""
        self._pending.append(torch.stack([*losses.values(), total]).detach())
        self._meta.append((epoch, iteration, tuple(losses), lrs))

    def due(self) -> bool:
        if len(self._pending) >= FLUSH_EVERY:
            return True
        return not _distributed() and bool(self._pending) and time.monotonic() - self._last_flush >= FLUSH_SECONDS

    # -- host side ----------------------------------------------------------------------------------
    def start(self, epoch: int, iteration: int) -> None:
        """Open for a run at ``iteration`` done (0, or what ``last.pt`` restored) in 0-based
        ``epoch``: drop the rows past it, take the epoch's rows so far into its sums, open
        the stage's bar and publish progress. Later calls do nothing."""
        if self.bar is not None:
            return
        self.epoch, self.iteration = epoch + 1, iteration
        self.sums, self.count = {}, 0
        if self.table is not None:
            rows = self.table.open(iteration)
            for row in rows:
                if row["epoch"] == epoch + 1:
                    self._add(split_row(row)[1])
            if rows:
                self.last_lr, self.last = split_row(rows[-1])
        self.bar = ProgressBar(self.total, self._description(), done=iteration).__enter__()
        if self.last:
            self.bar.postfix = f"loss {self.last['total']:.4f}"
        self.publish(RUNNING)

    def _description(self) -> str:
        return f"epoch {min(self.epoch, self.epochs)}/{self.epochs}"

    def _add(self, values: dict[str, float]) -> None:
        for k, v in values.items():
            self.sums[k] = self.sums.get(k, 0.0) + v
        self.count += 1

    def advance(self, iteration: int) -> None:
        """One iteration done: the bar moves; a flush when one is due."""
        self.iteration = iteration
        if self.bar is not None:
            self.bar.advance(1)
        if self.due():
            self.flush()

    def flush(self) -> None:
        """Read, check and publish the buffered losses (see the module docstring)."""
        if not self._pending:
            return
        rows = torch.stack(self._pending) if len({len(m[2]) for m in self._meta}) == 1 else None
        if rows is None:  # a method changed its loss names: rows of different lengths
            rows = torch.nn.utils.rnn.pad_sequence(self._pending, batch_first=True)
        if _distributed():
            dist.all_reduce(rows)
            rows = rows / dist.get_world_size()
        host = rows.cpu().tolist()  # the one device-to-host copy of this flush
        meta, self._pending, self._meta = self._meta, [], []
        self._last_flush = time.monotonic()
        records, bad = [], None
        for (epoch, iteration, names, lrs), values in zip(meta, host):
            named = dict(zip((*names, "total"), values[: len(names) + 1]))
            records.append({"iteration": iteration, "epoch": epoch, **self._lr_columns(lrs), **named})
            if bad is None:
                bad = next(((k, v, epoch, iteration) for k, v in named.items() if not math.isfinite(v)), None)
            if bad is None:
                self._add(named)
                self.last, self.last_lr = named, lrs
        if self.table is not None:
            self.table.append(records)  # the diverging rows too: they show how it went
        if bad is not None:
            name, value, epoch, iteration = bad
            raise NonFiniteError(
                f"loss {name} is {value} at epoch {epoch}, iteration {iteration - (epoch - 1) * self.iters_per_epoch}; "
                f"{self.last_path.name} keeps the last finished epoch (try a lower --lr)")
        if self.bar is not None:
            self.bar.postfix = f"loss {self.last['total']:.4f}"
        self.publish(RUNNING)

    def _lr_columns(self, lrs: list[float]) -> dict[str, float]:
        names = self.lr_names
        if len(names) != len(lrs) or len(set(names)) != len(names):
            names = [str(i) for i in range(len(lrs))]
        return {f"lr_{name}": lr for name, lr in zip(names, lrs)}

    def epoch_means(self) -> dict[str, float]:
        """The means of the epoch's losses over all its iterations, those before a resume included."""
        return {k: v / max(self.count, 1) for k, v in self.sums.items()}

    def end_epoch(self, epoch: int) -> None:
        """``epoch`` (1-based) is done and saved."""
        self.sums, self.count = {}, 0
        self.epoch = epoch + 1
        if epoch >= self.epochs:
            self.publish(TRAINED)
            self._close()
        else:
            if self.bar is not None:
                self.bar.describe(self._description())
            self.publish(RUNNING)

    def stopped(self, err: BaseException, interrupted: bool = False) -> None:
        """The loop ended with ``err`` (``interrupted``: after a stop signal): say so in
        progress.json."""
        if self.bar is None:
            return
        self._close()
        if interrupted or isinstance(err, (Interrupted, KeyboardInterrupt)):
            self.publish(INTERRUPTED)
        else:
            lines = [line.strip() for line in str(err).splitlines() if line.strip()]
            detail = lines[-1] if lines else type(err).__name__
            self.publish(FAILED, error=detail if isinstance(err, IncsegError) else f"{type(err).__name__}: {detail}")

    def _close(self) -> None:
        if self.bar is not None:
            self.bar.close()

    def publish(self, state: str, error: str | None = None) -> None:
        """Write progress.json (atomically): what ``incseg status`` shows of a running run."""
        if self.files is None:
            return
        rate = self.bar.rate() if self.bar is not None else None
        eta = self.bar.eta() if self.bar is not None else None
        progress: dict[str, Any] = {
            "state": state,
            "stage": stage_name(),
            "command": command_line(),
            "pid": os.getpid(),
            "host": platform.node(),
            "epoch": min(self.epoch, self.epochs),
            "epochs": self.epochs,
            "iteration": self.iteration,
            "iterations": self.total,
            "iterations_per_epoch": self.iters_per_epoch,
            "it_per_s": round(rate, 4) if rate else None,
            "eta_seconds": (round(eta, 1) if eta is not None and state == RUNNING
                            else 0.0 if state == TRAINED else None),
            "losses": self.last,
            "lr": self.last_lr,
            "outputs": self.outputs,
            "resume_state": str(self.last_path),
            "started": self.started,
            "updated": timestamp(),
            "updated_unix": round(time.time(), 3),
        }
        if error is not None:
            progress["error"] = error
        write_json(self.files.progress, progress)
