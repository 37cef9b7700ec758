"""torchrun with two processes on two emulated GPUs (issue 18): NCCL on cuda:LOCAL_RANK,
emulated as gloo, every method, evaluation, and ``--device cuda:N`` refused."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import TOY_TRAIN_ARGS

pytestmark = pytest.mark.slow

TORCHRUN = Path(sys.executable).parent / "torchrun"
ONE = [*TOY_TRAIN_ARGS, "--epochs", "1", "--workers", "0"]


def _torchrun(*args, env: dict) -> subprocess.CompletedProcess:
    full = {**os.environ, "INCSEG_NO_PROGRESS": "1", "OMP_NUM_THREADS": "1", "INCSEG_EMULATE_CUDA": "2", **env}
    return subprocess.run([str(TORCHRUN), "--standalone", "--nproc_per_node=2", "-m", "incseg_cli", *map(str, args)],
                          capture_output=True, text=True, env=full, timeout=300)


@pytest.mark.skipif(not TORCHRUN.exists(), reason="torchrun missing")
def test_torchrun_on_two_gpus_every_method(toy_root, toy_env, tmp_path):
    """NCCL on cuda:LOCAL_RANK, emulated as gloo; SyncBatchNorm synchronised over it."""
    data = ["--data", toy_root]
    s0 = _torchrun("train-base", *data, "--task", "10-10-ov", *ONE, "--amp", "fp16", "--out", tmp_path / "s0",
                   env=toy_env)
    assert s0.returncode == 0, s0.stderr[-3000:]
    manifest = json.loads((tmp_path / "s0" / "manifest.json").read_text())
    assert manifest["world_size"] == 2 and manifest["device"] == "cuda:0" and manifest["grad_scaler"] is True
    for method in ("ft", "mib", "plop", "alife"):
        step = _torchrun("train-step", "--prev", tmp_path / "s0", "--method", method, *data, *ONE,
                         "--out", tmp_path / method, env=toy_env)
        assert step.returncode == 0, (method, step.stderr[-3000:])
    # WILSON in its own fp16 + GradScaler, from the fp16 CE step 0 (its BCE step 0 is covered in one process)
    wilson = _torchrun("train-step", "--prev", tmp_path / "s0", "--method", "wilson", *data, *TOY_TRAIN_ARGS,
                       "--epochs", "2", "--pseudo-epochs", "1", "--workers", "0", "--out", tmp_path / "wilson",
                       env=toy_env)
    assert wilson.returncode == 0, wilson.stderr[-3000:]
    evaluation = _torchrun("evaluate", tmp_path / "mib", *data, "--eval-size", "32", "--workers", "0", "--json",
                           env=toy_env)
    assert evaluation.returncode == 0, evaluation.stderr[-3000:]
    # one GPU per process: --device cuda:N would put both on one, refused in one line
    refused = _torchrun("train-base", *data, "--task", "10-10-ov", *ONE, "--device", "cuda:0",
                        "--out", tmp_path / "one", env=toy_env)
    assert refused.returncode != 0
    assert "under torchrun would put every process on one GPU" in refused.stderr
    assert not (tmp_path / "one").exists()
