"""The baselines end to end through the CLI: ft and mib steps, joint training, a report of
all of them, and evaluate --save-predictions."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import TOY_TRAIN_ARGS

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
    assert header["mib"]["lambda_kd"] == 10.0 and header["mib"]["num_old"] == 11
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["options"]["head_init"] == "random" and manifest["options"]["lambda_kd"] == 10.0  # toy preset
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
                "--save-predictions", out, "--json")
    assert r.returncode == 0, r.stderr
    # one palette PNG of label ids per image of the run's val set (seen: those with a class of 1-10)
    val_ids = (toy_root / "ImageSets" / "Segmentation" / "val.txt").read_text().split()
    images = json.loads(r.stdout)["protocol"]["images"]
    written = sorted(p.stem for p in out.glob("*.png"))
    assert len(written) == images and set(written) <= set(val_ids)
    with Image.open(out / f"{written[0]}.png") as img:
        assert img.format == "PNG" and img.mode == "P" and img.size == (32, 32)
        assert set(np.unique(np.asarray(img)).tolist()) <= set(range(11))
    assert f"wrote {images} prediction PNGs" in r.stderr
    a_file = tmp_path / "file"
    a_file.write_text("x")
    r = run_cli("evaluate", base_run, "--data", toy_root, "--eval-size", "32", "--save-predictions", a_file)
    assert r.returncode == 9 and "needs a directory" in r.stderr and "Traceback" not in r.stderr
