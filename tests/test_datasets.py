"""The dataset registry and datasets of one's own (no training: fast)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from helpers import error_line
from incseg_cli import datasets, presets
from incseg_cli.data.custom import init_dataset
from incseg_cli.datasets.custom import preset_for_sizes
from incseg_cli.datasets import open_layout
from incseg_cli.data.splits import read_label_table
from incseg_cli.datasets.custom import split_of
from incseg_cli.engine.checkpoint import make_header
from incseg_cli.errors import IncompatibleError, InputError, OutputExistsError, UsageError
from incseg_cli.tasks import get_task


def make_folder(root: Path, n: int = 8, classes: int = 4, ignore: int = 255) -> Path:
    """``n`` 16x12 images with masks holding classes 1..classes-1 and the ignore value."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i in range(n):
        mask = np.zeros((12, 16), np.uint8)
        mask[2:6, 2:8] = 1 + i % (classes - 1)
        mask[7:10, 9:14] = 1 + (i + 1) % (classes - 1)
        mask[0, :] = ignore
        Image.fromarray(mask, "L").save(root / "masks" / f"im{i}.png")
        Image.fromarray(np.full((12, 16, 3), 40 * (i % 5), np.uint8)).save(
            root / "images" / f"im{i}.{'png' if i % 2 else 'jpg'}")
    (root / "images" / "orphan.jpg").write_bytes((root / "images" / "im0.jpg").read_bytes())
    return root


@pytest.fixture
def described(tmp_path):
    """A folder described by init-dataset, renamed by hand; forgotten from the registry after."""
    root = make_folder(tmp_path / "parts")
    d = init_dataset(root, name="parts", ignore=255)
    d.update(classes=["background", "hex bolt", "nut", "washer"], palette=[[1, 2, 3], [200, 0, 0]],
             tasks={"late-nut": [["hex bolt", "washer"], ["nut"]]})
    (root / "incseg-dataset.json").write_text(json.dumps(d))
    yield root
    datasets.forget("parts")


def test_builtins():
    assert datasets.names()[:3] == ["voc", "coco", "ade"]
    voc = datasets.get("voc")
    assert voc.class_names[20] == "tvmonitor" and voc.ignore_index == 255
    assert voc.palette.shape == (256, 3) and voc.palette.dtype == np.uint8
    assert voc.palette[255].tolist() == [224, 224, 192] and voc.palette[1].tolist() == [128, 0, 0]
    with pytest.raises(UsageError, match="unknown dataset 'vocc'; known: voc, coco, ade"):
        datasets.get("vocc")
    from incseg_cli import tasks

    assert tasks.standard_tasks("ade") == ["offline", "100-50", "100-10", "50-50"]
    assert datasets.get("voc").foreground == 20 and datasets.get("ade").foreground == 150
    assert datasets.get("voc").layout.dataset == "voc"
    assert presets.BASE_PRESETS["ade"]["epochs"] == 60 and presets.BASE_PRESETS["voc"]["epochs"] == 30
    assert presets.STEP_PRESETS["coco"]["lr"] == 1e-3 and presets.STEP_PRESETS["toy"]["lr"] == 1e-3
    assert get_task("coco", "coco-voc").step_datasets == ("coco", "voc")


def test_init_dataset_records_what_it_finds(tmp_path):
    root = make_folder(tmp_path / "f", ignore=250)
    d = init_dataset(root, name="f1", ignore=250)
    found = d["found"]
    assert found["images"] == 8 and found["class_ids_present"] == [0, 1, 2, 3]
    assert found["images_without_mask"] == ["orphan"] and found["sizes"]["most_common"] == [16, 12]
    assert found["ignore_pixels"] == 8 * 16 and d["classes"] == ["background", "class-1", "class-2", "class-3"]
    assert "val_fraction" in d and json.loads((root / "incseg-dataset.json").read_text()) == d
    with pytest.raises(OutputExistsError, match="--force"):
        init_dataset(root, name="f1")
    init_dataset(root, name="f1", ignore=250, force=True)
    layout = open_layout("f1", root)
    mask = layout.read_mask("train", layout.ids("train")[0])
    assert mask[0].tolist() == [255] * 16  # the description's ignore value is read as 255
    assert sorted(layout.ids("train") + layout.ids("val")) == [f"im{i}" for i in range(8)]
    datasets.forget("f1")


