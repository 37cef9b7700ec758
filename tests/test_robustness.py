"""Bad input everywhere: one clear line, a documented exit code, no traceback, no output."""

import random
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import TOY_TRAIN_ARGS, error_line

pytestmark = pytest.mark.slow


@pytest.fixture
def data_copy(toy_root, tmp_path):
    root = tmp_path / "toy"
    shutil.copytree(toy_root, root)
    return root


def _train_ids(toy_root):
    return (toy_root.parent / "splits" / "voc" / "10-10-ov" / "train-0.txt").read_text().split()


def _rewrite_mask(path, change):
    img = Image.open(path)
    mask = np.array(img)
    mask = change(mask)
    out = Image.fromarray(mask.astype(np.uint8), "P")
    out.putpalette(img.getpalette())
    out.save(path)


def _train(cli, root, out, splits, *extra):
    """train-base in this process (the exit code and the error line as the command gives them)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("INCSEG_SPLITS", splits)
        return cli("train-base", "--data", root, "--task", "10-10-ov", *TOY_TRAIN_ARGS, "--epochs", "1",
                   "--out", out, *extra)


@pytest.mark.parametrize("problem", ["value", "size", "jpeg", "png"])
def test_bad_training_files(problem, toy_root, toy_env, data_copy, cli, tmp_path):
    image_id = _train_ids(toy_root)[0]
    mask = data_copy / "SegmentationClassAug" / f"{image_id}.png"
    image = data_copy / "JPEGImages" / f"{image_id}.jpg"
    if problem == "value":
        _rewrite_mask(mask, lambda m: np.where(m == 0, 77, m))
    elif problem == "size":
        _rewrite_mask(mask, lambda m: np.pad(m, ((0, 3), (0, 0))))
    elif problem == "jpeg":
        image.write_bytes(image.read_bytes()[:40])
    else:
        mask.write_bytes(b"\x89PNG not really")
    out = tmp_path / "run"
    r = _train(cli, data_copy, out, toy_env["INCSEG_SPLITS"])
    line = error_line(r.stderr)
    assert r.returncode == 3 and image_id in line
    assert not out.exists()  # nothing half-written


def test_empty_split_and_missing_image(toy_root, cli, tmp_path):
    splits = tmp_path / "splits"
    shutil.copytree(toy_root.parent / "splits", splits)
    split = splits / "voc" / "10-10-ov" / "train-0.txt"
    split.write_text("")
    r = _train(cli, toy_root, tmp_path / "o1", str(splits))
    assert r.returncode == 3 and "empty" in error_line(r.stderr)
    split.write_text("no_such_image\n")
    r = _train(cli, toy_root, tmp_path / "o2", str(splits))
    assert r.returncode == 3 and "no_such_image" in error_line(r.stderr)
    assert not (tmp_path / "o1").exists() and not (tmp_path / "o2").exists()


def test_unsafe_checkpoint_is_refused(base_run, toy_root, run_cli, tmp_path):
    class Payload:
        def __reduce__(self):
            return (print, ("this must never run",))

    evil = tmp_path / "evil.pt"
    ckpt = torch.load(base_run / "checkpoint.pt", weights_only=True)
    ckpt["extra"] = {"x": Payload()}
    torch.save(ckpt, evil)
    r = run_cli("evaluate", evil, "--data", toy_root, "--eval-size", "32")
    assert r.returncode == 5 and "arbitrary objects" in error_line(r.stderr)
    assert "this must never run" not in r.stdout + r.stderr


def test_step_beyond_task(base_run, toy_root, toy_env, cli, monkeypatch):
    monkeypatch.setenv("INCSEG_SPLITS", toy_env["INCSEG_SPLITS"])
    r = cli("train-step", "--prev", base_run, "--data", toy_root, "--method", "ft", "--step", "2", *TOY_TRAIN_ARGS)
    assert r.returncode == 2 and "--step 2" in error_line(r.stderr)


def test_fuzz_corrupted_checkpoints(base_run, toy_root, cli, tmp_path):
    """Random truncations and byte flips: evaluate may succeed or fail, never crash (the CLI
    in this process: a subprocess per file would spend the test importing torch)."""
    data = (base_run / "checkpoint.pt").read_bytes()
    rng = random.Random(0)
    codes = set()
    for i in range(8):
        blob = bytearray(data)
        if i % 2 == 0:
            blob = blob[: rng.randrange(1, len(blob))]
        else:
            for _ in range(rng.randrange(1, 20)):
                pos = rng.randrange(len(blob))
                blob[pos] = rng.randrange(256)
        path = tmp_path / f"fuzz{i}.pt"
        path.write_bytes(bytes(blob))
        r = cli("evaluate", path, "--data", toy_root, "--eval-size", "32", "--workers", "0")
        codes.add(r.returncode)
        if r.returncode != 0:
            assert r.returncode in (3, 4, 5), r.stderr
            error_line(r.stderr)
    assert codes - {0}, "no corruption was detected at all"


def test_fuzz_corrupted_masks(base_run, data_copy, run_cli, tmp_path):
    """Random damage to val masks: evaluate either copes or names the file, never crashes."""
    rng = random.Random(1)
    val_ids = (data_copy / "ImageSets" / "Segmentation" / "val.txt").read_text().split()
    for image_id in rng.sample(val_ids, 6):
        path = data_copy / "SegmentationClassAug" / f"{image_id}.png"
        blob = bytearray(path.read_bytes())
        kind = rng.randrange(3)
        if kind == 0:
            blob = blob[: rng.randrange(8, len(blob))]
        elif kind == 1:
            for _ in range(5):
                blob[rng.randrange(len(blob))] = rng.randrange(256)
        else:
            _rewrite_mask(path, lambda m: np.where(m == 255, rng.randrange(21, 255), m))
            continue
        path.write_bytes(bytes(blob))
    out = tmp_path / "eval.json"
    r = run_cli("evaluate", base_run, "--data", data_copy, "--eval-size", "32", "--workers", "0", "--out", out)
    assert r.returncode == 3, r.stderr
    assert "SegmentationClassAug" in error_line(r.stderr)
    assert not out.exists()
