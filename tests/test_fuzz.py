"""Random corruption of every file a stage reads: one error line, never a crash.

Checkpoints, ``last.pt``, banks, images, masks, split files and ``task.json`` are damaged at
random (seeded: truncation, bit flips aimed at the tensor data, random bytes) and given to
the CLI, called in-process through ``incseg_cli.cli.main``. Every case must end with exit 0
or a documented user-error code and one ``error:`` line, never exit 70 and never an
exception out of ``main``; a checkpoint or bank whose content changed must never load with
exit 0 (the payload checksum of torch files and the file checksum in a bank's HDF5 user block
see every flipped bit).
"""

from __future__ import annotations

import random
import shutil
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import TOY_TRAIN_ARGS, error_line
from incseg_cli.engine.checkpoint import CHECKSUM_KEY, payload_sha256
from incseg_cli.engine.trainer import Trainer
from incseg_cli.errors import Interrupted
from incseg_cli.bank import BankWriter, read_bank

pytestmark = pytest.mark.slow

USER_ERRORS = {2, 3, 4, 5}


@pytest.fixture
def cli(cli):
    """``cli(*args) -> (exit code, stdout, stderr)`` of the in-process CLI (conftest)."""
    def run(*args: object) -> tuple[int, str, str]:
        done = cli(*args)
        return done.returncode, done.stdout, done.stderr

    return run


def _refused(code: int, err: str, name: str) -> str:
    """The case ended with a user-error code and one ``error:`` line naming ``name``."""
    assert code in USER_ERRORS, (code, err)
    line = error_line(err)
    assert name in line, line
    return line


def tensor_regions(path: Path) -> list[tuple[int, int]]:
    """(offset, size) of every tensor record's bytes in a torch zip file (stored, not
    compressed, so a flip there changes exactly one tensor value)."""
    regions = []
    with zipfile.ZipFile(path) as archive, open(path, "rb") as fh:
        for info in archive.infolist():
            if "/data/" not in info.filename or info.file_size == 0:
                continue
            fh.seek(info.header_offset)
            name_len, extra_len = struct.unpack("<HH", fh.read(30)[26:30])
            regions.append((info.header_offset + 30 + name_len + extra_len, info.file_size))
    return regions


def flip_tensor_bit(blob: bytes, regions: list[tuple[int, int]], rng: random.Random) -> bytes:
    start, size = rng.choice(regions)
    out = bytearray(blob)
    out[start + rng.randrange(size)] ^= 1 << rng.randrange(8)
    return bytes(out)


def damage(blob: bytes, rng: random.Random, kind: str) -> bytes:
    """``truncate``: cut at a random point; ``bytes``: 1-20 random bytes overwritten."""
    if kind == "truncate":
        return blob[: rng.randrange(0, len(blob))]
    out = bytearray(blob)
    for _ in range(rng.randrange(1, 21)):
        out[rng.randrange(len(out))] = rng.randrange(256)
    return bytes(out)


def same_payload(original: Path, damaged: Path) -> bool:
    """Whether ``damaged`` still holds exactly what ``original`` holds (damage that only
    hit bytes torch never reads, e.g. the zip's alignment padding)."""
    try:
        a = torch.load(original, weights_only=True)
        b = torch.load(damaged, weights_only=True)
    except Exception:  # noqa: BLE001 - not loadable: certainly not the same payload
        return False
    return payload_sha256(a) == payload_sha256(b)


# -- checkpoints ---------------------------------------------------------------------------
def test_fuzz_checkpoints(base_run, toy_root, cli, tmp_path):
    """20 damaged checkpoints given to evaluate: 12 with one bit flipped in the tensor data
    (each must be refused by the checksum), 4 truncated, 4 with random bytes."""
    source = base_run / "checkpoint.pt"
    blob = source.read_bytes()
    regions = tensor_regions(source)
    rng = random.Random(0)
    kinds = ["flip"] * 12 + ["truncate"] * 4 + ["bytes"] * 4
    for i, kind in enumerate(kinds):
        path = tmp_path / f"ckpt{i}-{kind}.pt"
        path.write_bytes(flip_tensor_bit(blob, regions, rng) if kind == "flip" else damage(blob, rng, kind))
        code, _, err = cli("evaluate", path, "--data", toy_root, "--eval-size", "32", "--workers", "0")
        if kind == "flip":
            assert code == 5 and "checksum mismatch" in _refused(code, err, path.name), err
        elif code == 0:
            assert same_payload(source, path), f"{path.name}: damaged content evaluated with exit 0"
        else:
            _refused(code, err, path.name)


