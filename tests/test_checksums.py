"""Checksums that the damage they detect cannot switch off (issue 19, item 3).

A file without a checksum loads only when its header says it was written before checksums
existed (format version 1, or a ``last.pt`` without a version); a header that says it is
sealed and has no checksum, a checksum field whose name is damaged, or a header whose bytes
changed at all (the zip record's CRC-32, which torch never checks) is a corrupt file: exit 5.
"""

from __future__ import annotations

import contextlib
import io
import struct
import zipfile
from pathlib import Path

import pytest
import torch

from helpers import error_line
from incseg_cli import torchfile
from incseg_cli.engine.checkpoint import (
    CHECKSUM_KEY, SEALED_SINCE, load_checkpoint, load_sealed, make_header, payload_sha256, save_sealed, seal,
)
from incseg_cli.errors import CorruptFileError
from incseg_cli.fileio import torch_save
from incseg_cli.models.deeplab import ModelSpec
from incseg_cli.tasks import get_task


def _header() -> dict:
    task = get_task("voc", "15-5")
    return make_header(task, 0, "base", ModelSpec.for_backbone("tiny", task.head_sizes(0)), None)


def _small_checkpoint(path: Path) -> Path:
    """A real header and one small tensor: a small pickle, every byte of which is flipped."""
    torch_save(seal({"header": _header(), "model": {"w": torch.arange(4.0)}, "extra": {}}, "header"), path)
    return path


def _record(path: Path, suffix: str) -> tuple[int, int]:
    """(offset, size) of the stored bytes of the zip record ending in ``suffix``."""
    blob = path.read_bytes()
    with zipfile.ZipFile(path) as archive:
        info = next(i for i in archive.infolist() if i.filename.endswith(suffix))
    name_len, extra_len = struct.unpack("<HH", blob[info.header_offset + 26: info.header_offset + 30])
    return info.header_offset + 30 + name_len + extra_len, info.compress_size


def _quietly(fn, *args):
    with contextlib.redirect_stderr(io.StringIO()):
        return fn(*args)


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")  # a flipped protocol byte, loaded by the test
def test_every_byte_of_the_header_record_flipped_is_a_corrupt_file(tmp_path, monkeypatch):
    """Each byte of the pickle that holds the header, flipped alone: the library loader
    raises CorruptFileError every time. With the record check bypassed, the checksum rule
    alone still refuses every flip that changes what the file holds (the rest hit pickle
    bookkeeping, such as memo indices, and load exactly the original content)."""
    source = _small_checkpoint(tmp_path / "small.pt")
    blob = source.read_bytes()
    start, size = _record(source, "/data.pkl")
    original = payload_sha256(torch.load(source, weights_only=True))
    assert _quietly(load_checkpoint, source).header["version"] == SEALED_SINCE
    bad = tmp_path / "bad.pt"

    def flipped(i: int) -> Path:
        data = bytearray(blob)
        data[i] ^= 0xFF
        bad.write_bytes(bytes(data))
        return bad

    accepted = []
    for i in range(start, start + size):
        try:
            _quietly(load_checkpoint, flipped(i))
        except CorruptFileError:
            continue
        accepted.append(i - start)
    assert not accepted, f"header bytes {accepted} flipped still load"

    monkeypatch.setattr(torchfile, "_check_records", lambda path: None)
    for i in range(start, start + size):
        try:
            _quietly(load_checkpoint, flipped(i))
        except CorruptFileError:
            continue
        assert payload_sha256(torch.load(bad, weights_only=True)) == original, f"byte {i - start} changed content"


def _save_plain(obj: dict, path: Path) -> Path:
    torch.save(obj, path)  # intact zip records: only the content's own rule can refuse it
    return path


