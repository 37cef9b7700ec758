"""A dataset of one's own, through the CLI like a shell script: init-dataset → check-data →
prepare-splits → train-base → train-step (mib, and wilson from a tag table of class names)
→ evaluate → predict, on 7 classes with non-VOC names, its own palette and an explicit class order."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import commands_in_one_process, error_line

pytestmark = pytest.mark.slow

NAMES = ["background", "bolt", "nut", "washer", "gear", "spring", "rivet"]
PALETTE = [[0, 0, 0], [250, 10, 10], [10, 250, 10], [10, 10, 250], [250, 250, 10], [250, 10, 250], [10, 250, 250]]
# step 0 learns rivet, gear, bolt; step 1 nut, washer, spring (not the label order)
ORDER = [["rivet", "gear", "bolt"], ["nut", "washer", "spring"]]
TRAIN = ["--preset", "toy", "--batch-size", "8", "--crop-size", "32", "--eval-size", "32", "--epochs", "1",
         "--workers", "0", "--device", "cpu"]


def write_folder(root: Path, n: int = 48, size: int = 32) -> None:
    """Toy images whose 20 classes are folded onto 6 (ids 1..6), PNG and JPEG mixed, masks
    with 200 as the void value (the description's ``ignore``)."""
    from incseg_cli.data.toy import render

    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i in range(n):
        img, label = render(7, 0, i, size)
        folded = np.where((label > 0) & (label < 255), (label.astype(int) - 1) % 6 + 1, label)
        folded = np.where(folded == 255, 200, folded).astype(np.uint8)
        ext = "png" if i % 2 else "jpg"
        Image.fromarray(img).save(root / "images" / f"part{i:03d}.{ext}")
        Image.fromarray(folded, mode="L").save(root / "masks" / f"part{i:03d}.png")


@pytest.fixture(scope="module")
def custom_root(tmp_path_factory, run_cli_module):
    root = tmp_path_factory.mktemp("own") / "widgets-data"
    write_folder(root)
    r = run_cli_module("init-dataset", root, "--name", "widgets", "--ignore", "200", "--workers", "1")
    assert r.returncode == 0, r.stderr
    path = root / "incseg-dataset.json"
    d = json.loads(path.read_text())
    assert d["found"]["class_ids_present"] == [0, 1, 2, 3, 4, 5, 6] and d["found"]["images"] == 48
    assert d["classes"] == ["background"] + [f"class-{i}" for i in range(1, 7)]
    # the user's edit: names, colours, a task in their own class order
    d.update(classes=NAMES, palette=PALETTE, tasks={"by-batch": ORDER}, val_fraction=0.25)
    path.write_text(json.dumps(d, indent=2))
    return root


@pytest.fixture(scope="module")
def run_cli_module():
    import subprocess
    import sys

    def run(*args, env=None, timeout=180):
        full = dict(os.environ, INCSEG_NO_PROGRESS="1", OMP_NUM_THREADS="1", **(env or {}))
        full.pop("INCSEG_DEBUG", None)
        return subprocess.run([sys.executable, "-m", "incseg_cli", *map(str, args)], capture_output=True,
                              text=True, env=full, timeout=timeout)

    return run


@pytest.fixture(scope="module")
def chain(custom_root, run_cli_module, tmp_path_factory):
    """prepare-splits → train-base → train-step mib and wilson, with no --dataset anywhere."""
    work = tmp_path_factory.mktemp("chain")
    splits = work / "splits"
    env = {"INCSEG_SPLITS": str(splits)}
    run = run_cli_module
    from incseg_cli.data.check import check_data

    report = check_data(custom_root, "widgets", deep=True, workers=1)  # the CLI's check: tests/test_datasets.py
    assert report["usable"] and report["classes"] == 7, report
    assert report["splits"]["train"]["ids"] + report["splits"]["val"]["ids"] == 48

    r = run("prepare-splits", "--data", custom_root, "--task", "by-batch-ov", "--out", splits, "--workers", "1")
    assert r.returncode == 0, r.stderr
    meta = json.loads((splits / "widgets" / "by-batch-ov" / "task.json").read_text())
    assert meta["steps"] == [[0, 6, 4, 1], [2, 3, 5]]
    assert list(meta["class_names"].values()) == ["background", "rivet", "gear", "bolt", "nut", "washer", "spring"]

    base = work / "step0"
    r = run("train-base", "--data", custom_root, "--task", "by-batch-ov", "--loss", "bce", *TRAIN, "--out", base,
            env=env)
    assert r.returncode == 0, r.stderr
    # image-level tags by class name: what a user of WILSON has for the new classes
    step_ids = (splits / "widgets" / "by-batch-ov" / "train-1.txt").read_text().split()
    labels = dict(line.split("\t") for line in (splits / "widgets" / "labels-train.tsv").read_text().splitlines()[1:])
    tags = work / "tags.tsv"
    tags.write_text("image_id\tclasses\n" + "".join(
        f"{i}\t{','.join(NAMES[int(c)] for c in labels[i].split(',') if c)}\n" for i in step_ids))
    runs = {}
    for method, extra in (("mib", []), ("wilson", ["--image-labels", tags, "--pseudo-epochs", "0"])):
        out = work / f"step1-{method}"
        r = run("train-step", "--prev", base, "--data", custom_root, "--method", method, *TRAIN, *extra,
                "--out", out, env=env)
        assert r.returncode == 0, (method, r.stderr)
        runs[method] = out
    return {"base": base, "runs": runs, "splits": splits, "env": env, "work": work}


def test_description_travels_in_the_checkpoint(chain):
    header = torch.load(chain["runs"]["wilson"] / "checkpoint.pt", map_location="cpu", weights_only=True)["header"]
    assert header["dataset"] == "widgets" and header["task"] == "by-batch-ov"
    info = header["dataset_info"]
    assert info["classes"] == NAMES and info["palette"] == PALETTE and info["tasks"]["by-batch"] == ORDER
    assert header["steps"] == [[0, 6, 4, 1], [2, 3, 5]]


def test_evaluate_and_report_need_no_dataset_flag(chain, custom_root, run_cli_module):
    work = chain["work"]
    for method, out in chain["runs"].items():
        r = run_cli_module("evaluate", out, "--data", custom_root, "--json", "--save-predictions",
                           work / f"pred-{method}", env=chain["env"])
        assert r.returncode == 0, r.stderr
        metrics = json.loads(r.stdout)
        names = {c["label"]: c["name"] for c in metrics["classes"]}
        assert names == {i: n for i, n in enumerate(NAMES)}
        assert metrics["dataset"] == "widgets"
    png = next((work / "pred-mib").glob("*.png"))
    with Image.open(png) as img:
        assert img.mode == "P" and img.getpalette()[3:6] == PALETTE[1]
    r = run_cli_module("report", chain["base"], *chain["runs"].values(), "--json", env=chain["env"])
    assert r.returncode == 0, r.stderr


def test_predict_on_the_users_images(chain, custom_root, run_cli_module):
    out = chain["work"] / "masks"
    r = run_cli_module("predict", chain["runs"]["mib"], custom_root / "images", "--out", out,
                       "--eval-protocol", "full", "--device", "cpu", env=chain["env"])
    assert r.returncode == 0, r.stderr
    images = sorted((custom_root / "images").iterdir())
    masks = sorted(out.glob("*.png"))
    assert [m.stem for m in masks] == [i.stem for i in images]
    with Image.open(masks[0]) as img:
        assert img.mode == "P" and img.size == (32, 32) and img.getpalette()[3:6] == PALETTE[1]
        assert set(np.unique(np.asarray(img)).tolist()) <= set(range(7))
    header = (out / "areas.csv").read_text().splitlines()[0]
    assert all(name in header for name in NAMES)


def test_contradicting_dataset_is_refused(custom_root, tmp_path, capsys):
    from incseg_cli.cli import main

    with pytest.raises(SystemExit) as stop:  # refused before any model is built: in this process
        main(["train-base", "--data", str(custom_root), "--dataset", "voc", "--task", "15-5", *TRAIN,
              "--out", str(tmp_path / "x")])
    assert stop.value.code == 2
    assert "--dataset voc contradicts" in error_line(capsys.readouterr().err, only=True)
    assert not (tmp_path / "x").exists()


def test_toy_data_in_the_custom_form_runs_the_chain(tmp_path):
    """make-toy-data --format custom writes a dataset of one's own (dataset ``toy``): the
    whole chain runs on it with no --dataset and no --preset (its description names toy)."""
    root, splits = tmp_path / "toy", tmp_path / "splits"
    env = {"INCSEG_SPLITS": str(splits)}
    small = ["--batch-size", "8", "--crop-size", "32", "--eval-size", "32", "--epochs", "1"]
    steps = [
        ("make-toy-data", "--out", root, "--format", "custom", "--images", "64", "--val-images", "8", "--size", "32",
         "--workers", "1"),
        ("check-data", "--data", root, "--deep", "--workers", "1"),
        ("prepare-splits", "--data", root, "--task", "10-10-ov", "--out", splits, "--workers", "1"),
        ("train-base", "--data", root, "--task", "10-10-ov", *small, "--out", tmp_path / "step0"),
        ("train-step", "--prev", tmp_path / "step0", "--data", root, "--method", "mib", *small,
         "--out", tmp_path / "step1"),
        ("evaluate", tmp_path / "step1", "--data", root, "--json"),
        ("predict", tmp_path / "step1", root / "images", "--out", tmp_path / "masks"),
    ]
    # two processes, as two scripts would run them: the later stages know the dataset only from
    # --data and the checkpoint, not from what the first process registered
    for n, part in enumerate((steps[:4], steps[4:])):
        results = commands_in_one_process([["cli", list(args)] for args in part], tmp_path / f"commands{n}", env)
        assert len(results) == len(part) and all(r.returncode == 0 for r in results), results[-1].stderr[-3000:]
    metrics = json.loads((tmp_path / "step1" / "metrics.json").read_text())
    assert metrics["dataset"] == "toy" and metrics["step"] == 1
    manifest = json.loads((tmp_path / "step0" / "manifest.json").read_text())
    assert manifest["options"]["preset"] == "toy" and manifest["options"]["dataset"] == "toy"
    assert len(list((tmp_path / "masks").glob("**/*.png"))) == 64 + 8
