"""The GPU speed settings every stage shares: DataLoader options and the model's layout.

None of them changes a CPU result: on CPU the loader does not pin memory and the model
keeps its default layout.
"""

from __future__ import annotations

import os
from typing import Any

import torch


def loader_speed_options(workers: int, device: torch.device) -> dict[str, Any]:
    """DataLoader keyword arguments: pinned host memory (so copies to the GPU are
    asynchronous) on CUDA, workers that persist across epochs and keep batches prefetched."""
    options: dict[str, Any] = {"num_workers": workers, "pin_memory": device.type == "cuda"}
    if workers > 0:
        options.update(persistent_workers=True, prefetch_factor=4 if device.type == "cuda" else 2)
    return options


def prepare_models(device: torch.device, *models: torch.nn.Module) -> None:
    """On CUDA: channels-last weights, which the tensor-core convolutions want
    (``normalize_on_device`` gives channels-last inputs). cuDNN autotuning is per stage and
    per input shape: ``engine.device.autotune``."""
    if device.type != "cuda":
        return
    for model in models:
        model.to(memory_format=torch.channels_last)


COMPILE_BACKEND_ENV = "INCSEG_COMPILE_BACKEND"


def compile_model(module: torch.nn.Module) -> torch.nn.Module:
    """``torch.compile`` with its default backend (inductor), or the one named by
    ``INCSEG_COMPILE_BACKEND`` (``aot_eager`` in tests: the same autograd graphs, no C++ build)."""
    return torch.compile(module, backend=os.environ.get(COMPILE_BACKEND_ENV, "inductor"))