def test_no_checksum_is_accepted_only_from_a_format_without_checksums(tmp_path):
    sealed = seal({"header": _header(), "model": {"w": torch.ones(2)}, "extra": {}}, "header")
    value = sealed["header"][CHECKSUM_KEY]

    def variant(name: str, **changes) -> Path:
        obj = {**sealed, "header": {k: v for k, v in sealed["header"].items() if k != CHECKSUM_KEY}}
        obj["header"].update(changes)
        return _save_plain(obj, tmp_path / f"{name}.pt")

    cases = {
        "sealed-without": (variant("sealed-without"), "always carries a checksum"),
        "renamed-key": (variant("renamed-key", **{"paylOad_sha256": value}), "always carries a checksum"),
        "old-renamed-key": (variant("old-renamed-key", version=1, **{"payload_sha25f": value}),
                            "holds a checksum where"),
        "version-text": (variant("version-text", version="1"), "version '1'"),
        "version-bool": (variant("version-bool", version=True), "version True"),
    }
    for name, (path, words) in cases.items():
        with pytest.raises(CorruptFileError, match=words):
            _quietly(load_checkpoint, path)
    err = io.StringIO()
    with contextlib.redirect_stderr(err):  # a genuine old file: loads, with one note
        assert load_checkpoint(variant("old", version=1)).step == 0
    assert "without a checksum" in err.getvalue()


def test_resume_states_and_rotations_follow_the_same_rule(tmp_path):
    """last.pt keeps its checksum at the top level: sealed ones record a version beside it."""
    state = {"fingerprint": "f", "epoch": 1, "model": {"w": torch.ones(2)}}
    save_sealed(dict(state), tmp_path / "last.pt")
    stored = torch.load(tmp_path / "last.pt", weights_only=True)
    assert stored["version"] == SEALED_SINCE and CHECKSUM_KEY in stored
    del stored[CHECKSUM_KEY]
    with pytest.raises(CorruptFileError, match="always carries a checksum"):
        load_sealed(_save_plain(stored, tmp_path / "stripped.pt"), "resume state")
    del stored["version"]  # a last.pt of an older incseg: neither
    assert _quietly(load_sealed, _save_plain(stored, tmp_path / "legacy.pt"), "resume state")["epoch"] == 1

    from incseg_cli.stages.rotations import FORMAT, VERSION, load_rotations, save_rotations

    assert VERSION >= SEALED_SINCE
    header = {"format": FORMAT, "version": VERSION, "classes": [0], "feature_dim": 2}
    save_rotations(tmp_path / "rot.pt", torch.zeros(1, 1), header)
    obj = torch.load(tmp_path / "rot.pt", weights_only=True)
    obj["header"]["payload_sha2S6"] = obj["header"].pop(CHECKSUM_KEY)
    with pytest.raises(CorruptFileError, match="always carries a checksum"):
        load_rotations(_save_plain(obj, tmp_path / "rot-bad.pt"))



@pytest.mark.slow
def test_header_flips_through_evaluate(base_run, toy_root, cli, tmp_path):
    """The issue's probe (a flip in the checksum's name, then one in a weight) and flips
    spread over the header record of a real run's checkpoint: exit 5 naming the file."""
    source = base_run / "checkpoint.pt"
    blob = source.read_bytes()
    start, size = _record(source, "/data.pkl")
    at = blob.index(CHECKSUM_KEY.encode())
    weight, _ = _record(source, "/data/5")
    cases = {"probe": [at + 3, weight + 7]}
    cases.update({f"at{k}": [start + k * size // 6] for k in range(6)})
    for name, offsets in cases.items():
        data = bytearray(blob)
        for offset in offsets:
            data[offset] ^= 0x01 if name == "probe" else 0xFF
        path = tmp_path / f"{name}.pt"
        path.write_bytes(bytes(data))
        done = cli("evaluate", path, "--data", toy_root, "--eval-size", "32", "--workers", "0")
        code, err = done.returncode, done.stderr
        line = error_line(err)
        assert code == 5 and path.name in line, (name, err)
