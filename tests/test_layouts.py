"""Dataset layouts (VOC list formats, mask fallback, VOC-as-COCO, COCO, ADE) and the Dataset."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import save_label_png, synth_image, synth_mask
from incseg_cli.datasets.ade import CLASS_NAMES as ADE
from incseg_cli.datasets.coco import CLASS_NAMES as COCO
from incseg_cli.datasets.coco import VOC_TO_COCO
from incseg_cli.datasets.voc import CLASS_NAMES as VOC
from incseg_cli.data.dataset import SegmentationDataset, sample_seed
from incseg_cli.datasets import open_layout
from incseg_cli.data.transforms import EvalTransform, TrainTransform
from incseg_cli.errors import InputError, UsageError
from incseg_cli.tasks import get_task


def _stored_mask(info, image_id):
    return np.array(Image.open(info["root"] / "SegmentationClassAug" / f"{image_id}.png"))


@pytest.mark.parametrize("style", ["imagesets", "list", "splits"])
def test_voc_list_styles(voc_root_factory, style):
    info = voc_root_factory(list_style=style, n_train=5, n_val=2)
    layout = open_layout("voc", info["root"])
    assert layout.dataset == "voc" and layout.label_space == "voc"
    assert layout.ids("train") == info["train"]
    assert layout.ids("val") == info["val"]
    image_id = info["train"][1]
    assert layout.image_path("train", image_id) == info["root"] / "JPEGImages" / f"{image_id}.jpg"
    assert layout.mask_path("train", image_id) == info["root"] / "SegmentationClassAug" / f"{image_id}.png"
    mask = layout.read_mask("train", image_id)
    assert mask.dtype == np.uint8 and mask.shape == (30, 40)
    np.testing.assert_array_equal(mask, _stored_mask(info, image_id))
    assert sorted(set(np.unique(mask).tolist()) - {255}) == info["classes"][image_id]
    image = layout.read_image("train", image_id)
    assert image.mode == "RGB" and image.size == (40, 30)
    assert layout.expected_counts == {"train": 10582, "val": 1449}
    assert layout.class_names == list(VOC)


def test_voc_train_aug_preferred_over_train_and_crlf(voc_root_factory):
    info = voc_root_factory(n_train=4, n_val=2)
    lists = info["root"] / "ImageSets" / "Segmentation"
    (lists / "train.txt").write_text(info["train"][0] + "\n")
    # train_aug.txt in another folder still wins over train.txt (name first, then folder).
    (lists / "train_aug.txt").rename(info["root"] / "list_tmp.txt")
    (info["root"] / "list").mkdir()
    text = "\r\n".join(info["train"]) + "\r\n\r\n"
    (info["root"] / "list" / "train_aug.txt").write_bytes(text.encode())
    layout = open_layout("voc", info["root"])
    assert layout.ids("train") == info["train"]


def test_voc_splits_style_mask_column_and_fallback(voc_root_factory):
    info = voc_root_factory(list_style="splits", n_train=3, n_val=2)
    root = info["root"]
    # A second mask folder named by the list's second column is used for that image.
    other = root / "OtherMasks"
    image_id = info["train"][0]
    alt = np.zeros((30, 40), np.uint8)
    alt[5:10, 5:10] = 7
    save_label_png(other / f"{image_id}.png", alt)
    lines = (root / "splits" / "train_aug.txt").read_text().splitlines()
    lines[0] = f"/JPEGImages/{image_id}.jpg /OtherMasks/{image_id}.png"
    (root / "splits" / "train_aug.txt").write_text("\n".join(lines) + "\n")
    layout = open_layout("voc", root)
    assert layout.mask_path("train", image_id) == other / f"{image_id}.png"
    np.testing.assert_array_equal(layout.read_mask("train", image_id), alt)


def test_voc_segmentationclass_fallback(voc_root_factory):
    info = voc_root_factory(n_train=3, n_val=2)
    root = info["root"]
    moved = info["val"][0]
    (root / "SegmentationClass").mkdir()
    (root / "SegmentationClassAug" / f"{moved}.png").rename(root / "SegmentationClass" / f"{moved}.png")
    layout = open_layout("voc", root)
    assert layout.mask_path("val", moved) == root / "SegmentationClass" / f"{moved}.png"
    assert layout.mask_path("val", info["val"][1]) == root / "SegmentationClassAug" / f"{info['val'][1]}.png"
    assert layout.read_mask("val", moved).shape == (30, 40)
    # Only SegmentationClass/ present is a valid root too.
    (root / "SegmentationClassAug").rename(root / "gone")
    layout = open_layout("voc", root)
    assert layout.mask_path("val", moved) == root / "SegmentationClass" / f"{moved}.png"


def test_voc_classes_txt(voc_root_factory):
    info = voc_root_factory(n_train=2, n_val=1)
    names = [f"c{i}" for i in range(21)]
    (info["root"] / "classes.txt").write_text("\n".join(names) + "\n")
    assert open_layout("voc", info["root"]).class_names == names
    assert open_layout("voc", info["root"], label_space="coco").class_names == list(COCO)
    (info["root"] / "classes.txt").write_text("a\nb\n")
    with pytest.raises(InputError, match="classes.txt: 2 class names"):
        open_layout("voc", info["root"])


def test_voc_as_coco(tiny_voc):
    layout = open_layout("voc", tiny_voc["root"], label_space="coco")
    assert layout.label_space == "coco" and layout.dataset == "voc"
    image_id = tiny_voc["train"][1]
    raw = _stored_mask(tiny_voc, image_id)
    mapped = layout.read_mask("train", image_id)
    assert 255 in raw
    for voc_id in np.unique(raw):
        expected = 255 if voc_id == 255 else VOC_TO_COCO[int(voc_id)]
        assert set(np.unique(mapped[raw == voc_id]).tolist()) == {expected}


def test_voc_errors(tmp_path, voc_root_factory):
    with pytest.raises(InputError, match="does not exist"):
        open_layout("voc", tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError) as err:
        open_layout("voc", tmp_path / "empty")
    assert str(err.value) == f"{tmp_path / 'empty'}: no JPEGImages/ directory"
    (tmp_path / "empty" / "JPEGImages").mkdir()
    with pytest.raises(InputError, match="no SegmentationClassAug/"):
        open_layout("voc", tmp_path / "empty")
    (tmp_path / "empty" / "SegmentationClassAug").mkdir()
    layout = open_layout("voc", tmp_path / "empty")
    with pytest.raises(InputError, match=r"no image list for split train \(looked for ImageSets/Segmentation/train_aug.txt"):
        layout.ids("train")
    with pytest.raises(UsageError):
        layout.ids("test")
    with pytest.raises(UsageError):
        open_layout("cityscapes", tmp_path)
    # A devkit parent gets a hint.
    info = voc_root_factory("VOCdevkit/VOC2012", n_train=1, n_val=1)
    with pytest.raises(InputError, match="did you mean"):
        open_layout("voc", info["root"].parent)


def test_listed_id_without_mask(tiny_voc):
    root = tiny_voc["root"]
    lost = tiny_voc["train"][2]
    (root / "SegmentationClassAug" / f"{lost}.png").unlink()
    layout = open_layout("voc", root)
    ds = SegmentationDataset(layout, "train", layout.ids("train"), EvalTransform("full"))
    with pytest.raises(InputError) as err:
        ds[2]
    assert f"SegmentationClassAug/{lost}.png" in str(err.value) and "\n" not in str(err.value)
    ds[1]  # the others still load


def test_coco_layout(tmp_path):
    root = tmp_path / "coco"
    ids = {"train": ["000000000009", "000000000025"], "val": ["000000000139"]}
    sub = {"train": "train2017", "val": "val2017"}
    for split, names in ids.items():
        (root / "images" / sub[split]).mkdir(parents=True, exist_ok=True)
        for k, image_id in enumerate(names):
            mask = synth_mask(k, 20, 24, [1, 44 + k])
            synth_image(mask).save(root / "images" / sub[split] / f"{image_id}.jpg")
            save_label_png(root / "annotations" / sub[split] / f"{image_id}.png", mask, palette=False)
    layout = open_layout("coco", root)
    assert layout.ids("train") == ids["train"] and layout.ids("val") == ids["val"]
    assert layout.mask_path("val", "000000000139") == root / "annotations/val2017/000000000139.png"
    assert layout.image_path("train", "000000000025") == root / "images/train2017/000000000025.jpg"
    assert set(np.unique(layout.read_mask("train", "000000000025")).tolist()) == {0, 1, 45, 255}
    assert layout.class_names == list(COCO) and layout.expected_counts["train"] == 118287
    # An explicit list wins over the file listing.
    (root / "split").mkdir()
    (root / "split" / "train.txt").write_text("000000000025\n")
    assert open_layout("coco", root).ids("train") == ["000000000025"]
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "images").mkdir()
    with pytest.raises(InputError, match="no annotations/ directory"):
        open_layout("coco", tmp_path / "bad")


def test_ade_layout(tmp_path):
    root = tmp_path / "ADEChallengeData2016"
    for sub, names in (("training", ["ADE_train_00000002", "ADE_train_00000001"]), ("validation", ["ADE_val_00000001"])):
        (root / "images" / sub).mkdir(parents=True)
        for k, name in enumerate(names):
            mask = synth_mask(k, 16, 20, [150, 3], border=False)
            synth_image(mask).save(root / "images" / sub / f"{name}.jpg")
            save_label_png(root / "annotations" / sub / f"{name}.png", mask, palette=False)
    layout = open_layout("ade", root)
    assert layout.ids("train") == ["ADE_train_00000001", "ADE_train_00000002"]
    assert layout.ids("val") == ["ADE_val_00000001"]
    assert layout.mask_path("train", "ADE_train_00000001") == root / "annotations/training/ADE_train_00000001.png"
    assert set(np.unique(layout.read_mask("val", "ADE_val_00000001")).tolist()) == {0, 3, 150}
    assert layout.class_names == list(ADE) and layout.expected_counts == {"train": 20210, "val": 2000}
    with pytest.raises(InputError, match="did you mean"):
        open_layout("ade", tmp_path)


# -- SegmentationDataset ---------------------------------------------------------------------------
def test_dataset_lut_keys_and_determinism(tiny_voc):
    layout = open_layout("voc", tiny_voc["root"])
    task = get_task("voc", "15-5")
    ids = layout.ids("train")
    ds = SegmentationDataset(layout, "train", ids, TrainTransform(16), lut=task.train_lut(1), seed=3)
    assert len(ds) == len(ids)
    item = ds[1]  # classes 8 and 17: 8 is old at step 1 -> 0, 17 stays, 255 stays
    assert item["image"].shape == (3, 16, 16) and item["image"].dtype == torch.uint8
    assert item["label"].shape == (16, 16) and item["label"].dtype == torch.uint8
    assert item["index"] == 1
    assert set(item["label"].unique().tolist()) <= {0, 17, 255}
    again = ds[(1, sample_seed(3, 1))]
    assert torch.equal(item["image"], again["image"]) and torch.equal(item["label"], again["label"])
    other = ds[(1, 12345)]
    assert other["index"] == 1
    # Eval transform and LUT: full image, seen classes kept.
    ev = SegmentationDataset(layout, "train", ids, EvalTransform("full"), lut=task.eval_lut(0))
    label = ev[1]["label"]
    raw = _stored_mask(tiny_voc, ids[1])
    np.testing.assert_array_equal(label.numpy(), np.where(raw == 17, 0, raw))


def test_dataset_without_masks(tiny_voc):
    root = tiny_voc["root"]
    layout = open_layout("voc", root)
    ids = layout.ids("train")
    for image_id in ids:
        (root / "SegmentationClassAug" / f"{image_id}.png").unlink()
    ds = SegmentationDataset(layout, "train", ids, TrainTransform(8), read_masks=False)
    item = ds[0]
    assert "label" not in item and item["image"].shape == (3, 8, 8)  # nothing would read a label
    info_full = SegmentationDataset(layout, "train", ids, EvalTransform("full"), read_masks=False)[0]
    assert info_full["image"].shape == (3, 30, 40)


def test_dataset_validation_errors(tiny_voc):
    root = tiny_voc["root"]
    ids = tiny_voc["train"][:3]
    # size mismatch
    save_label_png(root / "SegmentationClassAug" / f"{ids[0]}.png", np.zeros((10, 10), np.uint8))
    # a value outside VOC's 0..20
    bad = synth_mask(1, 30, 40, [3])
    bad[0, 0] = 42
    save_label_png(root / "SegmentationClassAug" / f"{ids[1]}.png", bad)
    # a corrupt image
    (root / "JPEGImages" / f"{ids[2]}.jpg").write_bytes(b"not a jpeg")
    layout = open_layout("voc", root)
    ds = SegmentationDataset(layout, "train", ids, EvalTransform("full"))
    with pytest.raises(InputError, match=rf"{ids[0]}.png: mask is 10x10 but its image is 40x30"):
        ds[0]
    with pytest.raises(InputError, match=rf"{ids[1]}.png: mask value 42 is not a voc label"):
        ds[1]
    with pytest.raises(InputError, match=rf"{ids[2]}.jpg: unreadable image"):
        ds[2]
    (root / "SegmentationClassAug" / f"{ids[0]}.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    with pytest.raises(InputError, match=rf"{ids[0]}.png: unreadable mask"):
        ds[0]
    with pytest.raises(IndexError):
        ds[3]


def test_dataset_in_dataloader_workers(tiny_voc):
    layout = open_layout("voc", tiny_voc["root"])
    ds = SegmentationDataset(layout, "train", layout.ids("train")[:4], TrainTransform(8), seed=1)
    loader = torch.utils.data.DataLoader(ds, batch_size=2, num_workers=1)
    batches = list(loader)
    ref = torch.stack([ds[i]["image"] for i in range(2)])
    assert torch.equal(batches[0]["image"], ref)
    assert batches[1]["index"].tolist() == [2, 3]
