"""The ``incseg`` command on emulated GPUs, as a shell script runs it (issue 18): started with
``INCSEG_EMULATE_CUDA`` in a subprocess, one GPU with the default ``--device auto``, a resume
on fewer GPUs than the run started with, and torchrun with two processes on two GPUs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import CUDA_ENV, TOY_TRAIN_ARGS, wait_for_file

pytestmark = pytest.mark.slow

TORCHRUN = Path(sys.executable).parent / "torchrun"
ONE = [*TOY_TRAIN_ARGS, "--epochs", "1", "--workers", "0"]


def _ok(result: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    return result


def test_every_command_starts_on_one_gpu_with_device_auto(toy_root, toy_env, base_run, run_cli, tmp_path):
    env = {**toy_env, **CUDA_ENV}
    train = _ok(run_cli("train-base", "--data", toy_root, "--task", "10-10-ov", *ONE, "--out", tmp_path / "s0", env=env))
    assert "note: CUDA emulated on the CPU" in train.stderr and "on cuda:0" in train.stderr
    manifest = json.loads((tmp_path / "s0" / "manifest.json").read_text())
    assert manifest["device"] == "cuda:0" and manifest["precision"]["tf32"] is False
    evaluation = _ok(run_cli("evaluate", base_run, "--data", toy_root, "--eval-size", "32", "--workers", "0", "--json",
                             env=env))
    precision = json.loads(evaluation.stdout)["precision"]
    assert (precision["device"], precision["amp"], precision["tf32"], precision["capability"]) == ("cuda:0", "off",
                                                                                                  False, "9.0")
    _ok(run_cli("predict", base_run, toy_root / "JPEGImages", "--out", tmp_path / "pred", "--workers", "0", env=env))
    predicted = json.loads((tmp_path / "pred" / "predict.json").read_text())
    assert predicted["device"] == "cuda:0" and predicted["precision"] == "bfloat16"  # sm90: native bf16
    _ok(run_cli("extract-features", "--prev", base_run, "--data", toy_root, "--preset", "toy", "--samples", "4",
                "--workers", "0", "--out", tmp_path / "bank.h5", env=env))
    api = subprocess.run([sys.executable, "-c", (
        "import sys, numpy as np; from incseg_cli.testing import cuda; cuda.install(1); import incseg_cli.api as api; "
        f"m = api.load_model({str(base_run)!r}); print(m); "
        "print(m.predict(np.zeros((30, 40, 3), np.uint8))[0].shape)")],
        capture_output=True, text=True, env={**os.environ, **toy_env}, timeout=120)
    assert api.returncode == 0, api.stderr[-2000:]
    shown, shape = api.stdout.splitlines()[:2]
    assert shown.endswith("cuda:0)") and shape == "(30, 40)"


def test_resume_on_fewer_gpus_than_the_run_started_with(toy_root, toy_env, run_cli, tmp_path):
    out = tmp_path / "s0"
    # started on the second of two GPUs, interrupted once last.pt is written
    proc = subprocess.Popen(
        [sys.executable, "-m", "incseg_cli", "train-base", "--data", str(toy_root), "--task", "10-10-ov",
         *TOY_TRAIN_ARGS, "--epochs", "3", "--device", "cuda:1", "--out", str(out)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "INCSEG_NO_PROGRESS": "1", **toy_env, "INCSEG_EMULATE_CUDA": "2"})
    wait_for_file(out / "last.pt", proc)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    resumed = _ok(run_cli("train-base", "--data", toy_root, "--task", "10-10-ov", *TOY_TRAIN_ARGS, "--epochs", "3",
                          "--out", out, env={**toy_env, **CUDA_ENV}))
    assert "resuming" in resumed.stderr and "on cuda:0" in resumed.stderr
    assert json.loads((out / "manifest.json").read_text())["status"] == "complete"


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
