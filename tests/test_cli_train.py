"""train-base and evaluate end to end through the CLI, as a shell script calls them."""

import json
import shutil
import signal
import subprocess
import sys

import pytest
import torch

from helpers import TOY_TRAIN_ARGS, error_line, start_train_base, wait_for_file

pytestmark = pytest.mark.slow


def test_base_run_files(base_run):
    ckpt = torch.load(base_run / "checkpoint.pt", map_location="cpu", weights_only=True)
    h = ckpt["header"]
    assert h["format"] == "incseg-checkpoint" and h["task"] == "10-10-ov" and h["step"] == 0
    assert h["steps"] == [list(range(11))] and h["backbone"] == "tiny" and h["parent_sha256"] is None
    manifest = json.loads((base_run / "manifest.json").read_text())
    assert manifest["status"] == "complete"
    assert len(manifest["epochs"]) == 2 and all(e["seconds"] > 0 for e in manifest["epochs"])
    assert manifest["options"]["epochs"] == 2 and manifest["options"]["optimizer"] == "adam"
    assert manifest["world_size"] == 1 and manifest["versions"]["torch"] == torch.__version__
    assert any(k.endswith("train-0.txt") for k in manifest["inputs"])
    metrics = json.loads((base_run / "metrics.json").read_text())
    assert metrics["step"] == 0 and 0 <= metrics["miou"]["all"] <= 1
    assert not (base_run / "last.pt").exists()


def test_evaluate_matches_training_metrics(base_run, toy_root, run_cli, tmp_path):
    out = tmp_path / "eval.json"
    r = run_cli("evaluate", base_run, "--data", toy_root, "--eval-size", "32", "--json", "--out", out,
                "--workers", "0")
    assert r.returncode == 0, r.stderr
    printed = json.loads(r.stdout)
    saved = json.loads((base_run / "metrics.json").read_text())
    assert printed["miou"] == pytest.approx(saved["miou"])
    assert printed["protocol"]["name"] == "crop" and json.loads(out.read_text())["miou"] == printed["miou"]
    assert "mIoU" in r.stderr  # the table goes to stderr
    full = run_cli("evaluate", base_run / "checkpoint.pt", "--data", toy_root, "--eval-protocol", "full",
                   "--json", "--workers", "0")
    assert full.returncode == 0 and json.loads(full.stdout)["protocol"]["name"] == "full"


def test_rerun_skips_complete_run(base_run, toy_root, toy_env, cli, monkeypatch):
    monkeypatch.setenv("INCSEG_SPLITS", toy_env["INCSEG_SPLITS"])
    r = cli("train-base", "--data", toy_root, "--task", "10-10-ov", *TOY_TRAIN_ARGS, "--epochs", "2",
            "--out", base_run, "--workers", "1")
    assert r.returncode == 0 and "already complete" in r.stderr
    other = cli("train-base", "--data", toy_root, "--task", "10-10-ov", *TOY_TRAIN_ARGS, "--epochs", "3",
                "--out", base_run)
    assert other.returncode == 6 and "--force" in error_line(other.stderr)


