"""Split rules, label remapping, label tables, split files (shipped VOC splits included)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from helpers import REPO
from incseg_cli.datasets.coco import VOC_TO_COCO
from incseg_cli.datasets import open_layout
from incseg_cli.data.splitroots import default_splits_root
from incseg_cli.data.splits import (
    load_labels,
    load_split,
    load_val,
    read_label_table,
    scan_masks,
    write_label_table,
    write_splits,
)
from incseg_cli.errors import IncompatibleError, InputError, UsageError
from incseg_cli.tasks import get_task, standard_tasks

EXPECTED = {
    "15-5": [8437, 2145],
    "15-5-ov": [9568, 2145],
    "10-10": [3706, 6876],
    "10-10-ov": [6139, 6876],
    "19-1": [10034, 548],
    "19-1-ov": [10410, 548],
    "15-1": [8437, 378, 299, 420, 500, 548],
    "15-1-ov": [9568, 487, 299, 491, 500, 548],
    "offline": [10582],
}


def _voc_task_keys() -> list[str]:
    keys = []
    for name in standard_tasks("voc"):
        for variant in (name, f"{name}-ov"):
            key = get_task("voc", variant).key
            if key not in keys:
                keys.append(key)
    return keys


@pytest.fixture(scope="module")
def voc_table():
    from helpers import SHARED

    path = SHARED / "data" / "voc" / "image_labels_train_aug.tsv"
    if not path.is_file():
        pytest.skip(f"shared VOC label table not found at {path}")
    return read_label_table(path)


# -- the rules ---------------------------------------------------------------------------------
def test_select_rules_by_hand():
    task = get_task("voc", "15-5")  # disjoint
    ov = get_task("voc", "15-5-ov")
    table = {
        "a": [0, 1, 15],  # only old classes
        "b": [0, 3, 17],  # old + future
        "c": [0, 16],  # only new
        "d": [0],  # pure background
        "e": [20, 255],  # new + ignore
        "f": [],
    }
    assert task.select(0, table) == ["a"]
    assert ov.select(0, table) == ["a", "b"]
    assert task.select(1, table) == ov.select(1, table) == ["b", "c", "e"]
    t151 = get_task("voc", "15-1")
    assert t151.select(1, {"x": [16, 17], "y": [16], "z": [17]}) == ["y"]
    assert get_task("voc", "15-1-ov").select(1, {"x": [16, 17], "y": [16], "z": [17]}) == ["x", "y"]
    offline = get_task("voc", "offline")
    assert offline.select(0, table) == ["a", "b", "c", "e"]
    cv = get_task("coco", "coco-voc")
    coco = {"p": [0, 8], "q": [1, 8], "r": [0], "s": []}
    assert cv.select(0, coco) == ["p", "r", "s"]  # no VOC class; background-only images too
    assert cv.select(1, {"v1": [1], "v2": []}) == ["v1", "v2"]  # all VOC images


def test_train_and_eval_luts():
    task = get_task("voc", "15-5")
    raw = np.array([0, 1, 15, 16, 20, 255, 7], dtype=np.uint8)
    np.testing.assert_array_equal(task.train_lut(0)[raw], [0, 1, 15, 0, 0, 255, 7])
    np.testing.assert_array_equal(task.train_lut(1)[raw], [0, 0, 0, 16, 20, 255, 0])
    np.testing.assert_array_equal(task.eval_lut(0)[raw], [0, 1, 15, 0, 0, 255, 7])
    np.testing.assert_array_equal(task.eval_lut(1)[raw], [0, 1, 15, 16, 20, 255, 7])
    cv = get_task("coco", "coco-voc")
    coco = np.array([0, 8, 1, 72, 255], dtype=np.uint8)  # truck (base), person, tv (new)
    np.testing.assert_array_equal(cv.train_lut(0)[coco], [0, 1, 0, 0, 255])
    np.testing.assert_array_equal(cv.train_lut(1)[coco], [0, 0, 61, 80, 255])
    np.testing.assert_array_equal(cv.eval_lut(0)[coco], [0, 1, 0, 0, 255])


# -- label tables ------------------------------------------------------------------------------
def test_label_table_roundtrip_and_errors(tmp_path):
    path = tmp_path / "t.tsv"
    path.write_bytes(b"image_id\tclasses\r\nb\t15,1\r\na\t\r\n\r\nc\t3\r\n")
    table = read_label_table(path)
    assert table == {"b": [1, 15], "a": [], "c": [3]}
    write_label_table(tmp_path / "out.tsv", table)
    assert (tmp_path / "out.tsv").read_text() == "image_id\tclasses\na\t\nb\t1,15\nc\t3\n"
    assert read_label_table(tmp_path / "out.tsv") == table
    for body, message in (
        ("image_id\tclasses\nx\t1,a\n", r"t.tsv:2: class id 'a'"),
        ("image_id\tclasses\nx\t1\ty\n", r"t.tsv:2: malformed line"),
        ("image_id\tclasses\nx 1,2\n", r"t.tsv:2: malformed line"),
        ("x\t1\nx\t2\n", r"t.tsv:2: image id x appears twice"),
        ("x\t300\n", r"t.tsv:1: class id '300'"),
    ):
        path.write_text(body)
        with pytest.raises(InputError, match=message):
            read_label_table(path)
    with pytest.raises(InputError, match="not found"):
        read_label_table(tmp_path / "missing.tsv")


# -- the shipped VOC splits ----------------------------------------------------------------------
def test_voc_counts_from_shared_table(voc_table):
    assert len(voc_table) == 10582
    for key, counts in EXPECTED.items():
        task = get_task("voc", key)
        assert [len(task.select(t, voc_table)) for t in range(task.num_steps)] == counts, key


def test_committed_splits_equal_fresh(tmp_path, voc_table):
    from helpers import SHARED

    val = list(read_label_table(SHARED / "data" / "voc" / "image_labels_val.tsv"))
    assert len(val) == 1449
    shipped = REPO / "incseg_cli" / "splits" / "voc"
    assert (shipped / "labels-train.tsv").is_file(), "run incseg prepare-splits to generate splits/"
    for key in _voc_task_keys():
        fresh = write_splits(get_task("voc", key), voc_table, val, tmp_path)
        names = sorted(p.name for p in fresh.iterdir())
        assert names == sorted(p.name for p in (shipped / key).iterdir()), key
        for name in names:
            assert (fresh / name).read_bytes() == (shipped / key / name).read_bytes(), f"{key}/{name}"
    assert (tmp_path / "voc" / "labels-train.tsv").read_bytes() == (shipped / "labels-train.tsv").read_bytes()
    for key, counts in EXPECTED.items():
        meta = json.loads((shipped / key / "task.json").read_text())
        assert meta["counts"] == counts and meta["val"] == 1449
        assert len(load_split(REPO / "incseg_cli" / "splits", get_task("voc", key), 0)) == counts[0]


# -- writing and reading split files -------------------------------------------------------------
def _small_table() -> dict[str, list[int]]:
    return {f"i{k}": [0, 1 + (k * 7) % 20] for k in range(30)}


def test_write_and_load(tmp_path):
    task = get_task("voc", "15-5-ov")
    table = _small_table()
    directory = write_splits(task, table, ["v1", "v0"], tmp_path)
    assert directory == tmp_path / "voc" / "15-5-ov"
    assert sorted(p.name for p in directory.iterdir()) == ["task.json", "train-0.txt", "train-1.txt", "val.txt"]
    meta = json.loads((directory / "task.json").read_text())
    assert meta["steps"] == [list(range(16)), [16, 17, 18, 19, 20]] and meta["task"] == "15-5-ov"
    assert meta["counts"] == [len(task.select(0, table)), len(task.select(1, table))] and meta["val"] == 2
    assert load_split(tmp_path, task, 1) == task.select(1, table)
    assert load_val(tmp_path, task) == ["v1", "v0"]
    assert read_label_table(tmp_path / "voc" / "labels-train.tsv") == table
    labels = load_labels(tmp_path, task, 1)
    assert list(labels) == task.select(1, table) and all(labels[i] == table[i] for i in labels)
    with pytest.raises(UsageError):
        load_split(tmp_path, task, 2)


def test_load_errors(tmp_path):
    task = get_task("voc", "10-10")
    with pytest.raises(InputError, match=r"run `incseg prepare-splits --dataset voc --task 10-10 .*--out "):
        load_split(tmp_path, task, 0)
    write_splits(task, _small_table(), ["v"], tmp_path)
    # task.json of other steps -> IncompatibleError
    meta_path = tmp_path / "voc" / "10-10" / "task.json"
    meta = json.loads(meta_path.read_text())
    meta["steps"] = [[0, 1], [2]]
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(IncompatibleError, match="other steps"):
        load_val(tmp_path, task)
    # an empty split
    table = {"a": [0, 1]}  # no image for step 1 (classes 11-20)
    write_splits(task, table, ["v"], tmp_path)
    assert load_split(tmp_path, task, 0) == ["a"]
    with pytest.raises(InputError, match="train-1.txt: the split is empty"):
        load_split(tmp_path, task, 1)
    (tmp_path / "voc" / "10-10" / "val.txt").unlink()
    with pytest.raises(InputError, match="val.txt: split file missing"):
        load_val(tmp_path, task)
    # a class outside the label space
    with pytest.raises(InputError, match="class 21"):
        write_splits(task, {"a": [21]}, ["v"], tmp_path)


def test_coco_voc_step_tables(tmp_path):
    task = get_task("coco", "coco-voc")
    coco = {"c1": [0, 8], "c2": [1, 8], "c3": [0]}
    voc = {"v1": [0, 15], "v2": [20, 3]}
    with pytest.raises(UsageError, match="voc"):
        write_splits(task, coco, ["cv"], tmp_path)
    directory = write_splits(task, coco, ["cv"], tmp_path, step_classes={"voc": voc})
    assert load_split(tmp_path, task, 0) == ["c1", "c3"]
    assert load_split(tmp_path, task, 1) == ["v1", "v2"]
    labels = load_labels(tmp_path, task, 1)
    assert labels == {"v1": [0, VOC_TO_COCO[15]], "v2": sorted([VOC_TO_COCO[3], VOC_TO_COCO[20]])}
    assert load_labels(tmp_path, task, 0) == {"c1": [0, 8], "c3": [0]}
    meta = json.loads((directory / "task.json").read_text())
    assert meta["step_datasets"] == ["coco", "voc"] and meta["counts"] == [2, 2]
    # A changed label table is detected.
    write_label_table(tmp_path / "coco" / "labels-train.tsv", {"c1": [0]})
    with pytest.raises(IncompatibleError, match="has changed"):
        load_labels(tmp_path, task, 0)


@pytest.mark.parametrize("workers", [1, 2])
def test_scan_masks(voc_root_factory, workers):
    # 70 images so that workers=2 really uses the process pool.
    info = voc_root_factory(n_train=70 if workers > 1 else 12, n_val=1, size=(12, 10))
    layout = open_layout("voc", info["root"])
    table = scan_masks(layout, "train", workers=workers)
    assert list(table) == info["train"]
    assert table == {i: info["classes"][i] for i in info["train"]}
    as_coco = scan_masks(open_layout("voc", info["root"], label_space="coco"), "train", workers=1)
    first = info["train"][1]
    assert as_coco[first] == sorted(VOC_TO_COCO[c] for c in info["classes"][first])


def test_scan_masks_error_names_file(tiny_voc):
    lost = tiny_voc["train"][3]
    (tiny_voc["root"] / "SegmentationClassAug" / f"{lost}.png").unlink()
    with pytest.raises(InputError, match=f"{lost}.png: mask not found"):
        scan_masks(open_layout("voc", tiny_voc["root"]), "train", workers=1)


def test_default_splits_root(tmp_path, monkeypatch):
    """$INCSEG_SPLITS alone; else the first of ./splits, the user data directory and the
    shipped splits that holds the task; a task found nowhere: where prepare-splits writes."""
    from incseg_cli.data.splitroots import task_splits_root, writable_splits_root

    shipped = REPO / "incseg_cli" / "splits"
    voc, own = get_task("voc", "15-5"), get_task("voc", "10-5-5-ov")
    monkeypatch.setenv("INCSEG_SPLITS", str(tmp_path / "x"))
    assert default_splits_root() == tmp_path / "x" == task_splits_root(voc) == writable_splits_root()
    monkeypatch.delenv("INCSEG_SPLITS")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    user = tmp_path / "xdg" / "incseg" / "splits"
    monkeypatch.chdir(tmp_path)
    assert task_splits_root(voc) == shipped and default_splits_root() == shipped
    assert task_splits_root(own) == user == writable_splits_root()  # never the install directory
    (user / "voc" / "10-5-5-ov").mkdir(parents=True)
    (user / "voc" / "10-5-5-ov" / "task.json").write_text("{}")
    assert task_splits_root(own) == user and task_splits_root(voc) == shipped
    (tmp_path / "splits").mkdir()
    assert writable_splits_root() == Path("splits") and default_splits_root() == Path("splits")
    assert task_splits_root(voc) == shipped and task_splits_root(own) == user
