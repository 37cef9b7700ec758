"""A stage's device and numeric precision: which GPU, which autocast dtype, TF32, cuDNN autotuning.

Every stage goes through here, so that a choice that changes numbers (autocast, TF32) is made
once and recorded (``precision_record``), never left to torch's defaults: torch convolves
float32 in TF32 on Ampere and newer GPUs unless told otherwise (``cudnn.conv.fp32_precision``
is ``tf32`` by default), which the papers' fp32 runs on V100s never did.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator

import torch

from incseg_cli.console import warn
from incseg_cli.engine import distributed

AMP_DTYPES: dict[str, torch.dtype | None] = {"off": None, "fp16": torch.float16, "bf16": torch.bfloat16}
TF32_CHOICES = ("off", "on")
TF32_HELP = ("TF32 for float32 convolutions and matrix products on Ampere and newer GPUs: off (IEEE fp32, the "
             "papers' precision on V100) or on (faster, 10-bit mantissa). Recorded in manifest.json; no effect on "
             "the CPU or under --amp bf16/fp16 for the ops autocast lowers.")


def resolve_device(name: str, tf32: str = "off") -> torch.device:
    """The process's device (``distributed.device_for``) with TF32 set as asked."""
    device = distributed.device_for(name, distributed.world_from_env())
    set_tf32(tf32 == "on")
    return device


def set_tf32(enabled: bool) -> None:
    """TF32 on or off for cuDNN convolutions and CUDA matrix products alike. Through the
    ``allow_tf32`` flags: torch itself reads them (``torch.export`` does), and once its newer
    per-backend ``fp32_precision`` settings have been used, reading them fails."""
    torch.backends.cudnn.allow_tf32 = enabled
    torch.backends.cuda.matmul.allow_tf32 = enabled


def capability(device: torch.device) -> tuple[int, int] | None:
    return tuple(torch.cuda.get_device_capability(device)) if device.type == "cuda" else None  # type: ignore[return-value]


def tf32_active(device: torch.device, tf32: str) -> bool:
    """Whether float32 convolutions really run in TF32 here (asked for, on sm80 or newer)."""
    cap = capability(device)
    return tf32 == "on" and cap is not None and cap >= (8, 0)


def native_bf16(device: torch.device) -> bool:
    """bf16 tensor-core arithmetic (sm80 and newer); below, torch emulates it slowly."""
    cap = capability(device)
    return cap is not None and cap >= (8, 0)


def amp_dtype(amp: str, device: torch.device, auto: str = "off") -> torch.dtype | None:
    """The autocast dtype of ``--amp`` on ``device`` (None: fp32). ``auto`` is what
    ``--amp auto`` means here: a training method's ``precision`` (its official code's), fp32
    for evaluation, ``inference_amp`` for predict. CPU runs are fp32 whatever is asked."""
    if device.type != "cuda":
        return None
    dtype = AMP_DTYPES[auto if amp == "auto" else amp]
    if dtype == torch.bfloat16 and not native_bf16(device):
        cap = capability(device)
        warn(f"--amp bf16 on a GPU of compute capability {cap[0]}.{cap[1]}: bf16 is emulated below 8.0 and slow; "
             "--amp fp16 is the fast half precision there")
    return dtype


def inference_amp(device: torch.device) -> str:
    """``--amp auto`` of predict and the Python API: bf16 where the GPU computes it natively,
    else fp16 (whose range the trained networks' activations fit)."""
    return "bf16" if native_bf16(device) else "fp16"


@contextmanager
def autotune(device: torch.device, fixed_size: bool) -> Iterator[None]:
    """cuDNN autotuning while inputs keep one size (training crops, the crop protocol): it
    tunes once per input shape, so on images of every size (``full``) it would tune at each."""
    if device.type != "cuda":
        yield
        return
    before = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = fixed_size
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = before


def precision_record(device: torch.device, dtype: torch.dtype | None, tf32: str) -> dict[str, Any]:
    """What the manifest and metrics say about the arithmetic: autocast dtype, TF32 and GPU."""
    cap = capability(device)
    record: dict[str, Any] = {"amp": str(dtype).replace("torch.", "") if dtype else "off",
                              "tf32": tf32_active(device, tf32)}
    if cap is not None:
        record["gpu"] = torch.cuda.get_device_name(device)
        record["capability"] = f"{cap[0]}.{cap[1]}"
    return record


def warn_tf32(device: torch.device, tf32: str) -> None:
    if tf32_active(device, tf32):
        warn("--tf32 on: float32 convolutions and matrix products run in TF32 (10-bit mantissa), not the IEEE "
             "fp32 of the papers' runs; recorded as tf32: true")