@pytest.fixture(scope="module")
def straight_run(toy_root, toy_env, tmp_path_factory):
    """A 3-epoch run that was never interrupted, to compare resumed runs with."""
    import os

    out = tmp_path_factory.mktemp("straight") / "run"
    env = dict(os.environ, INCSEG_NO_PROGRESS="1", **toy_env)
    r = subprocess.run([sys.executable, "-m", "incseg_cli", "train-base", "--data", str(toy_root), "--task",
                        "10-10-ov", *TOY_TRAIN_ARGS, "--epochs", "3", "--out", str(out)],
                       capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    return out


def _same_weights(a_dir, b_dir):
    a = torch.load(a_dir / "checkpoint.pt", weights_only=True)["model"]
    b = torch.load(b_dir / "checkpoint.pt", weights_only=True)["model"]
    return all(torch.equal(a[k], b[k]) for k in a)


def test_killed_run_resumes_to_the_same_weights(straight_run, toy_root, toy_env, run_cli, tmp_path):
    out = tmp_path / "killed"
    proc = start_train_base(toy_root, toy_env, out, 3)
    wait_for_file(out / "last.pt", proc)
    proc.kill()  # SIGKILL: loses at most the current epoch
    proc.wait()
    assert not (out / "checkpoint.pt").exists()
    resumed = run_cli("train-base", "--data", toy_root, "--task", "10-10-ov", *TOY_TRAIN_ARGS, "--epochs", "3",
                      "--out", out, env=toy_env)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming" in resumed.stderr
    assert _same_weights(straight_run, out)
    manifest = json.loads((out / "manifest.json").read_text())
    assert [e["epoch"] for e in manifest["epochs"]] == [1, 2, 3]


def test_sigint_writes_last_and_resumes_to_the_same_weights(straight_run, toy_root, toy_env, run_cli, tmp_path):
    out = tmp_path / "interrupted"
    proc = start_train_base(toy_root, toy_env, out, 3)
    wait_for_file(out / "last.pt", proc)
    proc.send_signal(signal.SIGINT)  # mid-epoch 2: stops at the next iteration boundary
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "rerun" in err
    state = torch.load(out / "last.pt", weights_only=True)
    assert state["epoch"] >= 1
    r = run_cli("train-base", "--data", toy_root, "--task", "10-10-ov", *TOY_TRAIN_ARGS, "--epochs", "3",
                "--out", out, env=toy_env)
    assert r.returncode == 0 and "resuming" in r.stderr, r.stderr
    assert _same_weights(straight_run, out)


def test_bad_inputs_fail_cleanly(toy_root, toy_env, base_run, cli, monkeypatch, tmp_path):
    # the CLI in this process: a subprocess per refusal would spend the test importing torch
    for key, value in toy_env.items():
        monkeypatch.setenv(key, value)
    common = ["--task", "10-10-ov", *TOY_TRAIN_ARGS, "--epochs", "1"]
    # a dataset root without JPEGImages
    broken = tmp_path / "broken"
    shutil.copytree(toy_root, broken)
    shutil.rmtree(broken / "JPEGImages")
    r = cli("train-base", "--data", broken, *common, "--out", tmp_path / "o1")
    assert r.returncode == 3 and "JPEGImages" in error_line(r.stderr)
    assert not (tmp_path / "o1").exists()
    # an image id in the split whose mask is missing
    nomask = tmp_path / "nomask"
    shutil.copytree(toy_root, nomask)
    first_id = (toy_root.parent / "splits" / "voc" / "10-10-ov" / "train-0.txt").read_text().split()[0]
    (nomask / "SegmentationClassAug" / f"{first_id}.png").unlink()
    r = cli("train-base", "--data", nomask, *common, "--out", tmp_path / "o2")
    assert r.returncode == 3 and first_id in error_line(r.stderr)
    assert not (tmp_path / "o2").exists()
    # an unknown task name
    r = cli("train-base", "--data", toy_root, "--task", "10-11", "--preset", "toy", "--out", tmp_path / "o3")
    assert r.returncode == 2 and "unknown task" in error_line(r.stderr)
    # a checkpoint from a different task
    r = cli("evaluate", base_run, "--data", toy_root, "--task", "15-5-ov", "--eval-size", "32")
    assert r.returncode == 4 and "15-5-ov" in error_line(r.stderr)
    # a truncated checkpoint
    trunc = tmp_path / "trunc.pt"
    trunc.write_bytes((base_run / "checkpoint.pt").read_bytes()[:5000])
    r = cli("evaluate", trunc, "--data", toy_root, "--eval-size", "32")
    assert r.returncode == 5 and "truncated" in error_line(r.stderr)
    # contradictory options
    r = cli("train-base", "--data", toy_root, *common, "--scale-min", "2", "--scale-max", "1",
                "--out", tmp_path / "o4")
    assert r.returncode == 2 and "--scale-min" in error_line(r.stderr)
