"""The GPU speed settings every stage shares: DataLoader options and the model's layout.

None of them changes a CPU result: on CPU the loader does not pin memory and the model
keeps its default layout.
"""

from __future__ import annotations

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
    """On CUDA: cuDNN autotuning (the crops have one size) and channels-last weights, which
    the tensor-core convolutions want (``normalize_on_device`` gives channels-last inputs)."""
    if device.type != "cuda":
        return
    torch.backends.cudnn.benchmark = True
    for model in models:
        model.to(memory_format=torch.channels_last)
