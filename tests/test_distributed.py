"""train-base and evaluate under torchrun (2 CPU processes, gloo), as issue 6 asks."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import TOY_TRAIN_ARGS

pytestmark = pytest.mark.slow

TORCHRUN = Path(sys.executable).parent / "torchrun"


def _torchrun(*args, env):
    full = dict(os.environ, INCSEG_NO_PROGRESS="1", OMP_NUM_THREADS="1", **env)
    return subprocess.run([str(TORCHRUN), "--standalone", "--nproc_per_node=2", "-m", "incseg_cli", *map(str, args)],
                          capture_output=True, text=True, env=full, timeout=600)


@pytest.mark.skipif(not TORCHRUN.exists(), reason="torchrun missing")
def test_torchrun_train_and_evaluate(toy_root, toy_env, run_cli, tmp_path):
    out = tmp_path / "ddp"
    r = _torchrun("train-base", "--data", toy_root, "--task", "10-10-ov", *TOY_TRAIN_ARGS, "--epochs", "1",
                  "--workers", "0", "--out", out, env=toy_env)
    assert r.returncode == 0, r.stderr[-3000:]
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint.pt", "manifest.json", "metrics.json"]
    manifest = json.loads(out.joinpath("manifest.json").read_text())
    assert manifest["world_size"] == 2 and manifest["per_device_batch"] == 4 and manifest["global_batch"] == 8
    assert manifest["status"] == "complete"
    assert r.stdout.count("{") == 0  # no --json: nothing on stdout, and no table printed twice
    assert r.stderr.count("mIoU %") == 1

    single = run_cli("evaluate", out, "--data", toy_root, "--eval-size", "32", "--json", "--workers", "0")
    multi = _torchrun("evaluate", out, "--data", toy_root, "--eval-size", "32", "--json", "--workers", "0", env={})
    assert single.returncode == 0 and multi.returncode == 0, multi.stderr[-3000:]
    a, b = json.loads(single.stdout), json.loads(multi.stdout)
    assert a["confusion"] == b["confusion"]  # every val image counted exactly once
    assert a["protocol"]["images"] == b["protocol"]["images"] == 24
    assert a["miou"] == b["miou"]


def test_global_batch_must_divide(toy_root, toy_env, tmp_path):
    r = _torchrun("train-base", "--data", toy_root, "--task", "10-10-ov", *TOY_TRAIN_ARGS, "--batch-size", "9",
                  "--epochs", "1", "--out", tmp_path / "odd", env=toy_env)
    # torchrun's launcher prints its own ChildFailedError traceback; the workers print one line
    assert r.returncode != 0 and "error: --batch-size 9 is the global batch" in r.stderr
    assert "incseg_cli/" not in r.stderr
