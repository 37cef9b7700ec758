"""The ``incseg`` command on emulated GPUs, as a shell script runs it (issue 18): started with
``INCSEG_EMULATE_CUDA`` in a subprocess, one GPU with the default ``--device auto``, and a
resume on fewer GPUs than the run started with (torchrun: tests/test_cuda_torchrun.py).

The commands of one test share one subprocess (``main(argv)`` per command, each with its own
exit code, stdout and stderr): a subprocess pays ~3 s of imports, the commands do not."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest

from helpers import CUDA_ENV, TOY_TRAIN_ARGS, commands_in_one_process, wait_for_file

pytestmark = pytest.mark.slow

ONE = [*TOY_TRAIN_ARGS, "--epochs", "1", "--workers", "0"]


def _ok(result: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    return result


def test_every_command_starts_on_one_gpu_with_device_auto(toy_root, toy_env, base_run, tmp_path):
    api_code = ("import numpy as np; import incseg_cli.api as api; "
                f"m = api.load_model({str(base_run)!r}); print(m); "
                "print(m.predict(np.zeros((30, 40, 3), np.uint8))[0].shape)")
    steps = [
        ["cli", ["train-base", "--data", toy_root, "--task", "10-10-ov", *ONE, "--out", tmp_path / "s0"]],
        ["cli", ["evaluate", base_run, "--data", toy_root, "--eval-size", "32", "--workers", "0", "--json"]],
        ["cli", ["predict", base_run, toy_root / "JPEGImages", "--out", tmp_path / "pred", "--workers", "0"]],
        ["cli", ["extract-features", "--prev", base_run, "--data", toy_root, "--preset", "toy", "--samples", "4",
                 "--workers", "0", "--out", tmp_path / "bank.h5"]],
        ["python", api_code],  # the Python API in the same emulated process
    ]
    results = commands_in_one_process(steps, tmp_path / "steps", {**toy_env, **CUDA_ENV})
    train = _ok(results[0])
    assert "note: CUDA emulated on the CPU" in train.stderr and "on cuda:0" in train.stderr
    manifest = json.loads((tmp_path / "s0" / "manifest.json").read_text())
    assert manifest["device"] == "cuda:0" and manifest["precision"]["tf32"] is False
    assert len(results) == len(steps), results[-1].stderr[-3000:]
    evaluation = _ok(results[1])
    precision = json.loads(evaluation.stdout)["precision"]
    assert (precision["device"], precision["amp"], precision["tf32"], precision["capability"]) == ("cuda:0", "off",
                                                                                                  False, "9.0")
    _ok(results[2])
    predicted = json.loads((tmp_path / "pred" / "predict.json").read_text())
    assert predicted["device"] == "cuda:0" and predicted["precision"] == "bfloat16"  # sm90: native bf16
    _ok(results[3])
    assert (tmp_path / "bank.h5").is_file()
    api = _ok(results[4])
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
