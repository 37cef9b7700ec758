"""CUDA on a CPU-only machine, for tests: the code believes GPUs exist, tensors stay on the CPU.

Switched on by ``install()`` (the pytest fixture ``cuda_emulation`` in ``tests/conftest.py``)
or, for a whole process (the CLI in a subprocess, every torchrun worker), by the environment
variable ``INCSEG_EMULATE_CUDA=N[,MAJOR.MINOR]``, which ``incseg`` reads at start-up: N
emulated GPUs of compute capability MAJOR.MINOR (default 9.0, an H100).

What it emulates, so that every CUDA branch of incseg runs:

- ``torch.cuda``'s device API: ``is_available``, ``device_count``, ``current_device``,
  ``set_device`` (with torch's own argument checks: an index-less ``torch.device("cuda")``
  fails as on CUDA, an index past the device count fails as CUDA's "invalid device ordinal"),
  ``device``, device name / capability / properties, ``is_bf16_supported`` (native from sm80,
  emulated below, as torch answers), ``synchronize``, streams and events (events time with
  the host clock), memory statistics, and one RNG state per device (16 bytes, as CUDA's
  Philox generator) behind ``manual_seed(_all)``, ``get/set_rng_state(_all)`` and
  ``default_generators``, which has one generator per device, so indexing past it fails.
- Tensors and modules asked onto ``cuda[:N]`` stay on the CPU: a ``TorchFunctionMode``
  rewrites the device of every factory, ``.to`` and ``.cuda`` call; ``pin_memory`` keeps the
  tensor. Code that asks a *tensor* for its device gets ``cpu``.
- ``torch.autocast("cuda", ...)`` applies CUDA's cast policy, not the CPU's: the op lists of
  PyTorch's ``aten/src/ATen/autocast_mode.h`` (lower_precision_fp, fp32, fp32_set_opt_dtype,
  fp32_append_dtype, promote) and ``autocast_mode.cpp`` (banned ops), as Python kernels on the
  AutocastCPU dispatch key, which CPU autocast then routes every op through. Ops that CPU
  autocast casts but CUDA's does not (``linalg_solve``, ``cat``, ``stack``, ...) run in their
  inputs' dtypes, as on CUDA. The casts happen above autograd, as real autocast's do.
- torchrun: the NCCL backend is gloo, ``DistributedDataParallel`` accepts ``device_ids`` for
  its CPU module, and ``SyncBatchNorm`` synchronises batch statistics over gloo (sum and sum
  of squares all-reduced, as its CUDA kernels reduce them).
- ``--compile`` uses the ``aot_eager`` backend unless ``INCSEG_COMPILE_BACKEND`` says
  otherwise: inductor would build Triton kernels for the emulated GPU.

Nothing is faked: every operation runs for real on the CPU, in the dtype CUDA's autocast
would give it, so losses, metrics and files are computed numbers. What cannot be emulated:
the speed, TF32 arithmetic (the flags are recorded but the CPU computes in fp32), cuDNN's
algorithm choice, and memory statistics (always 0: nothing lives on a device).
"""

from __future__ import annotations

import os
import threading
import time
import warnings
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any, Callable, Iterator

import torch
import torch.distributed as dist
from torch import nn
from torch.overrides import TorchFunctionMode

from incseg_cli.engine.speed import COMPILE_BACKEND_ENV

ENV = "INCSEG_EMULATE_CUDA"
RNG_STATE_BYTES = 16  # CUDA's Philox generator state: seed and offset, 8 bytes each

