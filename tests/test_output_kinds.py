"""No output lands on another run's files (issue 19, item 2).

Every output path is checked against what it would replace (``engine/kinds.py``): a file of
any run directory is never another command's output, and ``--force`` replaces only an output
of the same kind (a run with a run, a program with a program, a bank with a bank). A run is
skipped as complete only on the checkpoint it wrote: one replaced or damaged since is exit 5.
"""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import TOY_TRAIN_ARGS, error_line
from incseg_cli.engine import kinds
from incseg_cli.engine.checkpoint import save_sealed, seal
from incseg_cli.engine.kinds import check_replaceable, kind_of
from incseg_cli.engine.outputs import FRESH, FileOutput, FileOutputs
from incseg_cli.engine.rundir import RunDir
from incseg_cli.errors import CorruptFileError, OutputExistsError
from incseg_cli.bank import BankWriter, space_name
from incseg_cli.stages.banks import bank_output
from incseg_cli.stages.rotations import FORMAT as ROTATIONS_FORMAT
from incseg_cli.stages.rotations import VERSION as ROTATIONS_VERSION
from incseg_cli.stages.rotations import read_rotations_output, save_rotations


def _bank(path: Path) -> Path:
    attrs = {"feature_dim": 4, "step": 0, "dataset": "voc", "task": "10-10-ov", "source_checkpoint_sha256": "a" * 64,
             "space": space_name(0), "fingerprint": "f"}
    with BankWriter(path, attrs) as writer:
        writer.add(0, np.ones((2, 4), np.float32), "bg", "extracted", 0)
    return path


def _program(path: Path) -> Path:
    """What makes a file a torch.export archive, as far as telling kinds apart goes."""
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("model/archive_format", "pt2")
        archive.writestr("model/extra/incseg.json", "{}")
    return path


@pytest.fixture
def outputs_of_every_kind(base_run, tmp_path) -> dict[str, Path]:
    other = tmp_path / "other"
    shutil.copytree(base_run, other)
    checkpoint = tmp_path / "loose.pt"
    shutil.copy(base_run / "checkpoint.pt", checkpoint)
    rotations = tmp_path / "rot.pt"
    save_rotations(rotations, torch.zeros(1, 1), {"format": ROTATIONS_FORMAT, "version": ROTATIONS_VERSION,
                                                  "classes": [0], "feature_dim": 2})
    resume = tmp_path / "rot.last.pt"
    save_sealed({"fingerprint": "f", "epoch": 0, "optimizer": {}, "model": {}}, resume)
    predictions = tmp_path / "masks"
    predictions.mkdir()
    (predictions / "predict.json").write_text("{}")
    junk = tmp_path / "notes.txt"
    junk.write_text("mine")
    return {kinds.RUN: other, kinds.CHECKPOINT: checkpoint, kinds.BANK: _bank(tmp_path / "bank.h5"),
            kinds.ROTATIONS: rotations, kinds.RESUME_STATE: resume, kinds.PROGRAM: _program(tmp_path / "m.pt2"),
            kinds.PREDICTIONS: predictions, kinds.UNKNOWN: junk}


def test_kinds_come_from_the_content(outputs_of_every_kind, tmp_path):
    for kind, path in outputs_of_every_kind.items():
        assert kind_of(path) == kind, path
        renamed = path.with_name("x-" + path.name)  # never from the name
        shutil.move(path, renamed)
        assert kind_of(renamed) == kind, renamed
    (tmp_path / "empty").mkdir()
    assert kind_of(tmp_path / "empty") is None and kind_of(tmp_path / "missing") is None
    (tmp_path / "cut.pt").write_bytes((tmp_path / "x-loose.pt").read_bytes()[:500])
    assert kind_of(tmp_path / "cut.pt") == kinds.TORCH


def test_force_replaces_only_an_output_of_the_same_kind(outputs_of_every_kind):
    items = outputs_of_every_kind
    run_files = [items[kinds.RUN] / name for name in ("checkpoint.pt", "manifest.json", "last.pt", "log.txt")]
    for option_kind, output in ((kinds.BANK, bank_output), (kinds.ROTATIONS, None)):
        for target in [*run_files, *(p for k, p in items.items() if k != option_kind)]:
            out = output("--out", target) if output else FileOutput("--out", target, read_rotations_output,
                                                                      kinds.ROTATIONS)
            with pytest.raises(OutputExistsError) as info:
                FileOutputs([out], force=True).check([])
            assert "choose another --out" in str(info.value), str(info.value)
    assert not (items[kinds.RUN] / "last.pt").exists()
    # the same kind, even damaged, is what --force replaces
    bank = items[kinds.BANK]
    data = bytearray(bank.read_bytes())
    data[-100] ^= 0xFF
    bank.write_bytes(bytes(data))
    outputs = FileOutputs([bank_output("--out", bank)], force=True)
    outputs.check([])
    with outputs.open("g") as state:
        assert state == FRESH
    rotations = FileOutput("--out", items[kinds.ROTATIONS], read_rotations_output, kinds.ROTATIONS)
    FileOutputs([rotations], force=True, resume=items[kinds.RESUME_STATE]).check([])
    # a resume state is deleted by --force: nothing else may bear its name
    with pytest.raises(OutputExistsError, match="where the resume state of --out goes"):
        FileOutputs([rotations], force=True, resume=items[kinds.BANK]).check([])
    # an output that is always rewritten (evaluate's metrics) replaces unknown files, no other kind
    check_replaceable(items[kinds.UNKNOWN], "--out", kinds.METRICS, unknown_ok=True)
    with pytest.raises(OutputExistsError, match="holds a feature bank"):
        check_replaceable(bank, "--out", kinds.METRICS, unknown_ok=True)