def test_checkpoint_without_checksum_loads_with_a_note(base_run, toy_root, cli, tmp_path):
    obj = torch.load(base_run / "checkpoint.pt", weights_only=True)
    del obj["header"][CHECKSUM_KEY]
    obj["header"]["version"] = 1  # as an older incseg wrote it: format 2 always carries one (test_checksums)
    old = tmp_path / "old.pt"
    torch.save(obj, old)
    code, _, err = cli("evaluate", old, "--data", toy_root, "--eval-size", "32", "--workers", "0")
    assert code == 0, err
    notes = [line for line in err.splitlines() if "without a checksum" in line]
    assert len(notes) == 1 and "old.pt" in notes[0]


@pytest.fixture
def interrupted_run(toy_root, toy_env, cli, tmp_path, monkeypatch):
    """A train-base run stopped after its first epoch: ``(out, command args)``; its
    ``last.pt`` is the one the trainer wrote."""
    for key, value in toy_env.items():
        monkeypatch.setenv(key, value)
    out = tmp_path / "run"
    args = ["train-base", "--data", toy_root, "--task", "10-10-ov", *TOY_TRAIN_ARGS, "--epochs", "2",
            "--out", out]
    save_last = Trainer.save_last

    def save_then_stop(trainer: Trainer) -> None:
        save_last(trainer)
        raise Interrupted("stopped by the test after writing last.pt")

    with monkeypatch.context() as patch:
        patch.setattr(Trainer, "save_last", save_then_stop)
        code, _, err = cli(*args)
    assert code == 130 and (out / "last.pt").is_file(), err
    return out, args


def test_fuzz_last_pt(interrupted_run, cli):
    """A flipped bit in last.pt's tensors stops the resume with exit 5 naming the file; 12
    more damaged copies given to inspect are each refused (or identical in content)."""
    out, args = interrupted_run
    last = out / "last.pt"
    blob = last.read_bytes()
    regions = tensor_regions(last)
    rng = random.Random(1)
    last.write_bytes(flip_tensor_bit(blob, regions, rng))
    code, _, err = cli(*args)
    assert code == 5 and "checksum mismatch" in _refused(code, err, "last.pt")
    assert not (out / "checkpoint.pt").exists()
    for i, kind in enumerate(["flip"] * 6 + ["truncate"] * 3 + ["bytes"] * 3):
        path = out.parent / f"last{i}-{kind}.pt"
        path.write_bytes(flip_tensor_bit(blob, regions, rng) if kind == "flip" else damage(blob, rng, kind))
        code, _, err = cli("inspect", path)
        if kind == "flip":
            assert code == 5 and "checksum mismatch" in _refused(code, err, path.name)
        elif code == 0:
            original = out.parent / "last-original.pt"
            original.write_bytes(blob)
            assert same_payload(original, path), f"{path.name}: damaged resume state passed inspect"
        else:
            _refused(code, err, path.name)
    last.write_bytes(blob)  # intact again: the run resumes and finishes
    code, _, err = cli(*args)
    assert code == 0, err


# -- banks ---------------------------------------------------------------------------------
def _bank_content(path: Path) -> tuple:
    bank = read_bank(path)
    attrs = sorted((k, repr(v)) for k, v in bank.attrs.items())
    return attrs, [(c, e.name, e.source, e.step, e.features.tobytes()) for c, e in bank.classes.items()]


def test_fuzz_banks(cli, tmp_path):
    """A dozen damaged banks given to inspect: every flipped bit, anywhere in the file, is a
    checksum error (exit 5 naming the file), and nothing damaged passes with another content."""
    path = tmp_path / "bank.h5"
    rng_np = np.random.default_rng(0)
    attrs = {"feature_dim": 16, "step": 0, "dataset": "voc", "task": "10-10-ov",
             "source_checkpoint_sha256": "ab" * 32, "space": "step 0 features"}
    with BankWriter(path, attrs, chunk_rows=32) as writer:
        for label in (0, 3, 5):
            writer.add(label, rng_np.random((40, 16), dtype=np.float32), f"class {label}", "extracted", 0)
    reference = _bank_content(path)
    blob = path.read_bytes()
    code, out, err = cli("inspect", path, "--json")
    assert code == 0 and '"checksum": "ok"' in out, err
    rng = random.Random(2)
    for i, kind in enumerate(["flip"] * 6 + ["truncate"] * 3 + ["bytes"] * 3):
        damaged = tmp_path / f"bank{i}-{kind}.h5"
        damaged.write_bytes(flip_tensor_bit(blob, [(0, len(blob))], rng) if kind == "flip" else damage(blob, rng, kind))
        code, _, err = cli("inspect", damaged)
        if kind == "flip":
            _refused(code, err, damaged.name)
            assert code == 5
        elif code == 0:
            assert _bank_content(damaged) == reference, f"{damaged.name}: damaged bank passed inspect"
        else:
            _refused(code, err, damaged.name)