# -- CUDA's autocast policy (PyTorch aten/src/ATen/autocast_mode.h, AT_FORALL_* lists) ------------
LOWER_PRECISION_FP = (
    "_convolution.deprecated", "_convolution", "conv1d", "conv2d", "conv3d", "conv_tbc", "conv_transpose1d",
    "conv_transpose2d.input", "conv_transpose3d.input", "convolution", "prelu", "addmm", "addmv", "addr",
    "matmul", "einsum", "mm", "mv", "linalg_vecdot", "linear", "addbmm", "baddbmm", "bmm", "chain_matmul",
    "linalg_multi_dot", "_thnn_fused_lstm_cell", "_thnn_fused_gru_cell", "lstm_cell", "gru_cell",
    "rnn_tanh_cell", "rnn_relu_cell", "_scaled_dot_product_flash_attention", "scaled_dot_product_attention",
    # registered for CUDA alone in autocast_mode.cpp and AutocastRNN.cpp
    "cudnn_convolution", "cudnn_convolution_transpose", "_cudnn_rnn",
)
FP32 = (
    "acos", "asin", "cosh", "erfinv", "exp", "expm1", "log", "log10", "log2", "log1p", "reciprocal", "rsqrt",
    "sinh", "tan", "pow.Tensor_Scalar", "pow.Tensor_Tensor", "pow.Scalar", "softplus", "layer_norm",
    "native_layer_norm", "group_norm", "frobenius_norm.dim", "nuclear_norm", "nuclear_norm.dim",
    "cosine_similarity", "poisson_nll_loss", "cosine_embedding_loss", "nll_loss", "nll_loss2d",
    "hinge_embedding_loss", "kl_div", "l1_loss", "smooth_l1_loss", "huber_loss", "mse_loss",
    "margin_ranking_loss", "multilabel_margin_loss", "soft_margin_loss", "triplet_margin_loss",
    "multi_margin_loss", "binary_cross_entropy_with_logits", "dist", "pdist", "cdist", "renorm", "logsumexp",
    "upsample_nearest1d", "_upsample_nearest_exact1d", "upsample_nearest2d", "_upsample_nearest_exact2d",
    "upsample_nearest3d", "_upsample_nearest_exact3d", "upsample_linear1d", "upsample_bilinear2d",
    "_upsample_bilinear2d_aa", "upsample_trilinear3d", "upsample_bicubic2d", "_upsample_bicubic2d_aa",
    # newer than the lists above; normalisation and matrix-function ops, fp32 like their kin
    "rms_norm", "linalg_matrix_sqrth",
)
FP32_SET_OPT_DTYPE = (
    "prod", "prod.dim_int", "prod.dim_Dimname", "softmax.int", "softmax.Dimname", "log_softmax.int",
    "log_softmax.Dimname", "cumprod", "cumprod.dimname", "cumsum", "cumsum.dimname", "linalg_vector_norm",
    "linalg_matrix_norm", "linalg_matrix_norm.str_ord", "sum", "sum.dim_IntList", "sum.dim_DimnameList",
)
# norm without a dtype redispatches to its dtype overload with float32 appended
FP32_APPEND_DTYPE = {"norm.Scalar": "norm.ScalarOpt_dtype", "norm.ScalarOpt_dim": "norm.ScalarOpt_dim_dtype",
                     "norm.names_ScalarOpt_dim": "norm.names_ScalarOpt_dim_dtype"}
PROMOTE = ("addcdiv", "addcmul", "atan2", "bilinear", "cross", "dot", "vdot", "grid_sampler", "index_put",
           "tensordot", "scatter_add")
BANNED = ("binary_cross_entropy",)
BANNED_MESSAGE = (
    "torch.nn.functional.binary_cross_entropy and torch.nn.BCELoss are unsafe to autocast.\n"
    "Many models use a sigmoid layer right before the binary cross entropy layer.\n"
    "In this case, combine the two layers using torch.nn.functional.binary_cross_entropy_with_logits\n"
    "or torch.nn.BCEWithLogitsLoss.  binary_cross_entropy_with_logits and BCEWithLogits are\n"
    "safe to autocast."
)


def policy_of() -> dict[str, str]:
    """Op name (``name`` or ``name.overload``) -> CUDA autocast policy."""
    table: dict[str, str] = {}
    for names, policy in ((LOWER_PRECISION_FP, "lower_precision_fp"), (FP32, "fp32"),
                          (FP32_SET_OPT_DTYPE, "fp32_set_opt_dtype"), (tuple(FP32_APPEND_DTYPE), "fp32_append_dtype"),
                          (PROMOTE, "promote"), (BANNED, "banned")):
        table.update(dict.fromkeys(names, policy))
    return table


def ops_with_kernel(key: str) -> set[str]:
    """Every aten op (``name`` or ``name.overload``) this torch registers a kernel for on ``key``."""
    names = set()
    for full in torch._C._dispatch_get_all_op_names():
        if full.startswith("aten::") and torch._C._dispatch_has_kernel_for_dispatch_key(full, key):
            names.add(full[len("aten::"):])
    return names


def _overload(name: str) -> Any:
    base, _, overload = name.partition(".")
    packet = getattr(torch.ops.aten, base, None)
    if packet is None:
        return None
    return getattr(packet, overload or "default", None)


