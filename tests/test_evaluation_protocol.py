"""The evaluation protocol comes from the run: evaluate without options reproduces the run's
metrics.json, a different value is a warning recorded in the output; the val sets of the
papers (all / seen) and their VOC sizes; predictions as VOC palette PNGs."""

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from helpers import REPO, error_line
from incseg_cli.datasets import open_layout
from incseg_cli.data.splits import read_label_table
from incseg_cli.data.transforms import EvalTransform
from incseg_cli.data.valsets import seen_ids, select_val_ids, val_image_classes
from incseg_cli.methods.registry import default_val_set
from incseg_cli.errors import UsageError
from incseg_cli.tasks import get_task
from incseg_cli.visual import PALETTE, at_image_size, crop_box, eval_view

SCORED = ("dataset", "task", "step", "protocol", "miou", "groups", "pixel_accuracy", "pixels", "classes", "confusion")


# -- val sets -------------------------------------------------------------------------------------
VOC_SEEN = {  # README "Evaluation protocol": MiB/ALIFE's test images at every step
    "15-5": [1240, 1449],
    "10-10": [869, 1449],
    "15-1": [1240, 1277, 1329, 1353, 1421, 1449],
}


def _seen_counts(table: dict[str, list[int]]) -> dict[str, list[int]]:
    ids = sorted(table)
    out = {}
    for name in VOC_SEEN:
        task = get_task("voc", name)
        out[name] = [len(seen_ids(ids, table, task, t)) for t in range(task.num_steps)]
    return out


def test_voc_seen_val_counts_from_the_shipped_table():
    table = read_label_table(REPO / "incseg_cli" / "splits" / "voc" / "labels-val.tsv")
    assert len(table) == 1449
    assert _seen_counts(table) == VOC_SEEN
    # the overlapped tasks test on the same images: the rule depends only on the seen classes
    task = get_task("voc", "15-5-ov")
    assert len(seen_ids(sorted(table), table, task, 0)) == 1240


def test_shipped_val_table_is_the_shared_one(shared_dir):
    shared = read_label_table(shared_dir / "data" / "voc" / "image_labels_val.tsv")
    assert read_label_table(REPO / "incseg_cli" / "splits" / "voc" / "labels-val.tsv") == shared
    assert _seen_counts(shared) == VOC_SEEN


def test_method_defaults():
    assert [default_val_set(m) for m in ("ft", "mib", "alife", "alife-m", "base", "joint", "wilson")] == \
        ["seen"] * 6 + ["all"]
    assert default_val_set("base", "bce") == "all"  # WILSON's step 0


def test_seen_set_from_a_mask_scan_is_cached(voc_root_factory, tmp_path, monkeypatch):
    monkeypatch.setenv("INCSEG_CACHE_DIR", str(tmp_path / "cache"))
    # val images 1000.. get one or two classes of 1..20; 15-5 step 0 keeps those with a class <= 15
    info = voc_root_factory(n_train=2, n_val=8)
    layout = open_layout("voc", info["root"])
    task = get_task("voc", "15-5")
    splits = tmp_path / "no-splits"  # no labels-val.tsv there: the masks are scanned
    expected = [i for i in info["val"] if set(info["classes"][i]) & set(range(1, 16))]
    assert 0 < len(expected) < 8
    first = select_val_ids(layout, task, 0, "seen", splits)
    assert first.ids == expected and first.total == 8 and "scan of the val masks" in first.classes_from
    cached = list((tmp_path / "cache" / "val-classes").glob("*.tsv"))
    assert len(cached) == 1
    assert select_val_ids(layout, task, 1, "seen", splits).ids == info["val"]
    assert select_val_ids(layout, task, 0, "all", splits).ids == info["val"]
    # a changed mask is a new key, so it is read again
    changed = next(i for i in info["val"] if i not in expected)
    mask_path = layout.mask_path("val", changed)
    with Image.open(mask_path) as img:
        mask = np.array(img)
    mask[mask != 255] = np.where(mask[mask != 255] > 0, 3, 0)
    Image.fromarray(mask, mode="P").save(mask_path)
    assert changed in select_val_ids(layout, task, 0, "seen", splits).ids
    assert len(list((tmp_path / "cache" / "val-classes").glob("*.tsv"))) == 2


def test_splits_table_is_used_when_it_lists_every_val_image(voc_root_factory, tmp_path, monkeypatch):
    monkeypatch.setenv("INCSEG_CACHE_DIR", str(tmp_path / "cache"))
    info = voc_root_factory(n_train=2, n_val=4)
    layout = open_layout("voc", info["root"])
    splits = tmp_path / "splits"
    (splits / "voc").mkdir(parents=True)
    table = {i: [20] for i in info["val"]} | {info["val"][0]: [1]}  # deliberately not the masks
    (splits / "voc" / "labels-val.tsv").write_text(
        "image_id\tclasses\n" + "".join(f"{k}\t{','.join(map(str, v))}\n" for k, v in table.items()))
    chosen = select_val_ids(layout, get_task("voc", "15-5"), 0, "seen", splits)
    assert chosen.ids == [info["val"][0]] and chosen.table == splits / "voc" / "labels-val.tsv"
    assert not (tmp_path / "cache").exists()
    # the shipped VOC table does not list these ids: the masks are scanned instead
    assert val_image_classes(layout, REPO / "incseg_cli" / "splits").path is None
    with pytest.raises(UsageError, match="--val-set must be one of all, seen"):
        select_val_ids(layout, get_task("voc", "15-5"), 0, "some", splits)