def test_custom_dataset_round_trips_through_a_header(described):
    info = datasets.from_root(described)
    assert info.name == "parts" and info.class_names[1] == "hex bolt" and info.custom
    assert info.palette[0].tolist() == [1, 2, 3] and info.palette[2].tolist() == [0, 128, 0]
    task = get_task("parts", "late-nut-ov")
    assert task.steps == ((0, 1, 3), (2,)) and task.overlap
    assert get_task("parts", "2-1").steps == ((0, 1, 2), (3,))
    header = make_header(task, 1, "mib", _spec(), None)
    header = json.loads(json.dumps(header))  # what a checkpoint stores
    datasets.forget("parts")
    again = datasets.for_header(header)
    assert again.class_names == info.class_names and np.array_equal(again.palette, info.palette)
    assert get_task("parts", "late-nut").steps == task.steps
    # a different dataset under the same name is refused, not mixed up
    other = dict(header["dataset_info"], classes=["background", "a", "b", "c"], tasks={})
    with pytest.raises(IncompatibleError, match="described twice"):
        datasets.for_header({"dataset": "parts", "dataset_info": other})
    with pytest.raises(IncompatibleError, match="different ignore values: 255 vs 200"):
        datasets.for_header({"dataset": "parts", "dataset_info": dict(header["dataset_info"], ignore=200)})
    with pytest.raises(InputError, match="built-in"):
        datasets.for_header({"dataset": "voc", "dataset_info": dict(other, name="voc")})


def _spec():
    from incseg_cli.models.deeplab import ModelSpec

    return ModelSpec.for_backbone("tiny", [3, 1], 8, 16, False, False)


def test_task_files_and_bad_tasks(described, tmp_path):
    datasets.from_root(described)
    path = tmp_path / "order.json"
    path.write_text(json.dumps({"name": "nut-first", "steps": [["NUT"], ["washer", "hex bolt"]], "overlap": True}))
    task = get_task("parts", str(path))
    assert task.key == "nut-first-ov" and task.steps == ((0, 2), (3, 1))
    assert "nut-first" in datasets.header_entry("parts")["dataset_info"]["tasks"]
    path.write_text(json.dumps({"name": "short", "steps": [["nut"], ["washer"]]}))
    with pytest.raises(InputError, match="leaves out class\\(es\\) hex bolt"):
        get_task("parts", str(path))
    path.write_text(json.dumps({"name": "dup", "steps": [["nut", "washer"], ["nut", "hex bolt"]]}))
    with pytest.raises(InputError, match="'nut' is already in step 0"):
        get_task("parts", str(path))
    with pytest.raises(UsageError, match="known: offline, late-nut"):
        get_task("parts", "2-2")


def test_resolve_dataset_from_data(described, tmp_path):
    assert datasets.resolve(None, described) == "parts"
    assert datasets.resolve(None, tmp_path) == "voc"
    with pytest.raises(UsageError, match="--dataset voc contradicts"):
        datasets.resolve("voc", described)
    # init-dataset chose the toy recipe for its small images and wrote it down
    assert presets.default_preset("parts") == "toy"
    described_without_preset = {k: v for k, v in json.loads((described / "incseg-dataset.json").read_text()).items()
                                if k not in ("preset", "found")}
    assert preset_for_sizes(described_without_preset.get("found")) == "voc"
    assert preset_for_sizes({"sizes": {"most_common": [640, 480]}}) == "voc"
    assert preset_for_sizes({"sizes": {"most_common": [110, 90]}}) == "toy"
    bad = dict(json.loads((described / "incseg-dataset.json").read_text()), classes=["background", "x", "x"])
    (tmp_path / "incseg-dataset.json").write_text(json.dumps(bad))
    with pytest.raises(InputError, match="classes 1 and 2 are both named 'x'"):
        datasets.resolve(None, tmp_path)


def test_tags_by_class_name(described, tmp_path):
    info = datasets.from_root(described)
    table = tmp_path / "tags.tsv"
    table.write_text("image_id\tclasses\nim1\thex bolt,Washer\nim2\t2\n")
    assert read_label_table(table, info.class_names) == {"im1": [1, 3], "im2": [2]}
    with pytest.raises(InputError, match="class id 'hex bolt'"):
        read_label_table(table)


def test_hash_split_is_stable():
    ids = [f"img{i}" for i in range(400)]
    val = [i for i in ids if split_of(i, 0.25, 0) == "val"]
    assert 70 < len(val) < 130
    assert [i for i in ids[:200] if split_of(i, 0.25, 0) == "val"] == [v for v in val if v in ids[:200]]