@pytest.fixture
def cli(cli, monkeypatch, toy_env):
    """The in-process CLI (conftest) with the toy splits."""
    for key, value in toy_env.items():
        monkeypatch.setenv(key, value)
    return cli


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


@pytest.mark.slow
def test_no_command_writes_over_another_run(outputs_of_every_kind, base_run, toy_root, cli, tmp_path):
    """The issue's probe, and the same for every command that writes a file or a folder."""
    items = outputs_of_every_kind
    other = items[kinds.RUN]
    before = _snapshot(other)
    image = next((toy_root / "JPEGImages").iterdir())
    cases = [
        ("export", base_run, "--out", other / "checkpoint.pt", "--force"),
        ("export", base_run, "--out", other / "manifest.json", "--force"),
        ("export", base_run, "--out", other / "last.pt", "--force"),
        ("export", base_run, "--out", items[kinds.CHECKPOINT], "--force"),
        ("export", base_run, "--out", items[kinds.BANK], "--force"),
        ("export", base_run, "--out", items[kinds.UNKNOWN], "--force"),
        ("evaluate", base_run, "--data", toy_root, "--workers", "0", "--out", other / "metrics.json"),
        ("evaluate", base_run, "--data", toy_root, "--workers", "0", "--out", items[kinds.ROTATIONS]),
        ("predict", base_run, image, "--out", other, "--force", "--workers", "0"),
        ("extract-features", "--prev", base_run, "--data", toy_root, "--out", other / "manifest.json", "--force"),
        ("extract-features", "--prev", base_run, "--data", toy_root, "--out", items[kinds.CHECKPOINT], "--force"),
        ("make-toy-data", "--out", other, "--force", "--images", "4", "--val-images", "2"),
        ("make-toy-data", "--out", tmp_path, "--force", "--images", "4", "--val-images", "2"),
    ]
    sizes = {k: p.stat().st_size for k, p in items.items() if p.is_file()}
    for args in cases:
        done = cli(*args)
        code, err = done.returncode, done.stderr
        assert code == 6, (args, err)
        assert "choose another --out" in error_line(err, only=True), err
    assert _snapshot(other) == before
    assert {k: p.stat().st_size for k, p in items.items() if p.is_file()} == sizes
    # a program is what export --force replaces
    program = tmp_path / "model.pt2"
    done = cli("export", base_run, "--out", program)
    code, err = done.returncode, done.stderr
    assert code == 0, err
    done = cli("export", base_run, "--out", program, "--force")
    code, err = done.returncode, done.stderr
    assert code == 0 and kind_of(program) == kinds.PROGRAM, err


@pytest.mark.slow
def test_a_replaced_or_damaged_checkpoint_is_not_skipped(base_run, toy_root, cli, tmp_path):
    """Rerunning a finished run's command skips it only on the checkpoint it wrote; any
    other file in its place (an intact checkpoint of other content, a program, junk) is
    exit 5, and once the run's own checkpoint is back the rerun skips again."""
    command = ["train-base", "--data", toy_root, "--task", "10-10-ov", *TOY_TRAIN_ARGS, "--epochs", "2",
               "--out", base_run]
    checkpoint = base_run / "checkpoint.pt"
    original = checkpoint.read_bytes()
    obj = torch.load(checkpoint, weights_only=True)
    obj["header"]["incseg_version"] = "0.0.0"
    torch.save(seal(obj, "header"), tmp_path / "resealed.pt")
    try:
        for name, content in (("resealed", (tmp_path / "resealed.pt").read_bytes()),
                              ("program", _program(tmp_path / "m.pt2").read_bytes()), ("junk", b"junk")):
            checkpoint.write_bytes(content)
            done = cli(*command)
            code, err = done.returncode, done.stderr
            line = error_line(err)
            assert code == 5 and "recorded complete" in line and "--force" in line, (name, err)
            assert "skipping" not in err
    finally:
        checkpoint.write_bytes(original)
    done = cli(*command)
    code, err = done.returncode, done.stderr
    assert code == 0 and "already complete" in err, err


def test_a_run_of_an_older_incseg_is_skipped_on_an_intact_checkpoint(base_run, tmp_path):
    """Manifests written before they recorded the checkpoint's sha256: the checkpoint must
    be an intact incseg checkpoint (kind and payload checksum)."""
    run = RunDir(tmp_path / "run")
    shutil.copytree(base_run, run.path)
    manifest = json.loads(run.manifest_path.read_text())
    del manifest["checkpoint_sha256"]
    run.manifest_path.write_text(json.dumps(manifest))
    assert run.decide(manifest["fingerprint"], False) == "complete"
    _program(run.checkpoint)
    with pytest.raises(CorruptFileError, match="holds an exported program"):
        run.decide(manifest["fingerprint"], False)
