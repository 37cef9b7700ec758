"""The CUDA emulation itself (incseg_cli/testing/cuda.py) and the CUDA-only code it reaches:
device selection, per-device RNG state, autocast policy, TF32, cuDNN autotuning, bf16 (issue 18)."""

from __future__ import annotations

import pytest
import torch

from incseg_cli.engine import device as dev
from incseg_cli.engine.distributed import World, device_for
from incseg_cli.errors import UsageError
from incseg_cli.testing import cuda


# -- the harness behaves as CUDA does ---------------------------------------------------------------
def test_policy_lists_are_this_torchs_cuda_autocast_kernels():
    registered = cuda.ops_with_kernel("AutocastCUDA")
    if not registered:
        pytest.skip("this torch registers no AutocastCUDA kernels")
    listed = {name for name in cuda.policy_of() if cuda._overload(name) is not None}
    assert registered == listed


def test_index_less_device_and_bad_ordinals_fail_as_on_cuda(emulate_cuda):
    emulate_cuda(2)
    assert torch.cuda.is_available() and torch.cuda.device_count() == 2
    with pytest.raises(ValueError, match="specified index"):
        torch.cuda.set_device(torch.device("cuda"))
    torch.cuda.set_device(1)
    assert torch.cuda.current_device() == 1
    with pytest.raises(RuntimeError, match="invalid device ordinal"):
        torch.zeros(1, device="cuda:2")
    states = torch.cuda.get_rng_state_all()
    assert len(states) == 2 and all(s.numel() == 16 for s in states)
    with pytest.raises(IndexError):  # as torch's default_generators past the device count
        torch.cuda.set_rng_state_all([*states, states[0]])


def test_tensors_stay_on_the_cpu_and_cuda_autocast_rules_apply(emulate_cuda):
    emulate_cuda(1)
    conv = torch.nn.Conv2d(3, 4, 3).to("cuda")
    x = torch.randn(2, 3, 8, 8, device="cuda")
    assert x.device.type == "cpu" and conv.weight.device.type == "cpu"
    for dtype in (torch.float16, torch.bfloat16):
        with torch.autocast("cuda", dtype=dtype):
            y = conv(x)
            assert y.dtype == dtype  # lower_precision_fp
            assert torch.softmax(y, 1).dtype == torch.float32  # fp32_set_opt_dtype (CPU keeps half)
            assert torch.logsumexp(y, 1).dtype == torch.float32  # fp32 (CPU keeps half)
            assert torch.nn.functional.cross_entropy(y, torch.zeros(2, 6, 6, dtype=torch.long)).dtype == torch.float32
            # CUDA does not cast linalg.solve's inputs (CPU autocast casts them to fp32)
            with pytest.raises(RuntimeError, match="same dtype"):
                torch.linalg.solve(torch.randn(2, 3, 3), torch.randn(2, 3, 1).to(dtype))
    # gradients flow through the casts, as through real autocast
    with torch.autocast("cuda", dtype=torch.float16):
        loss = conv(x).float().mean()
    loss.backward()
    assert conv.weight.grad.dtype == torch.float32


def test_removal_restores_torch():
    cuda.install(1)
    emulation_available = torch.cuda.is_available()
    cuda.remove()
    assert emulation_available and cuda.active() is None
    with torch.autocast("cpu", dtype=torch.bfloat16):  # CPU autocast casts linalg.solve again
        assert torch.linalg.solve(torch.randn(2, 3, 3), torch.randn(2, 3, 1).bfloat16()).dtype == torch.float32


# -- device selection ---------------------------------------------------------------------------------
def test_auto_and_cuda_pick_an_indexed_gpu(emulate_cuda):
    emulate_cuda(2)
    assert device_for("auto", World()) == torch.device("cuda", 0)
    assert device_for("cuda", World()) == torch.device("cuda", 0)
    assert device_for("cuda:1", World()) == torch.device("cuda", 1) and torch.cuda.current_device() == 1
    # under torchrun each process takes its LOCAL_RANK's GPU
    assert device_for("auto", World(rank=1, size=2, local_rank=1)) == torch.device("cuda", 1)
    with pytest.raises(UsageError, match="every process on one GPU"):
        device_for("cuda:0", World(rank=1, size=2, local_rank=1))
    with pytest.raises(UsageError, match="shows 2"):
        device_for("cuda:2", World())
    with pytest.raises(UsageError, match="LOCAL_RANK asks for GPU 3"):
        device_for("auto", World(rank=3, size=4, local_rank=3))


