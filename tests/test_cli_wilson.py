"""WILSON end to end through the CLI: base (BCE) → train-step --method wilson → evaluate, a
two-step task, the step never reading pixel labels, resume, the relaxed setting, bad input."""

import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import TOY_TRAIN_ARGS, commands_in_one_process, error_line, write_table

pytestmark = pytest.mark.slow

WILSON_ARGS = ["--method", "wilson", *TOY_TRAIN_ARGS, "--epochs", "2", "--pseudo-epochs", "1", "--workers", "0",
               "--device", "cpu"]


def _weights(run):
    ckpt = torch.load(run / "checkpoint.pt", map_location="cpu", weights_only=True)
    return ckpt["model"], ckpt["extra"]["localizer"]


def _same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def bce_base(toy_root, toy_env, tmp_path_factory):
    """Step 0 of toy 10-10-ov with WILSON's one-hot BCE (2 epochs, 32 px)."""
    out = tmp_path_factory.mktemp("wilson") / "step0-bce"
    env = dict(os.environ, INCSEG_NO_PROGRESS="1", **toy_env)
    r = subprocess.run([sys.executable, "-m", "incseg_cli", "train-base", "--data", str(toy_root), "--task",
                        "10-10-ov", "--loss", "bce", *TOY_TRAIN_ARGS, "--epochs", "2", "--out", str(out)],
                       capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    return out


@pytest.fixture(scope="module")
def wilson_run(bce_base, toy_root, toy_env, tmp_path_factory):
    out = tmp_path_factory.mktemp("wilson") / "step1"
    env = dict(os.environ, INCSEG_NO_PROGRESS="1", **toy_env)
    r = subprocess.run([sys.executable, "-m", "incseg_cli", "train-step", "--prev", str(bce_base), "--data",
                        str(toy_root), *WILSON_ARGS, "--out", str(out), "--json"],
                       capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    return out, json.loads(r.stdout), r.stderr


def test_base_wilson_evaluate_chain(wilson_run, bce_base, toy_root, run_cli):
    out, printed, log = wilson_run
    assert "image labels of" in log and "new classes (default masking)" in log
    ckpt = torch.load(out / "checkpoint.pt", map_location="cpu", weights_only=True)
    h = ckpt["header"]
    assert h["method"] == "wilson" and h["step"] == 1 and h["steps"][1] == list(range(11, 21))
    assert h["model"]["head_sizes"] == [11, 10]
    assert h["wilson"]["alpha"] == 0.5 and h["wilson"]["affinity"] is True
    assert h["wilson"]["localizer"] == {"in_channels": 128, "width": 64, "classes": 21}
    loc = ckpt["extra"]["localizer"]
    assert loc["0.weight"].shape == (64, 128, 3, 3) and loc["6.weight"].shape == (21, 64, 1, 1)
    manifest = json.loads((out / "manifest.json").read_text())
    opts = manifest["options"]
    assert opts["method"] == "wilson" and opts["head_init"] == "random"
    assert opts["lr_head"] == opts["lr_localizer"] == pytest.approx(10 * opts["lr"])
    first, second = manifest["epochs"]
    assert set(first["losses"]) == {"cls", "loc", "enc", "seg", "sss", "total"}
    assert first["losses"]["seg"] == 0 and first["losses"]["sss"] == 0  # warm-up
    assert second["losses"]["seg"] > 0 and second["losses"]["cls"] > 0
    assert len(first["lr"]) == 3  # body, head, localizer
    saved = json.loads((out / "metrics.json").read_text())
    assert printed["miou"] == pytest.approx(saved["miou"]) and printed["method"] == "wilson"
    assert saved["groups"]["old"] == "1-10" and saved["groups"]["new"] == "11-20"
    r = run_cli("evaluate", out, "--data", toy_root, "--eval-size", "32", "--json", "--workers", "0")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["miou"] == pytest.approx(saved["miou"])


def test_two_step_task(bce_base, toy_root, toy_env, tmp_path):
    # 10-5-5-ov shares its step 0 (classes 0-10) with 10-10-ov; each step needs only step t-1.
    one, two = commands_in_one_process([
        ["cli", ["train-step", "--prev", bce_base, "--task", "10-5-5-ov", "--data", toy_root, *WILSON_ARGS,
                 "--out", tmp_path / "s1"]],
        ["cli", ["train-step", "--prev", tmp_path / "s1", "--data", toy_root, *WILSON_ARGS, "--alpha", "1",
                 "--no-affinity", "--out", tmp_path / "s2", "--json"]],
    ], tmp_path / "commands", toy_env)
    assert one.returncode == 0 and two.returncode == 0, two.stderr
    m = json.loads(two.stdout)
    assert m["task"] == "10-5-5-ov" and m["step"] == 2
    assert m["groups"]["old"] == "1-15" and m["groups"]["new"] == "16-20" and m["groups"]["added"] == "11-20"
    h = torch.load(tmp_path / "s2" / "checkpoint.pt", weights_only=True)["header"]
    assert h["model"]["head_sizes"] == [11, 5, 5] and h["wilson"]["affinity"] is False and h["wilson"]["alpha"] == 1.0
    assert h["wilson"]["localizer"]["classes"] == 21


def test_step_pixel_labels_are_never_read(wilson_run, bce_base, toy_root, toy_env, tmp_path):
    data = tmp_path / "toy-no-step-masks"
    shutil.copytree(toy_root, data)
    ids = (toy_root.parent / "splits" / "voc" / "10-10-ov" / "train-1.txt").read_text().split()
    masks = data / "SegmentationClassAug"
    for k, image_id in enumerate(ids):
        path = masks / f"{image_id}.png"
        if k % 2:  # half deleted, half blanked to a valid all-background mask
            path.unlink()
        else:
            Image.fromarray(np.zeros((32, 32), np.uint8)).save(path)
    out = tmp_path / "blind"
    # the same data makes a pixel-supervised step fail: the masks really are gone
    r, ft = commands_in_one_process([
        ["cli", ["train-step", "--prev", bce_base, "--data", data, *WILSON_ARGS, "--out", out]],
        ["cli", ["train-step", "--prev", bce_base, "--data", data, "--method", "ft", *TOY_TRAIN_ARGS, "--epochs", "1",
                 "--out", tmp_path / "ft"]],
    ], tmp_path / "commands", toy_env)
    assert r.returncode == 0, r.stderr
    model, localizer = _weights(out)
    ref_model, ref_localizer = _weights(wilson_run[0])
    assert _same(model, ref_model) and _same(localizer, ref_localizer)
    assert ft.returncode == 3 and "mask" in error_line(ft.stderr)


def test_killed_wilson_run_resumes_to_the_same_weights(wilson_run, bce_base, toy_root, toy_env, run_cli, tmp_path):
    out = tmp_path / "killed"
    args = ["train-step", "--prev", str(bce_base), "--data", str(toy_root), *WILSON_ARGS, "--out", str(out)]
    proc = subprocess.Popen([sys.executable, "-m", "incseg_cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=dict(os.environ, INCSEG_NO_PROGRESS="1", **toy_env))
    deadline = time.monotonic() + 240
    while not (out / "last.pt").exists():  # written at the end of epoch 1 (the warm-up)
        assert proc.poll() is None, proc.communicate()[1]
        assert time.monotonic() < deadline
        time.sleep(0.05)
    proc.kill()
    proc.wait()
    if (out / "checkpoint.pt").exists():
        pytest.skip("the run finished before it could be killed")
    resumed = run_cli(*args, env=toy_env)
    assert resumed.returncode == 0 and "resuming" in resumed.stderr, resumed.stderr
    model, localizer = _weights(out)
    ref_model, ref_localizer = _weights(wilson_run[0])
    assert _same(model, ref_model) and _same(localizer, ref_localizer)


@pytest.fixture(scope="module")
def single_class_splits(toy_root, tmp_path_factory):
    """Splits of 10-1-9-ov, whose step 1 adds the single class 11."""
    splits = tmp_path_factory.mktemp("splits-10-1-9")
    env = dict(os.environ, INCSEG_NO_PROGRESS="1")
    r = subprocess.run([sys.executable, "-m", "incseg_cli", "prepare-splits", "--dataset", "voc", "--task", "10-1-9-ov",
                        "--labels", str(toy_root / "image_labels_train_aug.tsv"),
                        "--val-labels", str(toy_root / "image_labels_val.tsv"), "--out", str(splits)],
                       capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    return splits


def test_single_class_step_is_refused_unless_relaxed(bce_base, toy_root, single_class_splits, run_cli, tmp_path):
    env = {"INCSEG_SPLITS": str(single_class_splits)}
    out = tmp_path / "refused"
    r = run_cli("train-step", "--prev", bce_base, "--task", "10-1-9-ov", "--data", toy_root, *WILSON_ARGS,
                "--out", out, env=env)
    assert r.returncode == 2
    line = error_line(r.stderr)
    assert "single class 11" in line and "--image-labels" in line
    assert not out.exists()
    # the relaxed setting: image labels of old classes too (here: every class of every image)
    relaxed = tmp_path / "relaxed"
    r = run_cli("train-step", "--prev", bce_base, "--task", "10-1-9-ov", "--data", toy_root, *WILSON_ARGS,
                "--image-labels", toy_root / "image_labels_train_aug.tsv", "--out", relaxed, "--json", env=env)
    assert r.returncode == 0, r.stderr
    assert "relaxed" in r.stderr
    h = torch.load(relaxed / "checkpoint.pt", weights_only=True)["header"]
    assert "relaxed" in h["wilson"]["image_labels"] and h["model"]["head_sizes"] == [11, 1]
    assert json.loads(r.stdout)["groups"]["new"] == "11"
    manifest = json.loads((relaxed / "manifest.json").read_text())
    assert manifest["epochs"][1]["losses"]["seg"] > 0
    assert len(manifest["inputs"][str(toy_root / "image_labels_train_aug.tsv")]) == 64  # a changed table is another run


def test_bad_input_fails_cleanly(bce_base, wilson_run, toy_root, toy_env, cli, monkeypatch, tmp_path):
    # the CLI in this process: a subprocess per refusal would spend the test importing torch
    for key, value in toy_env.items():
        monkeypatch.setenv(key, value)
    ids = (toy_root.parent / "splits" / "voc" / "10-10-ov" / "train-1.txt").read_text().split()
    full = {i: [0, 11] for i in ids}

    def step(*extra, out="o"):
        return cli("train-step", "--prev", bce_base, "--data", toy_root, *WILSON_ARGS, *extra,
                       "--out", tmp_path / out)

    # a label table missing images of the split
    partial = write_table(tmp_path / "partial.tsv", {i: full[i] for i in ids[1:]})
    r = step("--image-labels", partial)
    line = error_line(r.stderr)
    assert r.returncode == 3 and "partial.tsv" in line and ids[0] in line and "no labels for 1 " in line
    # class ids out of range
    wrong = write_table(tmp_path / "wrong.tsv", {**full, ids[3]: [11, 25]})
    r = step("--image-labels", wrong)
    line = error_line(r.stderr)
    assert r.returncode == 3 and "wrong.tsv" in line and "25" in line and ids[3] in line
    # not a label table at all
    garbage = tmp_path / "garbage.tsv"
    garbage.write_text("a b c\n1\t2\t3\n")
    r = step("--image-labels", garbage)
    assert r.returncode == 3 and "garbage.tsv" in error_line(r.stderr)
    r = step("--image-labels", tmp_path / "absent.tsv")
    assert r.returncode == 3 and "not found" in error_line(r.stderr)
    # a previous run of another task
    r = step("--task", "15-5-ov")
    assert r.returncode == 4 and "15-5-ov" in error_line(r.stderr)
    # options out of range
    r = step("--alpha", "1.5")
    assert r.returncode == 2 and "--alpha" in error_line(r.stderr)
    r = step("--pseudo-epochs", "2")
    assert r.returncode == 2 and "--pseudo-epochs" in error_line(r.stderr)
    assert not (tmp_path / "o").exists()
    # the step after the last one
    r = cli("train-step", "--prev", wilson_run[0], "--data", toy_root, *WILSON_ARGS, "--out", tmp_path / "s2")
    assert r.returncode == 2 and "last step" in error_line(r.stderr)