def _eligible(value: Any) -> bool:
    """A tensor autocast casts: floating point and not double (``is_eligible`` in autocast_mode.h)."""
    return isinstance(value, torch.Tensor) and value.is_floating_point() and value.dtype != torch.float64


def _cast(value: Any, dtype: torch.dtype) -> Any:
    if _eligible(value):
        return value if value.dtype == dtype else value.to(dtype)
    if isinstance(value, (list, tuple)) and any(isinstance(v, torch.Tensor) for v in value):
        return type(value)(_cast(v, dtype) for v in value)
    return value


def _tensors(values: Any) -> Iterator[torch.Tensor]:
    for value in values:
        if isinstance(value, torch.Tensor):
            yield value
        elif isinstance(value, (list, tuple)):
            yield from (v for v in value if isinstance(v, torch.Tensor))


_AUTOCAST_CPU = torch._C.DispatchKeySet(torch._C.DispatchKey.AutocastCPU)


def _kernel(op: Any, policy: str, lower: Callable[[], torch.dtype]) -> Callable[..., Any]:
    """A Python kernel applying ``policy`` and redispatching below autocast."""
    dtype_arg = next((i for i, a in enumerate(op._schema.arguments) if a.name == "dtype"), None)
    dtype_kw = dtype_arg is not None and op._schema.arguments[dtype_arg].kwarg_only

    def kernel(*args: Any, **kwargs: Any) -> Any:
        with torch._C._ExcludeDispatchKeyGuard(_AUTOCAST_CPU):
            if policy == "lower_precision_fp":
                args, kwargs = _cast(args, lower()), {k: _cast(v, lower()) for k, v in kwargs.items()}
            elif policy == "fp32":
                args, kwargs = _cast(args, torch.float32), {k: _cast(v, torch.float32) for k, v in kwargs.items()}
            elif policy == "fp32_set_opt_dtype":
                first = next(_tensors([*args, *kwargs.values()]), None)
                if first is not None and _eligible(first):
                    if dtype_kw or (dtype_arg is not None and len(args) <= dtype_arg):
                        kwargs = {**kwargs, "dtype": kwargs.get("dtype") or torch.float32}
                    elif args[dtype_arg] is None:
                        args = (*args[:dtype_arg], torch.float32, *args[dtype_arg + 1:])
            elif policy == "promote":
                tensors = [t for t in _tensors([*args, *kwargs.values()]) if _eligible(t)]
                widest = lower()
                for t in tensors:
                    widest = widest if t.dtype == widest else torch.float32
                args, kwargs = _cast(args, widest), {k: _cast(v, widest) for k, v in kwargs.items()}
            elif policy == "banned":
                raise RuntimeError(BANNED_MESSAGE)
            return op(*args, **kwargs)

    return kernel


def _fallthrough_kernel(op: Any, name: str) -> Callable[..., Any]:
    """An op CUDA's autocast leaves alone: a composite op decomposes with autocast still on
    (its parts meet their own policies, as through CUDA's fallthrough), any other op runs
    below autocast in its inputs' dtypes."""
    composite = torch._C._dispatch_has_kernel_for_dispatch_key(f"aten::{name}", "CompositeImplicitAutograd")

    def kernel(*args: Any, **kwargs: Any) -> Any:
        if composite:
            out = op.decompose(*args, **kwargs)
            if out is not NotImplemented:
                return out
        with torch._C._ExcludeDispatchKeyGuard(_AUTOCAST_CPU):
            return op(*args, **kwargs)

    return kernel


def _append_dtype_kernel(target: Any) -> Callable[..., Any]:
    def kernel(*args: Any, **kwargs: Any) -> Any:
        with torch._C._ExcludeDispatchKeyGuard(_AUTOCAST_CPU):
            if _eligible(args[0]):
                return target(*args, **kwargs, dtype=torch.float32)
            return target(*args, **kwargs)
    return kernel


