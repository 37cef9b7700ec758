"""evaluate: a checkpoint (or run directory) on the validation set of its dataset."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from incseg_cli.engine.checkpoint import check_task, load_checkpoint, model_from_checkpoint
from incseg_cli.engine.stage import amp_dtype, evaluate_on, make_eval_loader, resolve_device
from incseg_cli.errors import UsageError
from incseg_cli.stages.common import check_files, open_data
from incseg_cli.tasks import get_task


def evaluate_checkpoint(path: str | Path, data: str | Path, protocol: str = "crop", size: int = 512,
                        batch_size: int = 8, workers: int = 2, device: str = "auto",
                        amp: str = "auto", expect_task: str | None = None) -> dict[str, Any]:
    if protocol not in ("crop", "full"):
        raise UsageError(f"--eval-protocol must be crop or full, got {protocol!r}")
    ckpt = load_checkpoint(path)
    task, step = ckpt.task, ckpt.step
    if expect_task is not None:
        check_task(ckpt, get_task(task.dataset, expect_task), step)
    # The last step's images decide the label space the dataset root is read in.
    layout = open_data(task.step_datasets[step], data, task.dataset)
    val_ids = layout.ids("val")
    check_files(layout, "val", val_ids)
    model = model_from_checkpoint(ckpt)
    dev = resolve_device(device)
    model.to(dev)
    loader = make_eval_loader(layout, val_ids, task, step, protocol, size, batch_size, workers)
    metrics = evaluate_on(model, loader, task, step, protocol, size, dev, amp_dtype(amp, dev), layout.class_names)
    metrics["checkpoint"] = str(ckpt.path)
    metrics["method"] = ckpt.header["method"]
    return metrics