# -- geometry of pictures -------------------------------------------------------------------------
@pytest.mark.parametrize("size", [(40, 30), (30, 47), (32, 32)])
def test_eval_view_is_the_evaluation_crop(size):
    width, height = size
    mask = (np.arange(width * height, dtype=np.int64).reshape(height, width) % 251).astype(np.uint8)
    image = Image.fromarray(np.stack([mask] * 3, axis=-1))
    _, expected = EvalTransform("crop", 24)(image, mask)
    view, got = eval_view(image, mask, "crop", 24)
    assert view.size == (24, 24) and np.array_equal(got, expected.numpy())
    back = at_image_size(got, width, height, "crop", 24)
    new_w, new_h, left, top = crop_box(width, height, 24)
    assert back.shape == (height, width)
    if (new_w, new_h) == (width, height):  # no resize: the crop goes back exactly in place
        assert np.array_equal(back[top:top + 24, left:left + 24], got)
        assert (np.delete(back, np.s_[top:top + 24], axis=0) == 255).all()


# -- evaluate from the run ------------------------------------------------------------------------
def _ok(result):
    assert result.returncode == 0, result.stderr
    return result


@pytest.mark.slow
def test_evaluate_without_options_reproduces_the_run(base_run, toy_root, run_cli, tmp_path):
    r = _ok(run_cli("evaluate", base_run, "--data", toy_root, "--json", "--workers", "0"))
    printed = json.loads(r.stdout)
    saved = json.loads((base_run / "metrics.json").read_text())
    for key in SCORED:
        assert printed[key] == saved[key], key
    assert saved["protocol"]["val_set"] == "seen" and saved["protocol"]["size"] == 32
    assert printed["evaluation"]["differs_from_run"] == {}
    # no warning but those of the classes the 2-epoch run never predicts (one per class)
    warnings = [line for line in r.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == len(printed["unlearned"]) == len(printed["warnings"])
    assert all("not learned" in line for line in warnings)
    # the run's val set: the 24 toy val images minus those without a class of 1..10
    manifest = json.loads((base_run / "manifest.json").read_text())
    assert manifest["options"]["val_set"] == "seen"
    assert manifest["val_images"] == printed["protocol"]["images"] < 24


@pytest.mark.slow
def test_evaluate_warns_and_records_a_value_that_differs(base_run, toy_root, run_cli):
    r = _ok(run_cli("evaluate", base_run, "--data", toy_root, "--eval-size", "48", "--val-set", "all", "--json",
                    "--workers", "0"))
    printed = json.loads(r.stdout)
    assert printed["evaluation"]["differs_from_run"] == {"eval_size": {"run": 32, "used": 48},
                                                         "val_set": {"run": "seen", "used": "all"}}
    assert printed["protocol"]["size"] == 48 and printed["protocol"]["images"] == 24
    assert "warning: --eval-size 48 differs from the run's 32" in r.stderr
    assert "warning: --val-set all differs from the run's seen" in r.stderr


@pytest.mark.slow
def test_bare_checkpoint_uses_the_documented_defaults(base_run, toy_root, run_cli, tmp_path):
    bare = tmp_path / "bare.pt"
    shutil.copy(base_run / "checkpoint.pt", bare)
    r = _ok(run_cli("evaluate", bare, "--data", toy_root, "--eval-size", "32", "--json", "--workers", "0"))
    printed = json.loads(r.stdout)
    assert printed["evaluation"]["settings_from"].startswith("defaults (no manifest.json beside")
    assert printed["protocol"] == {**json.loads((base_run / "metrics.json").read_text())["protocol"]}
    assert "no run manifest beside it" in r.stderr and "--eval-protocol crop" in r.stderr


def test_evaluate_usage_errors(tmp_path):
    # refused before the checkpoint is read: one line, exit 2
    code, err = _main("evaluate", tmp_path / "run", "--data", tmp_path, "--val-set", "some")
    assert code == 2 and "'--val-set': 'some' is not one of 'seen', 'all'. (see incseg evaluate --help)" in error_line(err, only=True)
    code, err = _main("evaluate", tmp_path / "run", "--data", tmp_path, "--overlay")
    assert code == 2 and "--save-predictions" in error_line(err, only=True)


def _main(*args):
    """The CLI in this process (no interpreter start): (exit code, stderr)."""
    import contextlib
    import io

    from incseg_cli.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), pytest.raises(SystemExit) as exit_:
        main([str(a) for a in args])
    return exit_.value.code, err.getvalue()


@pytest.mark.slow
def test_save_predictions_are_voc_palette_pngs(base_run, toy_root, run_cli, tmp_path):
    out = tmp_path / "preds"
    r = _ok(run_cli("evaluate", base_run, "--data", toy_root, "--workers", "0", "--save-predictions", out,
                    "--overlay", "--json"))
    images = json.loads(r.stdout)["protocol"]["images"]
    pngs = sorted(out.glob("*.png"))
    assert len(pngs) == images and len(list((out / "overlays").glob("*.jpg"))) == images
    with Image.open(pngs[0]) as img:
        assert img.mode == "P" and img.size == (32, 32)  # the toy images are 32 px squares
        assert np.array_equal(np.array(img.getpalette()[:768], dtype=np.uint8).reshape(256, 3), PALETTE)
        labels = np.array(img)
    assert set(np.unique(labels)) <= set(range(11))  # label ids of the step-0 classes
    scores = (out / "scores.tsv").read_text().splitlines()
    assert scores[0] == "image_id\tmiou" and len(scores) == images + 1
    assert all(0 <= float(line.split("\t")[1]) <= 1 for line in scores[1:])
