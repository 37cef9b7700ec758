"""The baselines end to end through the CLI: ft and mib steps, joint training, a report of
all of them, and evaluate --save-predictions."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import TOY_TRAIN_ARGS

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def baseline_runs(base_run, toy_root, toy_env, tmp_path_factory):
    """One-epoch ft and mib steps from ``base_run`` and a one-epoch joint run."""
    import os
    import subprocess
    import sys

    out = tmp_path_factory.mktemp("baselines")
    env = dict(os.environ, INCSEG_NO_PROGRESS="1", **toy_env)
    commands = {
        "ft": ["train-step", "--prev", base_run, "--method", "ft"],
        "mib": ["train-step", "--prev", base_run, "--method", "mib"],
        "joint": ["train-base", "--task", "offline"],
    }
    runs = {}
    for name, command in commands.items():
        runs[name] = out / name
        args = [*command, "--data", toy_root, *TOY_TRAIN_ARGS, "--epochs", "1", "--out", runs[name]]
        result = subprocess.run([sys.executable, "-m", "incseg_cli", *map(str, args)], capture_output=True,
                                text=True, env=env, timeout=300)
        assert result.returncode == 0, result.stderr
    return runs


def test_mib_run_records_its_losses_and_settings(baseline_runs, base_run):
    run = baseline_runs["mib"]
    header = torch.load(run / "checkpoint.pt", map_location="cpu", weights_only=True)["header"]
    assert header["method"] == "mib" and header["step"] == 1
    assert header["lambda_kd"] == 10.0 and header["num_old"] == 11
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["options"]["head_init"] == "mib" and manifest["options"]["lambda_kd"] == 10.0
    assert set(manifest["epochs"][0]["losses"]) == {"cce", "ckd", "total"}
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["method"] == "mib" and metrics["groups"]["new"] == "11-20"
    ft = json.loads((baseline_runs["ft"] / "manifest.json").read_text())
    assert ft["options"]["head_init"] == "random" and set(ft["epochs"][0]["losses"]) == {"ce", "total"}


def test_report_of_the_baselines(baseline_runs, base_run, run_cli, tmp_path):
    runs = [baseline_runs["joint"], baseline_runs["mib"], base_run, baseline_runs["ft"]]
    r = run_cli("report", *runs, "--json", "--plots", tmp_path / "plots")
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)["rows"]
    assert [(row["step"], row["label"]) for row in rows] == [(0, "base"), (1, "ft"), (1, "mib"), (1, "joint")]
    assert all(row["miou"]["all"] is not None for row in rows)
    assert rows[1]["parent"] == rows[2]["parent"] == str(base_run)
    for path in json.loads(r.stdout)["plots"]:
        with Image.open(path) as img:
            img.verify()


@pytest.mark.parametrize("method,value", [("mib", "0.5"), ("ft", "0.3")])
def test_methods_refuse_options_of_other_methods(method, value, base_run, toy_root, toy_env, run_cli, tmp_path):
    out = tmp_path / f"{method}-alpha"
    r = run_cli("train-step", "--prev", base_run, "--method", method, "--alpha", value, "--data", toy_root,
                *TOY_TRAIN_ARGS, "--out", out, env=toy_env)
    assert r.returncode == 2, r.stderr
    lines = [l for l in r.stderr.splitlines() if l.strip()]
    assert lines[-1] == f"error: --alpha is not used by --method {method}" and "Traceback" not in r.stderr
    assert not out.exists()


def test_save_predictions_writes_one_png_per_image(base_run, toy_root, run_cli, tmp_path):
    out = tmp_path / "preds"
    r = run_cli("evaluate", base_run, "--data", toy_root, "--eval-size", "32", "--workers", "0",
                "--save-predictions", out)
    assert r.returncode == 0, r.stderr
    val_ids = (toy_root / "ImageSets" / "Segmentation" / "val.txt").read_text().split()
    assert sorted(p.name for p in out.iterdir()) == sorted(f"{i}.png" for i in val_ids)
    first = val_ids[0]
    with Image.open(out / f"{first}.png") as img:
        assert img.format == "PNG" and img.size == (3 * 32 + 2 * 2, 32)
        panel = np.asarray(img.convert("RGB"))
    # the ground-truth panel is the val mask (classes 11-20 are background at step 0) in VOC colours
    with Image.open(toy_root / "SegmentationClassAug" / f"{first}.png") as mask_img:
        mask = np.asarray(mask_img)
        palette = np.array(mask_img.getpalette()[:768], dtype=np.uint8).reshape(256, 3)
    mask = np.where((mask > 10) & (mask != 255), 0, mask)
    assert np.array_equal(panel[:, 34:66], palette[mask])
    assert "wrote 24 prediction images" in r.stderr
    a_file = tmp_path / "file"
    a_file.write_text("x")
    r = run_cli("evaluate", base_run, "--data", toy_root, "--eval-size", "32", "--save-predictions", a_file)
    assert r.returncode == 2 and "needs a directory" in r.stderr and "Traceback" not in r.stderr
