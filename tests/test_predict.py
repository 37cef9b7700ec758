"""incseg predict: masks of a finished run for one's own images (README: Python API)."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from incseg_cli import datasets

pytestmark = pytest.mark.slow


def _main(*args, env: dict | None = None):
    """The CLI in this process (no interpreter start): (exit code, stdout, stderr)."""
    from incseg_cli.cli import main

    out, err = io.StringIO(), io.StringIO()
    old = {k: os.environ.get(k) for k in (env or {})}
    os.environ.update(env or {})
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), pytest.raises(SystemExit) as exit_:
            main([str(a) for a in args])
    finally:
        for k, v in old.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
    return exit_.value.code, out.getvalue(), err.getvalue()


def _ok(*args, **kwargs):
    code, out, err = _main(*args, **kwargs)
    assert code == 0, err
    return out, err


def mixed_folder(root: Path) -> dict[str, tuple[int, int]]:
    """Images of several sizes and formats (one in a subfolder); name -> (width, height)."""
    rng = np.random.default_rng(0)
    (root / "sub").mkdir(parents=True)
    Image.fromarray(rng.integers(0, 256, (40, 56, 3), dtype=np.uint8)).save(root / "photo.jpg", quality=90)
    Image.fromarray(rng.integers(0, 256, (33, 20, 3), dtype=np.uint8)).save(root / "tall.png")
    Image.fromarray(rng.integers(0, 256, (50, 50), dtype=np.uint8), "L").save(root / "sub" / "gray.png")
    Image.fromarray(rng.integers(0, 256, (24, 70, 4), dtype=np.uint8), "RGBA").save(root / "sub" / "rgba.png")
    Image.fromarray(rng.integers(0, 65536, (30, 30), dtype=np.uint16)).save(root / "wide16.png")
    (root / "notes.txt").write_text("not an image\n")  # in a folder: skipped, not read as a list
    return {"photo": (56, 40), "tall": (20, 33), "sub/gray": (50, 50), "sub/rgba": (70, 24), "wide16": (30, 30)}


def test_mixed_folder_masks_at_each_size(base_run, tmp_path):
    sizes = mixed_folder(tmp_path / "images")
    voc = datasets.get("voc")
    for protocol in ("crop", "full"):
        out = tmp_path / f"masks-{protocol}"
        stdout, _ = _ok("predict", base_run, tmp_path / "images", "--out", out, "--workers", "0", "--overlay",
                        "--eval-protocol", protocol, "--json")
        record = json.loads(stdout)
        assert record["status"] == "complete" and record["predicted"] == 5 and record["protocol"]["name"] == protocol
        classes = {int(k) for k in record["classes"]}
        assert classes == set(range(11))  # toy 10-10-ov step 0: background and classes 1-10
        areas = json.loads((out / "areas.json").read_text())
        for name, size in sizes.items():
            mask = Image.open(out / f"{name}.png")
            assert mask.size == size and mask.mode == "P"
            assert mask.getpalette()[:48] == voc.palette[:16].ravel().tolist()
            values = set(np.unique(np.array(mask)).tolist())
            assert values <= classes | {255}
            # full predicts every pixel; crop leaves the pixels outside its centre crop void
            assert (255 in values) == (protocol == "crop" and size[0] != size[1])
            assert Image.open(out / "overlays" / f"{name}.jpg").size == size
        rows = {row["mask"]: row for row in areas["images"]}
        assert sorted(rows) == sorted(f"{n}.png" for n in sizes)
        for row in rows.values():
            counts = np.bincount(np.array(Image.open(out / row["mask"])).ravel(), minlength=256)
            assert {n: a["pixels"] for n, a in row["areas"].items()} == {
                record["classes"][str(i)]: int(counts[i]) for i in range(11)}
            assert row["void"]["pixels"] == counts[255]
            total = sum(a["fraction"] for a in row["areas"].values()) + row["void"]["fraction"]
            assert total == pytest.approx(1.0, abs=1e-4)
        with open(out / "areas.csv") as fh:
            table = list(csv.DictReader(fh))
        assert len(table) == 5 and int(table[0]["background pixels"]) == rows[table[0]["mask"]]["areas"]["background"]["pixels"]


def test_val_masks_equal_evaluate_save_predictions(base_run, toy_root, toy_env, tmp_path):
    evaluated = tmp_path / "evaluated"
    _ok("evaluate", base_run, "--data", toy_root, "--workers", "0", "--save-predictions", evaluated, env=toy_env)
    written = sorted(evaluated.glob("*.png"))
    assert len(written) >= 5
    # the val images by a list file (paths relative to it), as a user would give them
    listing = tmp_path / "val.txt"
    listing.write_text("".join(f"{os.path.relpath(toy_root / 'JPEGImages' / (p.stem + '.jpg'), tmp_path)}\n"
                               for p in written))
    predicted = tmp_path / "predicted"
    _ok("predict", base_run, listing, "--out", predicted, "--workers", "0", "--batch-size", "3")
    for path in written:
        theirs, ours = Image.open(path), Image.open(predicted / path.name)
        assert np.array_equal(np.array(theirs), np.array(ours)), path.name
        assert theirs.getpalette() == ours.getpalette()


def test_rerun_skips_written_images_and_refuses_other_settings(base_run, tmp_path):
    images = tmp_path / "images"
    mixed_folder(images)
    out = tmp_path / "masks"
    _ok("predict", base_run, images, "--out", out, "--workers", "0")
    before = {p.name: p.stat().st_mtime_ns for p in out.glob("*.png")}
    gone = out / "tall.png"
    gone.unlink()  # as if interrupted before this image
    areas_before = json.loads((out / "areas.json").read_text())
    stdout, err = _ok("predict", base_run, images, "--out", out, "--workers", "0", "--json")
    record = json.loads(stdout)
    assert record["predicted"] == 1 and record["skipped"] == 4
    after = {p.name: p.stat().st_mtime_ns for p in out.glob("*.png")}
    assert {k: v for k, v in after.items() if k != "tall.png"} == {k: v for k, v in before.items() if k != "tall.png"}
    assert json.loads((out / "areas.json").read_text()) == areas_before  # skipped images' areas read back
    # other settings into the same folder: refused, nothing written; --force predicts again
    code, _, err = _main("predict", base_run, images, "--out", out, "--workers", "0", "--eval-protocol", "full")
    assert code == 6 and "--force" in err.strip().splitlines()[-1]
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.png")} == after
    stdout, _ = _ok("predict", base_run, images, "--out", out, "--workers", "0", "--eval-protocol", "full",
                    "--force", "--json")
    assert json.loads(stdout)["predicted"] == 5


def test_refuses_unfinished_run_and_bad_inputs_before_writing(base_run, tmp_path):
    images = tmp_path / "images"
    mixed_folder(images)
    out = tmp_path / "masks"
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    shutil.copy(base_run / "manifest.json", unfinished / "manifest.json")
    code, _, err = _main("predict", unfinished, images, "--out", out)
    assert code == 3 and "no checkpoint.pt" in err
    shutil.copy(base_run / "checkpoint.pt", unfinished / "checkpoint.pt")
    manifest = json.loads((unfinished / "manifest.json").read_text())
    (unfinished / "manifest.json").write_text(json.dumps({**manifest, "status": "running"}))
    code, _, err = _main("predict", unfinished, images, "--out", out)
    assert code == 4 and "not complete" in err
    (images / "broken.jpg").write_bytes(b"not a jpeg")
    code, _, err = _main("predict", base_run, images, "--out", out)
    assert code == 3 and "broken.jpg" in err
    (images / "broken.jpg").unlink()
    (images / "photo.png").write_bytes((images / "tall.png").read_bytes())
    code, _, err = _main("predict", base_run, images, "--out", out)
    assert code == 2 and "photo.png" in err
    (images / "photo.png").unlink()
    code, _, err = _main("predict", base_run, images, "--out", images / "masks")
    assert code == 2 and "inside the input folder" in err
    code, _, err = _main("predict", base_run, images, "--out", base_run)
    assert code == 2
    assert not out.exists() and not (images / "masks").exists()
    assert sorted(p.name for p in base_run.iterdir() if p.suffix == ".png") == []


def test_api_predict_matches_the_command(base_run, tmp_path):
    from incseg_cli import load_model

    images = tmp_path / "images"
    sizes = mixed_folder(images)
    out = tmp_path / "masks"
    _ok("predict", base_run, images, "--out", out, "--workers", "0")
    model = load_model(base_run, device="cpu")
    assert model.classes == {i: datasets.get("voc").class_names[i] for i in range(11)}
    paths = [next(images.glob(f"{name}.*")) for name in sizes]
    arrays = [np.array(Image.open(p)) for p in paths]  # RGB, gray, RGBA and 16-bit arrays
    for given in (paths, [Image.open(p) for p in paths], arrays):
        masks = model.predict(given, batch_size=2)
        for name, mask in zip(sizes, masks):
            assert mask.dtype == np.uint8
            assert np.array_equal(mask, np.array(Image.open(out / f"{name}.png"))), name


def test_an_image_that_fails_in_a_worker_ends_the_command(base_run, run_cli, tmp_path):
    """A file whose header reads but whose data is cut off fails inside a loader worker: one
    line and exit 3, never a hang at exit (the workers ignore SIGTERM), and predict.json says
    the run failed."""
    folder = tmp_path / "in"
    folder.mkdir()
    whole = tmp_path / "whole.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(whole)
    (folder / "cut.png").write_bytes(whole.read_bytes()[:300])
    out = tmp_path / "masks"
    r = run_cli("predict", base_run, folder, "--out", out, "--workers", "1", timeout=90)
    assert r.returncode == 3, r.stderr
    assert "cut.png: unreadable image" in r.stderr.strip().splitlines()[-1] and "Traceback" not in r.stderr
    record = json.loads((out / "predict.json").read_text())
    assert record["status"] == "failed" and "cut.png" in record["error"]
