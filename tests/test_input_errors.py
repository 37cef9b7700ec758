"""Inputs that were accepted silently: two images of one id (a.jpg and a.png), an empty image
that training would never read (the last batch's dropped remainder), and an error whose
message holds a newline (a class name), which printed only its tail."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from helpers import TOY_TRAIN_ARGS, error_line

CLASSES = ["background", "bolt", "nut", "washer", "gear"]


@pytest.fixture(scope="module")
def own_root(tmp_path_factory) -> Path:
    """A dataset of one's own: 24 images of 32 px, classes 1..4 as rectangles."""
    root = tmp_path_factory.mktemp("own") / "parts"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i in range(24):
        mask = np.zeros((32, 32), dtype=np.uint8)
        mask[4:16, 4:16] = 1 + i % 4
        mask[18:28, 18:28] = 1 + (i + 1) % 4
        Image.fromarray((mask * 50).astype(np.uint8)).convert("RGB").save(root / "images" / f"p{i:02d}.jpg")
        Image.fromarray(mask, mode="L").save(root / "masks" / f"p{i:02d}.png")
    description = {"format": "incseg-dataset", "version": 1, "name": "parts", "classes": CLASSES, "ignore": 255,
                   "val_fraction": 0.25, "preset": "toy"}
    (root / "incseg-dataset.json").write_text(json.dumps(description))
    return root


def test_two_images_of_one_id_are_an_error_naming_both(own_root, run_cli, tmp_path):
    root = tmp_path / "parts"
    shutil.copytree(own_root, root)
    splits = tmp_path / "splits"
    r = run_cli("prepare-splits", "--data", root, "--task", "2-2", "--out", splits, "--workers", "1")
    assert r.returncode == 0, r.stderr
    listed = (splits / "parts" / "2-2" / "train-0.txt").read_text().split()[0]
    Image.new("RGB", (32, 32), (9, 9, 9)).save(root / "images" / f"{listed}.png")  # beside its .jpg
    description = (root / "incseg-dataset.json").read_bytes()
    both = (f"{listed}.jpg", f"{listed}.png")
    for args in (["check-data", "--data", root, "--deep"],
                 ["train-base", "--data", root, "--task", "2-2", *TOY_TRAIN_ARGS, "--epochs", "1",
                  "--out", tmp_path / "run"],
                 ["init-dataset", root, "--force", "--workers", "1"]):
        r = run_cli(*args, env={"INCSEG_SPLITS": str(splits)})
        assert r.returncode == 3, (args[0], r.stderr)
        line = error_line(r.stderr)
        assert all(name in line for name in both), (args[0], line)
    assert not (tmp_path / "run").exists()
    assert (root / "incseg-dataset.json").read_bytes() == description


def test_an_empty_image_is_found_before_training(toy_root, toy_env, run_cli, tmp_path):
    root = tmp_path / "toy"
    shutil.copytree(toy_root, root)
    ids = (Path(toy_env["INCSEG_SPLITS"]) / "voc" / "10-10-ov" / "train-0.txt").read_text().split()
    # Any listed image may fall in the dropped remainder of the last batch, never read:
    # an empty one must be refused whichever it is.
    empty = root / "JPEGImages" / f"{ids[-1]}.jpg"
    empty.write_bytes(b"")
    r = run_cli("train-base", "--data", root, "--task", "10-10-ov", *TOY_TRAIN_ARGS, "--epochs", "1",
                "--out", tmp_path / "run", env=toy_env)
    assert r.returncode == 3
    line = error_line(r.stderr)
    assert str(empty) in line and "empty (0 bytes)" in line
    assert not (tmp_path / "run" / "checkpoint.pt").exists()
    r = run_cli("check-data", "--data", root)
    assert r.returncode == 3
    assert f"JPEGImages/{ids[-1]}.jpg" in error_line(r.stderr) and "0 bytes" in error_line(r.stderr)


def test_a_newline_in_a_class_name_stays_on_the_error_line(own_root, run_cli, tmp_path):
    root = tmp_path / "parts"
    shutil.copytree(own_root, root)
    path = root / "incseg-dataset.json"
    d = json.loads(path.read_text())
    d["classes"][2] = "two\nlines"
    d["tasks"] = {"bad": [["no-such-class"]]}
    path.write_text(json.dumps(d))
    r = run_cli("check-data", "--data", root)
    assert r.returncode == 3
    line = error_line(r.stderr, only=True)
    # the file and the problem come first, the name with its newline written as \n
    assert "incseg-dataset.json" in line and "'no-such-class' is not a class" in line and "two\\nlines" in line