class CudaAutocastPolicy:
    """CUDA's autocast policy on the AutocastCPU key while registered (see module doc)."""

    def __init__(self, lower: Callable[[], torch.dtype]) -> None:
        self.library = torch.library.Library("aten", "IMPL")
        table = policy_of()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "overriding a previously registered kernel"
            for name, policy in table.items():
                op = _overload(name)
                if op is None:
                    continue  # an op this torch does not have (cudnn ones exist in CUDA builds only)
                if policy == "fp32_append_dtype":
                    target = _overload(FP32_APPEND_DTYPE[name])
                    if target is not None:
                        self.library.impl(name, _append_dtype_kernel(target), "AutocastCPU")
                    continue
                self.library.impl(name, _kernel(op, policy, lower), "AutocastCPU")
            # what only CPU autocast casts: left in its inputs' dtypes, as CUDA leaves it
            for name in sorted(ops_with_kernel("AutocastCPU") - set(table)):
                op = _overload(name)
                if op is not None:
                    self.library.impl(name, _fallthrough_kernel(op, name), "AutocastCPU")

    def remove(self) -> None:
        self.library._destroy()


# -- devices -------------------------------------------------------------------------------------
@dataclass
class EmulatedGpu:
    index: int
    major: int
    minor: int
    name: str
    total_memory: int = 80 * 2**30
    rng_state: torch.Tensor = field(default_factory=lambda: torch.zeros(RNG_STATE_BYTES, dtype=torch.uint8))

    def properties(self) -> SimpleNamespace:
        return SimpleNamespace(name=self.name, major=self.major, minor=self.minor, total_memory=self.total_memory,
                               multi_processor_count=132, is_integrated=False, is_multi_gpu_board=False,
                               uuid=f"emulated-{self.index}")


class _Generator:
    """One device's generator, as ``torch.cuda.default_generators[i]``."""

    def __init__(self, gpu: EmulatedGpu) -> None:
        self.gpu = gpu

    def manual_seed(self, seed: int) -> "_Generator":
        self.gpu.rng_state = _state_of(seed, 0)
        return self

    def seed(self) -> int:
        seed = int.from_bytes(os.urandom(8), "little") >> 1
        self.manual_seed(seed)
        return seed

    def initial_seed(self) -> int:
        return int.from_bytes(bytes(self.gpu.rng_state[:8].tolist()), "little")

    def get_state(self) -> torch.Tensor:
        return self.gpu.rng_state.clone()

    def set_state(self, state: torch.Tensor) -> None:
        if not isinstance(state, torch.Tensor) or state.dtype != torch.uint8 or state.numel() != RNG_STATE_BYTES:
            raise RuntimeError(f"RNG state must be a torch.ByteTensor of {RNG_STATE_BYTES} bytes")
        self.gpu.rng_state = state.clone()


def _state_of(seed: int, offset: int) -> torch.Tensor:
    raw = (seed & (2**64 - 1)).to_bytes(8, "little") + offset.to_bytes(8, "little")
    return torch.tensor(list(raw), dtype=torch.uint8)


class _Event:
    """``torch.cuda.Event``: records the host clock (every emulated op is synchronous)."""

    def __init__(self, enable_timing: bool = False, blocking: bool = False, interprocess: bool = False) -> None:
        self.time: float | None = None

    def record(self, stream: Any = None) -> None:
        self.time = time.perf_counter()

    def synchronize(self) -> None: ...

    def query(self) -> bool:
        return True

    def wait(self, stream: Any = None) -> None: ...

    def elapsed_time(self, end: "_Event") -> float:
        if self.time is None or end.time is None:
            raise RuntimeError("Both events must be recorded before calculating elapsed time.")
        return 1000.0 * (end.time - self.time)


class _Stream:
    def __init__(self, device: Any = None, priority: int = 0, **_: Any) -> None:
        index = _installed.index_of(device, optional=True) if _installed is not None else 0
        self.device = torch.device("cuda", index)
        self.device_index, self.device_type, self.stream_id = index, 1, 0  # 1: CUDA's DeviceType

    def synchronize(self) -> None: ...

    def wait_stream(self, other: Any) -> None: ...

    def wait_event(self, event: Any) -> None: ...

    def record_event(self, event: Any = None) -> _Event:
        event = event or _Event()
        event.record()
        return event

    def query(self) -> bool:
        return True

    def is_capturing(self) -> bool:
        return False

    def __enter__(self) -> "_Stream":
        return self

    def __exit__(self, *exc: Any) -> None: ...


class _KeepOnCpu(TorchFunctionMode):
    """Every tensor asked onto an emulated GPU is made (or stays) on the CPU."""

    def __init__(self, emulation: "CudaEmulation") -> None:
        super().__init__()
        self.emulation = emulation

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        if func is torch.Tensor.cuda:
            device = args[1] if len(args) > 1 else kwargs.get("device")
            self.emulation.check_device(device if device is not None else self.emulation.current)
            return args[0]
        if func in (torch.Tensor.pin_memory,):
            return args[0]
        if "device" in kwargs:
            kwargs = {**kwargs, "device": self.emulation.host(kwargs["device"])}
        if func in (torch.Tensor.to, torch.Tensor.type_as, torch._C._nn._parse_to) or getattr(func, "__name__", "") == "to":
            args = tuple(self.emulation.host(a) for a in args)
        return func(*args, **kwargs)