def test_cpu_only_machine_refuses_cuda():
    assert device_for("auto", World()) == torch.device("cpu")
    with pytest.raises(UsageError, match="not available"):
        device_for("cuda", World())


def test_rng_state_is_the_own_gpus_and_restores_on_another_count(emulate_cuda):
    from incseg_cli.engine.trainer import rng_state, set_rng_state

    emulate_cuda(4)
    torch.cuda.manual_seed_all(0)
    torch.cuda.set_rng_state(torch.arange(16, dtype=torch.uint8), 3)
    saved = rng_state(torch.device("cuda", 3))
    assert torch.equal(saved["cuda"], torch.arange(16, dtype=torch.uint8))  # its own GPU's, not four
    cuda.remove()
    emulate_cuda(1)
    set_rng_state(saved, torch.device("cuda", 0))
    assert torch.equal(torch.cuda.get_rng_state(0), torch.arange(16, dtype=torch.uint8))


# -- precision choices ------------------------------------------------------------------------------
@pytest.mark.parametrize("capability, expected", [((9, 0), "bf16"), ((8, 0), "bf16"), ((7, 5), "fp16"), ((7, 0), "fp16")])
def test_inference_half_precision_is_bf16_only_where_native(emulate_cuda, capability, expected):
    emulate_cuda(1, capability)
    gpu = torch.device("cuda", 0)
    assert dev.inference_amp(gpu) == expected
    assert dev.amp_dtype("auto", gpu, dev.inference_amp(gpu)) == dev.AMP_DTYPES[expected]
    assert dev.inference_amp(torch.device("cpu")) == "fp16" and dev.amp_dtype("bf16", torch.device("cpu")) is None


def test_tf32_is_set_and_recorded(emulate_cuda):
    emulate_cuda(1, (8, 0))
    gpu = torch.device("cuda", 0)
    before = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    try:
        dev.set_tf32(False)
        assert not torch.backends.cudnn.allow_tf32 and not torch.backends.cuda.matmul.allow_tf32
        assert dev.precision_record(gpu, None, "off") == {"amp": "off", "tf32": False, "gpu": torch.cuda.get_device_name(0),
                                                           "capability": "8.0"}
        dev.set_tf32(True)
        assert torch.backends.cudnn.allow_tf32 and torch.backends.cuda.matmul.allow_tf32
        assert dev.precision_record(gpu, torch.bfloat16, "on")["tf32"] is True
        assert dev.precision_record(torch.device("cpu"), None, "on") == {"amp": "off", "tf32": False}
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = before
    cuda.remove()
    emulate_cuda(1, (7, 0))  # V100: no TF32 whatever is asked
    assert dev.tf32_active(torch.device("cuda", 0), "on") is False


def test_cudnn_autotuning_only_for_one_input_size(emulate_cuda):
    emulate_cuda(1)
    gpu = torch.device("cuda", 0)
    torch.backends.cudnn.benchmark = False
    with dev.autotune(gpu, fixed_size=True):
        assert torch.backends.cudnn.benchmark
        with dev.autotune(gpu, fixed_size=False):  # the full protocol's images of every size
            assert not torch.backends.cudnn.benchmark
        assert torch.backends.cudnn.benchmark
    assert not torch.backends.cudnn.benchmark
    with dev.autotune(torch.device("cpu"), fixed_size=True):
        assert not torch.backends.cudnn.benchmark


def test_cayley_rotations_under_cuda_autocast(emulate_cuda):
    from incseg_cli.models.rotations import CayleyRotations

    emulate_cuda(1)
    rotations = CayleyRotations(3, 8, generator=torch.Generator().manual_seed(0)).to("cuda")
    x = torch.randn(3, 5, 8, device="cuda")
    reference = rotations(x)
    for dtype in (torch.float16, torch.bfloat16):
        with torch.autocast("cuda", dtype=dtype):
            rotated, matrices = rotations(x), rotations.matrices()
        assert rotated.dtype == matrices.dtype == torch.float32
        torch.testing.assert_close(rotated, reference)
