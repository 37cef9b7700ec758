"""The toy dataset: VOC layout, label content, determinism, reruns and CLI errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from incseg_cli.data.toy import (
    CLASS_CELLS,
    SHAPES,
    TEXTURES,
    TOY_CLASS_NAMES,
    build_toy_dataset,
    toy_params,
)
from incseg_cli.errors import OutputExistsError, UsageError

SPLITS = ("train_aug", "val")


def _ids(root: Path, split: str) -> list[str]:
    return (root / "ImageSets" / "Segmentation" / f"{split}.txt").read_text().splitlines()


def _mask(root: Path, image_id: str) -> np.ndarray:
    return np.array(Image.open(root / "SegmentationClassAug" / f"{image_id}.png"))


def _table(root: Path, split: str) -> dict[str, list[int]]:
    lines = (root / f"image_labels_{split}.tsv").read_text().splitlines()
    assert lines[0] == "image_id\tclasses"
    rows = [line.split("\t") for line in lines[1:]]
    assert all(len(r) == 2 for r in rows)
    return {i: [int(c) for c in cs.split(",")] if cs else [] for i, cs in rows}


@pytest.fixture(scope="module")
def toy(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("toy") / "voc"
    build_toy_dataset(root, images=600, val_images=100, size=64, seed=0)
    return root


@pytest.fixture(scope="module")
def masks(toy) -> dict[str, dict[str, np.ndarray]]:
    return {s: {i: _mask(toy, i) for i in _ids(toy, s)} for s in SPLITS}


def test_class_design():
    assert len(TOY_CLASS_NAMES) == 21 and TOY_CLASS_NAMES[0] == "background"
    assert len(set(CLASS_CELLS)) == 20
    for half in (CLASS_CELLS[:10], CLASS_CELLS[10:]):  # old and new classes use every cue
        assert {s for s, _ in half} == set(range(len(SHAPES)))
        assert {t for _, t in half} == set(range(len(TEXTURES)))
    for k in range(len(SHAPES)):
        assert sum(s == k for s, _ in CLASS_CELLS) >= 2
    for k in range(len(TEXTURES)):
        assert sum(t == k for _, t in CLASS_CELLS) >= 4


def test_voc_layout(toy, masks):
    assert (toy / "classes.txt").read_text().splitlines() == TOY_CLASS_NAMES
    meta = json.loads((toy / "toy.json").read_text())
    assert {k: v for k, v in meta.items() if k != "stats"} == toy_params(600, 100, 64, 0)
    all_ids = []
    for split, n in (("train_aug", 600), ("val", 100)):
        ids = _ids(toy, split)
        assert len(ids) == n and ids == sorted(ids) and len(set(ids)) == n
        all_ids += ids
    assert not set(_ids(toy, "train_aug")) & set(_ids(toy, "val"))
    assert sorted(p.stem for p in (toy / "JPEGImages").iterdir()) == sorted(all_ids)
    assert sorted(p.stem for p in (toy / "SegmentationClassAug").iterdir()) == sorted(all_ids)
    for image_id in all_ids[:5] + all_ids[-5:]:
        img = Image.open(toy / "JPEGImages" / f"{image_id}.jpg")
        png = Image.open(toy / "SegmentationClassAug" / f"{image_id}.png")
        assert img.format == "JPEG" and img.mode == "RGB" and img.size == (64, 64)
        assert png.format == "PNG" and png.mode == "P" and png.size == img.size
        pal = png.getpalette()
        assert pal[3:6] == [128, 0, 0] and pal[15 * 3:16 * 3] == [192, 128, 128]
        assert pal[255 * 3:256 * 3] == [224, 224, 192]


def test_mask_values_and_tables(toy, masks):
    for split in SPLITS:
        table = _table(toy, split)
        assert list(table) == _ids(toy, split)
        for image_id, m in masks[split].items():
            values = set(np.unique(m).tolist())
            assert values <= set(range(21)) | {255}
            present = sorted(values - {0, 255})
            assert table[image_id] == present and present, image_id


def test_classes_balanced(toy):
    for split, at_least in (("train_aug", 40), ("val", 5)):
        counts = np.zeros(21, dtype=int)
        for classes in _table(toy, split).values():
            counts[classes] += 1
        assert counts[1:].min() >= at_least, (split, counts)
        if split == "train_aug":
            assert counts[1:].max() <= 1.6 * counts[1:].min(), counts
    stats = json.loads((toy / "toy.json").read_text())["stats"]["images_per_class"]
    assert list(stats["train_aug"]) == TOY_CLASS_NAMES[1:]


def test_pixel_mix(toy, masks):
    total = np.zeros(256)
    for split in SPLITS:
        for m in masks[split].values():
            total += np.bincount(m.ravel(), minlength=256)
    total /= total.sum()
    assert 0.65 <= total[0] <= 0.85, total[0]
    assert 0.03 <= total[255] <= 0.12, total[255]
    stats = json.loads((toy / "toy.json").read_text())["stats"]["pixels"]
    assert abs(stats["background"] - total[0]) < 0.01


def test_void_band_separates_regions(masks):
    """Two 4-neighbours with different labels always involve 255: objects are outlined."""
    for m in list(masks["train_aug"].values())[:200]:
        for a, b in ((m[:, 1:], m[:, :-1]), (m[1:, :], m[:-1, :])):
            differ = a != b
            assert not (differ & (a != 255) & (b != 255)).any()
        fg = (m > 0) & (m < 255)
        assert (m == 255).sum() >= 0.2 * fg.sum() ** 0.5  # a band, not a few stray pixels


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_deterministic_and_independent_of_workers(tmp_path):
    a = build_toy_dataset(tmp_path / "a", images=30, val_images=8, seed=3).out
    b = build_toy_dataset(tmp_path / "b", images=30, val_images=8, seed=3, workers=2).out
    c = build_toy_dataset(tmp_path / "c", images=30, val_images=8, seed=4).out
    ta, tb, tc = _tree(a), _tree(b), _tree(c)
    assert ta == tb
    assert ta.keys() == tc.keys()
    assert ta["JPEGImages/toy_000000.jpg"] != tc["JPEGImages/toy_000000.jpg"]
    assert ta["SegmentationClassAug/toy_000000.png"] != tc["SegmentationClassAug/toy_000000.png"]


def test_rerun_is_noop_and_other_params_refused(tmp_path):
    out = tmp_path / "toy"
    first = build_toy_dataset(out, images=10, val_images=4, progress=False)
    assert not first.skipped
    stamp = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    again = build_toy_dataset(out, images=10, val_images=4, progress=False)
    assert again.skipped and again.stats == first.stats
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == stamp
    with pytest.raises(OutputExistsError):
        build_toy_dataset(out, images=11, val_images=4, progress=False)
    forced = build_toy_dataset(out, images=11, val_images=4, force=True, progress=False)
    assert not forced.skipped and len(_ids(out, "train_aug")) == 11
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp dirs left
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "keep.txt").write_text("x")
    with pytest.raises(OutputExistsError):
        build_toy_dataset(tmp_path / "other", images=10, val_images=4, progress=False)
    with pytest.raises(UsageError):
        build_toy_dataset(tmp_path / "small", size=16)


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, INCSEG_NO_PROGRESS="1")
    return subprocess.run(
        [sys.executable, "-m", "incseg_cli", "make-toy-data", "--out", *args],
        capture_output=True, text=True, env=env, timeout=120,
    )


def test_cli(tmp_path):
    out = str(tmp_path / "toy")
    first = _cli(out, "--images", "12", "--val-images", "4", "--json")
    assert first.returncode == 0, first.stderr
    summary = json.loads(first.stdout)
    assert summary["skipped"] is False and summary["images"] == 12 and summary["num_classes"] == 21
    assert len(first.stderr.strip().splitlines()) == 1

    again = _cli(out, "--images", "12", "--val-images", "4")
    assert again.returncode == 0 and "up to date" in again.stderr and again.stdout == ""

    other = _cli(out, "--images", "13", "--val-images", "4")
    assert other.returncode == 6
    assert len(other.stderr.strip().splitlines()) == 1 and "--force" in other.stderr

    bad = _cli(str(tmp_path / "bad"), "--images", "0")
    assert bad.returncode == 2
    assert len(bad.stderr.strip().splitlines()) == 1 and "Traceback" not in bad.stderr
    assert not (tmp_path / "bad").exists()
