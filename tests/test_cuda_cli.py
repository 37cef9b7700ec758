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

from helpers import CUDA_ENV, TOY_TRAIN_ARGS, wait_for_file

pytestmark = pytest.mark.slow

ONE = [*TOY_TRAIN_ARGS, "--epochs", "1", "--workers", "0"]


# Runs the steps of argv[1] (JSON: ["cli", argv] or ["python", code]) in turn in this one
# process, with each step's stdout and stderr (fd 1 and 2) in N.out and N.err under argv[2] and
# its exit code in codes.json; a failed step ends the run.
DRIVER = r'''
import json, os, sys, traceback
from pathlib import Path
from incseg_cli.cli import main

steps, where = json.loads(Path(sys.argv[1]).read_text()), Path(sys.argv[2])
codes, saved = [], (os.dup(1), os.dup(2))
for n, (kind, what) in enumerate(steps):
    sys.stdout.flush(); sys.stderr.flush()
    with open(where / f"{n}.out", "w") as out, open(where / f"{n}.err", "w") as err:
        os.dup2(out.fileno(), 1); os.dup2(err.fileno(), 2)
        try:
            if kind == "cli":
                main(what)
            else:
                exec(what, {})
            code = 0
        except SystemExit as stop:
            code = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
        except Exception:
            traceback.print_exc()
            code = 1
        finally:
            sys.stdout.flush(); sys.stderr.flush()
            os.dup2(saved[0], 1); os.dup2(saved[1], 2)
    codes.append(code)
    (where / "codes.json").write_text(json.dumps(codes))
    if code != 0:
        break
'''


def _in_one_process(steps: list, where, env: dict) -> list[subprocess.CompletedProcess]:
    """``steps`` (["cli", argv] or ["python", code]) run in one subprocess; one CompletedProcess each, up to
    the first that failed."""
    where.mkdir()
    (where / "steps.json").write_text(json.dumps([[kind, what if kind == "python" else [str(a) for a in what]]
                                                   for kind, what in steps]))
    full = {**os.environ, "INCSEG_NO_PROGRESS": "1", **env}
    full.pop("INCSEG_DEBUG", None)
    driver = subprocess.run([sys.executable, "-c", DRIVER, str(where / "steps.json"), str(where)],
                            capture_output=True, text=True, env=full, timeout=300)
    assert driver.returncode == 0, driver.stderr[-3000:]
    codes = json.loads((where / "codes.json").read_text())
    return [subprocess.CompletedProcess(steps[n][1], code, (where / f"{n}.out").read_text(),
                                        (where / f"{n}.err").read_text()) for n, code in enumerate(codes)]


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
    results = _in_one_process(steps, tmp_path / "steps", {**toy_env, **CUDA_ENV})
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