def test_bank_without_checksums_loads_with_a_note(cli, tmp_path):
    """A bank of an older incseg (no fletcher32, no content checksum) still loads."""
    import h5py

    path = tmp_path / "old.h5"
    with h5py.File(path, "w") as f:
        f.attrs.update(format="incseg-feature-bank", version=1, feature_dim=4, step=0, dataset="voc",
                       task="10-10-ov", source_checkpoint_sha256="cd" * 32, space="step 0 features",
                       classes=np.asarray([0], dtype=np.int64))
        group = f.create_group("classes/0")
        group.create_dataset("features", data=np.ones((3, 4), np.float32), compression="gzip")
        group.attrs.update(name="background", count=3, source="extracted", step=0)
    code, _, err = cli("inspect", path)
    assert code == 0, err
    assert sum("without checksums" in line for line in err.splitlines()) == 1


@pytest.mark.parametrize("problem", ["classes-dataset", "features-group", "classes-attr-string"])
def test_bank_of_the_wrong_shape(problem, cli, tmp_path):
    """Structures h5py opens fine but that are not a bank: one line, exit 5."""
    import h5py

    path = tmp_path / "odd.h5"
    with h5py.File(path, "w") as f:
        f.attrs.update(format="incseg-feature-bank", version=1, feature_dim=4, step=0, dataset="voc",
                       task="10-10-ov", source_checkpoint_sha256="cd" * 32, space="step 0 features",
                       classes=np.asarray([0], dtype=np.int64))
        if problem == "classes-dataset":
            f.create_dataset("classes", data=np.zeros(3))
        elif problem == "features-group":
            f.create_group("classes/0/features")
            f["classes/0"].attrs.update(name="background", count=3, source="extracted", step=0)
        else:
            f.attrs["classes"] = "0,1"
            f.create_group("classes/0").create_dataset("features", data=np.ones((3, 4), np.float32))
    code, _, err = cli("inspect", path)
    assert code == 5 and "odd.h5" in error_line(err)


# -- images, masks, splits and task.json ---------------------------------------------------------
@pytest.fixture
def data_copy(toy_root, tmp_path):
    root = tmp_path / "toy"
    shutil.copytree(toy_root, root)
    splits = tmp_path / "splits"
    shutil.copytree(toy_root.parent / "splits", splits)
    return root, splits


def test_fuzz_images_and_masks(base_run, data_copy, cli):
    """Damaged val images and masks: evaluate either copes (a JPEG has no checksum) or names
    the damaged file with exit 3; never an internal error."""
    root, _ = data_copy
    val_ids = (root / "ImageSets" / "Segmentation" / "val.txt").read_text().split()
    rng = random.Random(3)
    for case in range(10):
        image_id = rng.choice(val_ids)
        target = root / ("JPEGImages" if case % 2 else "SegmentationClassAug") / \
            f"{image_id}.{'jpg' if case % 2 else 'png'}"
        original = target.read_bytes()
        target.write_bytes(damage(original, rng, ("truncate", "bytes")[case % 3 == 0]))
        code, _, err = cli("evaluate", base_run, "--data", root, "--eval-size", "32", "--workers", "0")
        if code != 0:
            assert code == 3, err
            _refused(code, err, image_id)
        target.write_bytes(original)


def test_16_bit_png_image_and_mask(base_run, data_copy, cli):
    """A 16-bit grayscale image is scaled to 8 bits (not turned white); a 16-bit mask with a
    value above 255 is refused naming the file."""
    from incseg_cli.datasets.layout import read_rgb

    root, _ = data_copy
    ramp = (np.arange(32 * 32, dtype=np.uint32).reshape(32, 32) * 64).astype(np.uint16)
    gray16 = root / "gray16.png"
    Image.fromarray(ramp).save(gray16)
    assert Image.open(gray16).mode.startswith("I")
    rgb = np.asarray(read_rgb(gray16))
    assert rgb.dtype == np.uint8 and rgb.shape == (32, 32, 3)
    assert np.array_equal(rgb[..., 0], np.round(ramp / 257).astype(np.uint8))
    val_id = (root / "ImageSets" / "Segmentation" / "val.txt").read_text().split()[0]
    mask = root / "SegmentationClassAug" / f"{val_id}.png"
    labels = np.array(Image.open(mask)).astype(np.uint16)
    labels[0, 0] = 300
    Image.fromarray(labels).save(mask)
    code, _, err = cli("evaluate", base_run, "--data", root, "--eval-size", "32", "--workers", "0")
    line = _refused(code, err, f"{val_id}.png")
    assert code == 3 and "300" in line