class CudaEmulation:
    """``install()``'s handle; ``remove()`` puts torch back."""

    def __init__(self, count: int = 1, capability: tuple[int, int] = (9, 0), name: str | None = None) -> None:
        if count < 1:
            raise ValueError("emulate at least one GPU")
        major, minor = capability
        label = name or f"Emulated GPU sm{major}{minor} (incseg test harness, tensors on the CPU)"
        self.gpus = [EmulatedGpu(i, major, minor, label) for i in range(count)]
        self.current = 0
        self._restore: list[tuple[Any, str, Any]] = []
        self._mode: _KeepOnCpu | None = None
        self._policy: CudaAutocastPolicy | None = None

    # -- helpers ------------------------------------------------------------------------------
    def index_of(self, device: Any, optional: bool = False) -> int:
        """torch's own argument rules (``torch.cuda._utils._get_device_index``), then the range."""
        from torch.cuda._utils import _get_device_index

        if device is None and optional:
            return self.current
        index = _get_device_index(device, optional=optional)
        if index < 0:
            return self.current
        self.check_index(index)
        return index

    def check_index(self, index: int) -> None:
        if not 0 <= index < len(self.gpus):
            raise RuntimeError("CUDA error: invalid device ordinal\nCUDA kernel errors might be asynchronously "
                               "reported at some other API call")

    def check_device(self, device: Any) -> None:
        if isinstance(device, int):
            self.check_index(device)
            return
        device = torch.device(device)
        if device.type == "cuda" and device.index is not None:
            self.check_index(device.index)

    def host(self, value: Any) -> Any:
        """``value`` with a CUDA device replaced by the CPU (checked against the device count)."""
        if isinstance(value, torch.device) and value.type == "cuda":
            self.check_device(value)
            return torch.device("cpu")
        if isinstance(value, str) and value.split(":")[0] == "cuda":
            self.check_device(value)
            return "cpu"
        return value

    def _patch(self, owner: Any, name: str, value: Any) -> None:
        self._restore.append((owner, name, owner.__dict__.get(name, getattr(owner, name, None))
                              if isinstance(owner, type) else getattr(owner, name, None)))
        setattr(owner, name, value)

    # -- the torch.cuda API -------------------------------------------------------------------
    def _cuda_api(self) -> dict[str, Any]:
        emu = self

        def set_device(device: Any) -> None:
            index = emu.index_of(device)
            emu.current = index

        class device:  # torch.cuda.device
            def __init__(self, dev: Any) -> None:
                self.index = emu.index_of(dev, optional=True)
                self.previous = emu.current

            def __enter__(self) -> None:
                self.previous, emu.current = emu.current, self.index

            def __exit__(self, *exc: Any) -> None:
                emu.current = self.previous

        def gpu(dev: Any = None) -> EmulatedGpu:
            return emu.gpus[emu.index_of(dev, optional=True)]

        def get_rng_state(device: Any = "cuda") -> torch.Tensor:
            return generators[emu.index_of(device, optional=True) if device != "cuda" else emu.current].get_state()

        def set_rng_state(new_state: torch.Tensor, device: Any = "cuda") -> None:
            if isinstance(device, str):
                device = torch.device(device)
            elif isinstance(device, int):
                device = torch.device("cuda", device)
            index = device.index if device.index is not None else emu.current
            generators[index].set_state(new_state)  # IndexError past the device count, as torch

        def set_rng_state_all(new_states: Any) -> None:
            for i, state in enumerate(new_states):
                set_rng_state(state, i)

        def manual_seed(seed: int) -> None:
            generators[emu.current].manual_seed(int(seed))

        def manual_seed_all(seed: int) -> None:
            for g in generators:
                g.manual_seed(int(seed))

        def is_bf16_supported(including_emulation: bool = True) -> bool:
            return gpu().major >= 8 or including_emulation

        generators = tuple(_Generator(g) for g in self.gpus)
        zero = lambda *a, **k: 0  # noqa: E731  nothing lives on an emulated device
        nothing = lambda *a, **k: None  # noqa: E731
        return {
            "is_available": lambda: True,
            "device_count": lambda: len(emu.gpus),
            "current_device": lambda: emu.current,
            "set_device": set_device,
            "device": device,
            "is_initialized": lambda: True,
            "init": nothing,
            "_lazy_init": nothing,
            "_is_in_bad_fork": lambda: False,
            "synchronize": nothing,
            "empty_cache": nothing,
            "get_device_name": lambda d=None: gpu(d).name,
            "get_device_capability": lambda d=None: (gpu(d).major, gpu(d).minor),
            "get_device_properties": lambda d=None: gpu(d).properties(),
            "is_bf16_supported": is_bf16_supported,
            "get_rng_state": get_rng_state,
            "set_rng_state": set_rng_state,
            "get_rng_state_all": lambda: [g.get_state() for g in generators],
            "set_rng_state_all": set_rng_state_all,
            "manual_seed": manual_seed,
            "manual_seed_all": manual_seed_all,
            "seed": lambda: generators[emu.current].seed(),
            "seed_all": lambda: [g.seed() for g in generators] and None,
            "initial_seed": lambda: generators[emu.current].initial_seed(),
            "default_generators": generators,
            "memory_allocated": zero, "max_memory_allocated": zero, "memory_reserved": zero,
            "max_memory_reserved": zero, "reset_peak_memory_stats": nothing, "reset_accumulated_memory_stats": nothing,
            "memory_stats": lambda *a, **k: {},
            "mem_get_info": lambda d=None: (gpu(d).total_memory, gpu(d).total_memory),
            "Event": _Event, "Stream": _Stream,
            "current_stream": lambda d=None: _Stream(d), "default_stream": lambda d=None: _Stream(d),
            "stream": lambda s=None: s if s is not None else _Stream(),
            "is_current_stream_capturing": lambda: False,
        }

    def _accelerator_api(self) -> dict[str, Any]:
        """``torch.accelerator`` (which optimisers ask about CUDA graph capture)."""
        emu = self
        return {
            "is_available": lambda: True,
            "device_count": lambda: len(emu.gpus),
            "current_accelerator": lambda check_available=False: torch.device("cuda"),
            "current_device_index": lambda: emu.current,
            "current_device_idx": lambda: emu.current,
            "set_device_index": lambda d: setattr(emu, "current", emu.index_of(d)),
            "set_device_idx": lambda d: setattr(emu, "current", emu.index_of(d)),
            "current_stream": lambda d=None: _Stream(d),
            "synchronize": lambda d=None: None,
        }

    # -- install / remove ---------------------------------------------------------------------
    def install(self) -> "CudaEmulation":
        for name, value in self._cuda_api().items():
            self._patch(torch.cuda, name, value)
        for name, value in self._accelerator_api().items():
            if hasattr(torch.accelerator, name):
                self._patch(torch.accelerator, name, value)
        self._patch_autocast()
        self._patch_distributed()
        self._policy = CudaAutocastPolicy(lambda: torch.get_autocast_dtype("cpu"))
        self._mode = _KeepOnCpu(self)
        self._mode.__enter__()
        # inductor would generate Triton kernels for the GPU it now believes in: --compile
        # runs AOTAutograd's graphs eagerly instead (incseg_cli/engine/speed.compile_model)
        self._backend = os.environ.get(COMPILE_BACKEND_ENV)
        os.environ.setdefault(COMPILE_BACKEND_ENV, "aot_eager")
        return self

    def remove(self) -> None:
        if self._mode is not None:
            self._mode.__exit__(None, None, None)
            self._mode = None
        if self._policy is not None:
            self._policy.remove()
            self._policy = None
        for owner, name, value in reversed(self._restore):
            setattr(owner, name, value)
        self._restore.clear()
        if getattr(self, "_backend", None) is None:
            os.environ.pop(COMPILE_BACKEND_ENV, None)

    def _patch_autocast(self) -> None:
        base = torch.amp.autocast_mode.autocast

        class autocast(base):  # type: ignore[misc, valid-type]
            """``torch.autocast``: device_type "cuda" runs CPU autocast under CUDA's policy."""

            def __init__(self, device_type: str, dtype: torch.dtype | None = None, enabled: bool = True,
                         cache_enabled: bool | None = None) -> None:
                if device_type == "cuda":
                    device_type, dtype = "cpu", dtype or torch.float16  # CUDA's default autocast dtype
                super().__init__(device_type, dtype=dtype, enabled=enabled, cache_enabled=cache_enabled)

        self._patch(torch, "autocast", autocast)
        self._patch(torch.amp, "autocast", autocast)
        self._patch(torch.amp.autocast_mode, "autocast", autocast)

    def _patch_distributed(self) -> None:
        init = dist.init_process_group

        def init_process_group(backend: Any = None, *args: Any, **kwargs: Any) -> None:
            if isinstance(backend, str) and "nccl" in backend:
                backend = "gloo"
            return init(backend, *args, **kwargs)

        ddp_init = nn.parallel.DistributedDataParallel.__init__

        def ddp(module_self: Any, module: nn.Module, device_ids: Any = None, output_device: Any = None,
                *args: Any, **kwargs: Any) -> None:
            if device_ids is not None:
                for d in device_ids:
                    self.check_device(d if not isinstance(d, int) else d)
            return ddp_init(module_self, module, None, None, *args, **kwargs)

        self._patch(dist, "init_process_group", init_process_group)
        self._patch(nn.parallel.DistributedDataParallel, "__init__", ddp)
        # DDP refuses SyncBatchNorm in a CPU module; the emulated one below runs on gloo
        self._patch(nn.parallel.DistributedDataParallel, "_passing_sync_batchnorm_handle", lambda ddp, module: None)
        self._patch(nn.SyncBatchNorm, "forward", _sync_batch_norm_forward)
        self._patch(torch.Tensor, "pin_memory", lambda t, device=None: t)
        self._patch(torch.Tensor, "is_pinned", lambda t, device=None: False)


