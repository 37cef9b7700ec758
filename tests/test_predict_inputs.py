"""predict's inputs: a folder's links are followed, each real folder once (a link loop ends
there); the walk is bounded; what is skipped is counted, in one line and in predict.json;
two images that would write one mask (a.jpg and a.png) are an error naming both."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from helpers import error_line


def photo(path: Path, seed: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(path)


def test_link_loops_are_walked_once_and_skips_counted(base_run, run_cli, tmp_path):
    folder = tmp_path / "photos"
    photo(folder / "top.png")
    photo(folder / "sub" / "inner.jpg", 1)
    (folder / "a").symlink_to(".")  # two loops to the folder itself: the walk exploded on them
    (folder / "b").symlink_to(".")
    (folder / "sub" / "up").symlink_to("..")
    (folder / "broken.png").symlink_to("nowhere.png")
    (folder / ".hidden.png").write_bytes(b"")
    (folder / "notes.md").write_text("not an image\n")
    os.mkfifo(folder / "pipe.png")  # opening it would block for ever
    out = tmp_path / "out"
    r = run_cli("predict", base_run, folder, "--out", out, "--workers", "0", timeout=120)
    assert r.returncode == 0, r.stderr
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png"))
    assert written == ["sub/inner.png", "top.png"]
    skipped = {"folder reached again through a link": 3, "broken link or unreadable": 1, "hidden": 1,
               "not a regular file": 1, "not an image (suffix)": 1}
    assert json.loads((out / "predict.json").read_text())["inputs_skipped"] == skipped
    lines = [line for line in r.stderr.splitlines() if "skipped" in line and line.startswith("inputs:")]
    assert len(lines) == 1 and "7 entries skipped" in lines[0] and "3 folder reached again" in lines[0], r.stderr


def test_the_walk_is_bounded(tmp_path, monkeypatch):
    from incseg_cli.errors import InputError
    from incseg_cli.stages import predict

    monkeypatch.setattr(predict, "MAX_FOLDER_ENTRIES", 5)
    for k in range(6):
        (tmp_path / f"{k}.md").write_text("x")
    with pytest.raises(InputError, match="more than 5 files and folders under it"):
        predict.resolve_inputs([tmp_path])


def test_same_name_two_suffixes_is_an_error_naming_both(base_run, run_cli, tmp_path):
    folder = tmp_path / "photos"
    photo(folder / "a.jpg")
    photo(folder / "a.png", 1)
    r = run_cli("predict", base_run, folder, "--out", tmp_path / "out", "--workers", "0")
    assert r.returncode == 2
    line = error_line(r.stderr, only=True)
    assert "a.jpg" in line and "a.png" in line
    assert not (tmp_path / "out").exists()


def test_a_datasets_id_list_is_read_as_its_images(base_run, toy_root, cli, tmp_path):
    """A dataset's own id list (VOC's ImageSets/Segmentation/val.txt) names ids, not paths:
    each id is its image in the dataset's image folder; a line that is neither is an error."""
    val_list = toy_root / "ImageSets" / "Segmentation" / "val.txt"
    ids = val_list.read_text().split()
    done = cli("predict", base_run, val_list, "--out", tmp_path / "masks", "--workers", "0")
    assert done.returncode == 0, done.stderr
    assert sorted(p.stem for p in (tmp_path / "masks").glob("*.png")) == sorted(ids)
    bad = tmp_path / "bad.txt"
    bad.write_text("no-such-id\n")
    done = cli("predict", base_run, bad, "--out", tmp_path / "bad-masks", "--workers", "0")
    assert done.returncode == 3 and "no-such-id: no such image file" in error_line(done.stderr)