def test_fuzz_split_files_and_task_json(data_copy, cli):
    """Damaged split files and task.json: train-base stops before training with one line
    naming the file (exit 3 or 4), or trains when the damage left a valid list."""
    root, splits = data_copy
    task_dir = splits / "voc" / "10-10-ov"
    rng = random.Random(4)
    kinds = ["truncate", "bytes", "bytes", "truncate", "random", "bytes", "random", "truncate"]
    for case, kind in enumerate(kinds):
        target = task_dir / ("task.json" if case % 2 else "train-0.txt")
        original = target.read_bytes()
        target.write_bytes(rng.randbytes(300) if kind == "random" else damage(original, rng, kind))
        out = root.parent / f"out{case}"
        code, _, err = cli("train-base", "--data", root, "--task", "10-10-ov", "--splits", splits, *TOY_TRAIN_ARGS,
                           "--epochs", "1", "--out", out)
        if code != 0:
            _refused(code, err, target.name)
            assert code in (3, 4) and not out.exists()
        target.write_bytes(original)


# -- item 7 of the reliability issue: input that used to reach exit 70 ---------------------------------
@pytest.mark.parametrize("extra, flag", [
    (["--momentum", "-1", "--optimizer", "sgd"], "--momentum"),
    (["--seed", str(2**70)], "--seed"),
    (["--head-channels", "-3"], "--head-channels"),
    (["--head-channels", "0"], "--head-channels"),
    (["--output-stride", "0"], "--output-stride"),
    (["--val-interval", "-1"], "--val-interval"),
    (["--lr", "nan"], "--lr"),
])
def test_out_of_range_training_options(extra, flag, toy_root, toy_env, cli, tmp_path, monkeypatch):
    for key, value in toy_env.items():
        monkeypatch.setenv(key, value)
    out = tmp_path / "run"
    code, _, err = cli("train-base", "--data", toy_root, "--task", "10-10-ov", *TOY_TRAIN_ARGS, "--epochs", "1",
                       "--out", out, *extra)
    assert code == 2 and flag in error_line(err, only=True)
    assert not out.exists()


@pytest.mark.parametrize("extra, flag", [(["--batch-size", "0"], "--batch-size"), (["--workers", "-1"], "--workers")])
def test_out_of_range_evaluate_options(extra, flag, base_run, toy_root, cli):
    code, _, err = cli("evaluate", base_run, "--data", toy_root, *extra)
    assert code == 2 and flag in error_line(err, only=True)


def test_negative_method_option(base_run, toy_root, toy_env, cli, tmp_path, monkeypatch):
    for key, value in toy_env.items():
        monkeypatch.setenv(key, value)
    code, _, err = cli("train-step", "--prev", base_run, "--data", toy_root, "--method", "alife",
                       "--lambda-ali", "-5", *TOY_TRAIN_ARGS, "--out", tmp_path / "s1")
    assert code == 2 and "--lambda-ali" in error_line(err, only=True)


@pytest.mark.parametrize("field, value", [("aspp_rates", "6,12,18"), ("head_channels", "64"),
                                          ("output_stride", 0), ("head_sizes", [11.5])])
def test_damaged_model_spec_in_header(field, value, base_run, toy_root, cli, tmp_path):
    """A header edited by hand (checksum resealed, so only the header check can catch it)."""
    from incseg_cli.engine.checkpoint import seal

    obj = torch.load(base_run / "checkpoint.pt", weights_only=True)
    obj["header"]["model"][field] = value
    path = tmp_path / "edited.pt"
    torch.save(seal(obj, "header"), path)
    code, _, err = cli("evaluate", path, "--data", toy_root, "--eval-size", "32", "--workers", "0")
    assert code == 5 and "damaged checkpoint header" in _refused(code, err, "edited.pt")
    assert field in error_line(err)


@pytest.mark.parametrize("kind", ["random", "bare-pickle", "json", "hdf5"])
def test_files_that_are_not_torch_files(kind, cli, tmp_path):
    """Named for what they are; no torch warning before the error line."""
    import pickle

    path = tmp_path / ("file.json" if kind == "json" else "file.pt")
    if kind == "random":
        path.write_bytes(random.Random(5).randbytes(4096))
        expected = "not a torch file"
    elif kind == "bare-pickle":
        path.write_bytes(pickle.dumps({"weights": [1.0, 2.0]}, protocol=4))
        expected = "bare Python pickle"
    elif kind == "json":
        path.write_text('{"status": "complete"}\n')
        expected = "JSON document"
    else:
        import h5py

        with h5py.File(path, "w") as f:
            f.attrs["x"] = 1
        expected = None  # inspect reads HDF5 itself: not a bank
    code, _, err = cli("inspect", path)
    line = error_line(err, only=True)
    assert code == 5 and path.name in line
    if expected:
        assert expected in line and "arbitrary objects" not in line