def _sync_batch_norm_forward(self: nn.SyncBatchNorm, x: torch.Tensor) -> torch.Tensor:
    """SyncBatchNorm's training forward over gloo: batch statistics of every process's batch
    (per-channel count, sum and sum of squares all-reduced, in float32 as CUDA's kernels),
    the unbiased variance into the running statistics; gradients flow through the reduction."""
    if not (self.training and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return nn.functional.batch_norm(
            x, self.running_mean, self.running_var, self.weight, self.bias,
            self.training or not self.track_running_stats, self.momentum or 0.0, self.eps)
    from torch.distributed.nn.functional import all_reduce

    dims = [0, *range(2, x.dim())]
    xf = x.float()
    count = torch.full((x.shape[1],), x.numel() / x.shape[1], dtype=torch.float32)
    stats = all_reduce(torch.stack([count, xf.sum(dims), (xf * xf).sum(dims)]))
    n, total, squares = stats[0], stats[1], stats[2]
    mean = total / n
    var = squares / n - mean * mean
    if self.track_running_stats and self.running_mean is not None:
        with torch.no_grad():
            self.num_batches_tracked += 1
            momentum = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
            self.running_mean.mul_(1 - momentum).add_(momentum * mean.detach())
            self.running_var.mul_(1 - momentum).add_(momentum * (var * n / (n - 1)).detach())
    shape = [1, -1] + [1] * (x.dim() - 2)
    y = (xf - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
    if self.affine:
        y = y * self.weight.view(shape) + self.bias.view(shape)
    return y.to(x.dtype)


_installed: CudaEmulation | None = None
_lock = threading.Lock()


def parse(spec: str) -> tuple[int, tuple[int, int]]:
    """``N[,MAJOR.MINOR]`` -> (count, capability)."""
    count, _, capability = spec.partition(",")
    major, _, minor = (capability or "9.0").partition(".")
    return int(count or 1), (int(major), int(minor or 0))


def install(count: int = 1, capability: tuple[int, int] = (9, 0)) -> CudaEmulation:
    """Emulate ``count`` GPUs of ``capability`` until ``remove()``."""
    global _installed
    with _lock:
        if _installed is not None:
            raise RuntimeError("CUDA emulation is already installed")
        _installed = CudaEmulation(count, capability).install()
        return _installed


def remove() -> None:
    global _installed
    with _lock:
        if _installed is not None:
            _installed.remove()
            _installed = None


def active() -> CudaEmulation | None:
    return _installed


def install_from_env() -> CudaEmulation | None:
    """``INCSEG_EMULATE_CUDA=N[,MAJOR.MINOR]``: emulate for the whole process."""
    spec = os.environ.get(ENV)
    if not spec or spec == "0":
        return None
    count, capability = parse(spec)
    return install(count, capability)
