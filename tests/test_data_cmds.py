"""check-data and prepare-splits through the CLI, the way a shell script runs them."""

from __future__ import annotations

import json

import numpy as np

from helpers import error_line, save_label_png, write_table


def test_check_data_good_root(tiny_voc, run_cli):
    proc = run_cli("check-data", "--data", tiny_voc["root"], "--json", "--deep")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["usable"] and report["errors"] == []
    assert report["splits"]["train"]["ids"] == 12 and report["splits"]["val"]["ids"] == 4
    assert report["splits"]["train"]["deep"]["bad"] == 0
    assert any("fewer than the 10,582" in w for w in report["warnings"])
    proc = run_cli("check-data", "--data", tiny_voc["root"])
    assert proc.returncode == 0 and "ok:" in proc.stderr and proc.stdout == ""
    proc = run_cli("check-data", tiny_voc["root"])  # the old positional ROOT, with a note
    assert proc.returncode == 0 and "is now `incseg check-data --data" in proc.stderr


def test_check_data_broken_roots(tiny_voc, tmp_path, run_cli):
    root = tiny_voc["root"]
    for image_id in tiny_voc["train"][:2]:
        (root / "SegmentationClassAug" / f"{image_id}.png").unlink()
    proc = run_cli("check-data", "--data", root)
    assert proc.returncode == 3
    line = error_line(proc.stderr, only=True)
    assert "train: 2 of 12 listed images have no mask" in line and tiny_voc["train"][0] in line

    (tmp_path / "bare").mkdir()
    proc = run_cli("check-data", "--data", tmp_path / "bare", "--json")
    assert proc.returncode == 3
    assert "no JPEGImages/ directory" in error_line(proc.stderr, only=True)
    assert json.loads(proc.stdout)["usable"] is False

    proc = run_cli("check-data", "--data", root, "--dataset", "nope")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr


def test_check_data_deep_finds_bad_mask(voc_root_factory, run_cli):
    info = voc_root_factory(n_train=3, n_val=2)
    bad = np.full((30, 40), 77, np.uint8)
    save_label_png(info["root"] / "SegmentationClassAug" / f"{info['val'][1]}.png", bad)
    assert run_cli("check-data", "--data", info["root"]).returncode == 0  # shallow: files exist
    proc = run_cli("check-data", "--data", info["root"], "--deep", "--workers", "1")
    assert proc.returncode == 3
    assert "val: 1 of 2 masks are invalid" in error_line(proc.stderr, only=True)


def _tree(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_prepare_splits_table_and_scan_agree(tiny_voc, tmp_path, run_cli):
    train = write_table(tmp_path / "train.tsv", {i: tiny_voc["classes"][i] for i in tiny_voc["train"]})
    val = write_table(tmp_path / "val.tsv", {i: tiny_voc["classes"][i] for i in tiny_voc["val"]})
    tasks = ["--task", "15-5", "--task", "15-5-ov", "--task", "10-10"]
    a = run_cli("prepare-splits", *tasks, "--labels", train, "--val-labels", val, "--out", tmp_path / "a", "--json")
    assert a.returncode == 0, a.stderr
    b = run_cli("prepare-splits", *tasks, "--data", tiny_voc["root"], "--out", tmp_path / "b", "--workers", "2")
    assert b.returncode == 0, b.stderr
    tree_a, tree_b = _tree(tmp_path / "a"), _tree(tmp_path / "b")
    assert tree_a == tree_b
    assert sorted(tree_a) == [
        "voc/10-10/task.json", "voc/10-10/train-0.txt", "voc/10-10/train-1.txt", "voc/10-10/val.txt",
        "voc/15-5-ov/task.json", "voc/15-5-ov/train-0.txt", "voc/15-5-ov/train-1.txt", "voc/15-5-ov/val.txt",
        "voc/15-5/task.json", "voc/15-5/train-0.txt", "voc/15-5/train-1.txt", "voc/15-5/val.txt",
        "voc/labels-train.tsv",
    ]
    summary = json.loads(a.stdout)
    assert [t["task"] for t in summary["tasks"]] == ["15-5", "15-5-ov", "10-10"]
    assert all(t["val"] == 4 for t in summary["tasks"])
    assert tree_a["voc/15-5/val.txt"].decode().split() == tiny_voc["val"]
    assert "15-5-ov" in b.stderr  # the summary table


def test_prepare_splits_usage_errors(tmp_path, run_cli):
    proc = run_cli("prepare-splits", "--task", "15-7", "--labels", tmp_path / "x.tsv", "--out", tmp_path)
    assert proc.returncode == 2
    assert "unknown task '15-7'" in error_line(proc.stderr, only=True)
    proc = run_cli("prepare-splits", "--task", "15-5", "--out", tmp_path)
    assert proc.returncode == 2 and "--data" in error_line(proc.stderr, only=True)
    proc = run_cli("prepare-splits", "--task", "15-5", "--labels", tmp_path / "x.tsv", "--val-labels", tmp_path / "x.tsv")
    assert proc.returncode == 3 and "label table not found" in error_line(proc.stderr, only=True)
    assert not (tmp_path / "voc").exists()
