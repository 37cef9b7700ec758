"""train-base and evaluate under torchrun (2 CPU processes, gloo), as issue 6 asks; a group SIGTERM
(issue 9)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from helpers import TOY_TRAIN_ARGS

pytestmark = pytest.mark.slow

TORCHRUN = Path(sys.executable).parent / "torchrun"


def _torchrun(*args, env):
    full = dict(os.environ, INCSEG_NO_PROGRESS="1", OMP_NUM_THREADS="1", **env)
    return subprocess.run([str(TORCHRUN), "--standalone", "--nproc_per_node=2", "-m", "incseg_cli", *map(str, args)],
                          capture_output=True, text=True, env=full, timeout=600)


@pytest.mark.skipif(not TORCHRUN.exists(), reason="torchrun missing")
def test_torchrun_train_and_evaluate(toy_root, toy_env, run_cli, tmp_path):
    out = tmp_path / "ddp"
    # 2 epochs, every val image: enough for the ranks' own BatchNorm statistics to change
    # some predictions (measured), had the run evaluated with them
    r = _torchrun("train-base", "--data", toy_root, "--task", "10-10-ov", *TOY_TRAIN_ARGS, "--epochs", "2",
                  "--val-set", "all", "--workers", "0", "--out", out, env=toy_env)
    assert r.returncode == 0, r.stderr[-3000:]
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint.pt", "log.txt", "losses.csv", "manifest.json",
                                                     "metrics.json", "progress.json"]
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
    # The run's own final evaluation is that of its checkpoint: every rank evaluated rank 0's
    # weights and BatchNorm statistics, not the ones it trained with on its shard.
    saved = json.loads(out.joinpath("metrics.json").read_text())
    assert saved["confusion"] == a["confusion"] and saved["miou"] == a["miou"] and saved["classes"] == a["classes"]
    assert a["protocol"]["images"] == b["protocol"]["images"] == saved["protocol"]["images"] == manifest["val_images"]
    assert a["miou"] == b["miou"]


def test_global_batch_must_divide(toy_root, toy_env, tmp_path):
    r = _torchrun("train-base", "--data", toy_root, "--task", "10-10-ov", *TOY_TRAIN_ARGS, "--batch-size", "9",
                  "--epochs", "1", "--out", tmp_path / "odd", env=toy_env)
    # torchrun's launcher prints its own ChildFailedError traceback; the workers print one line
    assert r.returncode != 0 and "error: --batch-size 9 is the global batch" in r.stderr
    assert "incseg_cli/" not in r.stderr


@pytest.mark.skipif(not TORCHRUN.exists(), reason="torchrun missing")
def test_torchrun_interrupted_by_a_group_sigterm(toy_root, toy_env, tmp_path):
    """scancel on a torchrun job: the launcher and both ranks (and their workers) get SIGTERM,
    and the launcher forwards another. Every rank stops at the same iteration boundary, rank 0
    writes last.pt, and one line reports it (torchrun then prints its own SignalException)."""
    out, log = tmp_path / "ddp", tmp_path / "stderr.txt"
    env = dict(os.environ, INCSEG_NO_PROGRESS="1", OMP_NUM_THREADS="1", **toy_env)
    with open(log, "w") as fh:
        proc = subprocess.Popen([str(TORCHRUN), "--standalone", "--nproc_per_node=2", "-m", "incseg_cli", "train-base",
                                 "--data", str(toy_root), "--task", "10-10-ov", *TOY_TRAIN_ARGS, "--epochs", "3",
                                 "--workers", "1", "--out", str(out)],
                                stdout=subprocess.DEVNULL, stderr=fh, env=env, start_new_session=True)
    deadline = time.monotonic() + 300
    while "training voc/10-10-ov" not in log.read_text():
        assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(timeout=300)
    err = log.read_text()
    interrupted = [line for line in err.splitlines() if line.startswith("interrupted:")]
    assert len(interrupted) == 1 and "last.pt is written" in interrupted[0], err[-3000:]
    assert err.count("SIGTERM: stopping") == 1 and "incseg_cli/" not in err
    state = torch.load(out / "last.pt", weights_only=True)
    assert state["iteration"] < 3 * 13
