"""incseg sweep: a grid as a Makefile that make runs in parallel, then the report's mean ± std."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys

import pytest

from helpers import TOY_TRAIN_ARGS


def test_sweep_refuses_what_make_cannot_run(cli, tmp_path, toy_root):
    r = cli("sweep", "--out", tmp_path / "x.mk", "--data", toy_root, "--task", "offline", "--method", "mib")
    assert r.returncode == 2 and "a sweep learns incremental tasks" in r.stderr
    r = cli("sweep", "--out", tmp_path / "x.mk", "--data", toy_root, "--task", "10-5-5-ov", "--method", "nope")
    assert r.returncode == 2 and "--method must be one of" in r.stderr
    r = cli("sweep", "--out", tmp_path / "x.mk", "--data", toy_root, "--task", "10-5-5-ov", "--method", "mib",
            "--runs", tmp_path / "with space")
    assert r.returncode == 2 and "paths with spaces" in r.stderr
    assert not (tmp_path / "x.mk").exists()


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_a_small_grid_runs_under_make_and_reports_mean_and_std(cli, toy_root, tmp_path):
    args = shlex.join([*TOY_TRAIN_ARGS, "--epochs", "1"])
    makefile = tmp_path / "sweep.mk"
    r = cli("sweep", "--out", makefile, "--data", toy_root, "--task", "10-10-ov", "--method", "mib", "--seed", "0",
            "--seed", "1", "--runs", tmp_path / "runs", "--base-args", args, "--step-args", args, "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["runs"] == 4
    env = dict(os.environ, INCSEG_NO_PROGRESS="1")
    env.pop("INCSEG_DEBUG", None)
    incseg = f"{shlex.quote(sys.executable)} -m incseg_cli"
    done = subprocess.run(["make", "-j", "2", "-f", str(makefile), f"INCSEG={incseg}"], capture_output=True,
                          text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((tmp_path / "runs" / "report" / "report.json").read_text())
    (last,) = [g for g in report["groups"] if g["step"] == 1]
    assert last["method"] == "mib" and last["n"] == 2 and last["seeds"] == [0, 1]
    assert last["miou"]["all"]["std"] is not None
    assert (tmp_path / "runs" / "report" / "groups.csv").is_file()
    again = subprocess.run(["make", "-j", "2", "-f", str(makefile), f"INCSEG={incseg}"], capture_output=True,
                           text=True, env=env, timeout=120)
    assert again.returncode == 0 and "train-base" not in again.stdout  # nothing to redo