def test_visual_takes_the_dataset_palette(described, tmp_path):
    from incseg_cli import visual

    info = datasets.from_root(described)
    labels = np.array([[0, 1], [255, 2]], np.uint8)
    assert visual.colourise(labels, info.palette)[0, 0].tolist() == [1, 2, 3]
    assert visual.colourise(labels)[0, 0].tolist() == [0, 0, 0]  # VOC's by default
    visual.save_label_png(tmp_path / "m.png", labels, info.palette)
    with Image.open(tmp_path / "m.png") as img:
        assert img.getpalette()[:6] == [1, 2, 3, 200, 0, 0] and np.array_equal(np.array(img), labels)


def _cli(capsys, *args):
    """The CLI in this process (the commands here load no model): (exit code, stdout, stderr)."""
    from incseg_cli.cli import main

    capsys.readouterr()
    try:
        main([str(a) for a in args])
        code = 0
    except SystemExit as stop:
        code = stop.code or 0
    out = capsys.readouterr()
    return code, out.out, out.err


def test_cli_init_check_and_list(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("INCSEG_NO_PROGRESS", "1")
    root = make_folder(tmp_path / "cli-parts")
    code, _, err = _cli(capsys, "init-dataset", root, "--workers", "1")
    assert code == 0, err
    assert "dataset cli-parts, 8 images, 4 classes" in err and "1 images have no mask" in err
    code, _, err = _cli(capsys, "init-dataset", root)
    assert code == 6 and "--force" in error_line(err, only=True)
    code, _, err = _cli(capsys, "check-data", "--data", root, "--deep", "--workers", "1")
    assert code == 0 and "usable cli-parts root" in err, err
    d = json.loads((root / "incseg-dataset.json").read_text())
    (root / "incseg-dataset.json").write_text(json.dumps(dict(d, train="missing.txt")))
    code, _, err = _cli(capsys, "check-data", "--data", root, "--json")
    assert code == 3 and "no image list missing.txt" in error_line(err, only=True)
    # a preset incseg does not have: check-data names it, and so does any stage that would use it
    (root / "incseg-dataset.json").write_text(json.dumps(dict(d, preset="tiny")))
    datasets.forget("cli-parts")
    code, _, err = _cli(capsys, "check-data", "--data", root)
    assert code == 3 and "names preset 'tiny', which is not one of voc, coco, ade, toy" in error_line(err, only=True)
    with pytest.raises(InputError, match="names preset 'tiny'"):
        presets.default_preset("cli-parts")
    code, _, err = _cli(capsys, "list-tasks", "--dataset", "nope")
    assert code == 2 and "known: voc, coco, ade" in error_line(err)
    code, _, err = _cli(capsys, "make-toy-data", "--out", tmp_path / "toy", "--format", "custom", "--images", "6",
                        "--val-images", "2", "--size", "32", "--workers", "1")
    assert code == 0, err
    code, out, err = _cli(capsys, "list-tasks", "--data", tmp_path / "toy", "--json")
    assert code == 0 and json.loads(out)[0]["dataset"] == "toy"
    datasets.forget("cli-parts")
    datasets.forget("toy")


def test_upper_case_mask_suffix_is_found(tmp_path):
    root = make_folder(tmp_path / "caps", n=4)
    (root / "masks" / "im1.png").rename(root / "masks" / "im1.PNG")
    d = init_dataset(root, name="caps")
    try:
        assert d["found"]["images"] == 4
        layout = open_layout("caps", root)
        ids = layout.ids("train") + layout.ids("val")
        assert sorted(ids) == ["im0", "im1", "im2", "im3"]
        assert layout.mask_path("train", "im1").name == "im1.PNG" and layout.read_mask("train", "im1").shape == (12, 16)
    finally:
        datasets.forget("caps")


def test_init_dataset_refuses_a_folder_without_one_usable_mask(tmp_path):
    root = make_folder(tmp_path / "rgb", n=3)
    for mask in (root / "masks").iterdir():  # colour-coded masks: the common mistake
        Image.fromarray(np.zeros((12, 16, 3), np.uint8)).save(mask)
    with pytest.raises(InputError, match="no mask could be used; the first: .*im0.png"):
        init_dataset(root, name="rgb")
    assert not (root / "incseg-dataset.json").exists()


def test_list_tasks_and_check_data_name_the_classes(described, capsys, monkeypatch):
    monkeypatch.setenv("INCSEG_NO_PROGRESS", "1")
    monkeypatch.setenv("COLUMNS", "200")
    code, out, err = _cli(capsys, "list-tasks", "--data", described)
    assert code == 0, err
    assert "0+hex bolt,washer | nut" in out  # the named task, by its classes' names
    code, out, err = _cli(capsys, "check-data", "--data", described, "--json", "--deep", "--workers", "1")
    assert code == 0, err
    report = json.loads(out)
    assert report["class_names"] == {"0": "background", "1": "hex bolt", "2": "nut", "3": "washer"}
