"""The one runner of what stages write (engine/outputs.py): fingerprint from the declared
options, skip / resume / fresh / --force, for run directories and for banks and rotations."""

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from incseg_cli import config
from incseg_cli.engine.outputs import COMPLETE, FRESH, REPLACE, RESUME, FileOutputs, Found, Recipe, decide
from incseg_cli.engine.rundir import RunDir
from incseg_cli.errors import OutputExistsError, UsageError
from incseg_cli.bank import BankWriter, space_name
from incseg_cli.stages.banks import bank_output
from incseg_cli.stages.features import ExtractFeaturesOptions
from incseg_cli.stages.rotations import FitRotationsOptions, RotateBankOptions


def test_decide():
    here, gone = Path("a"), Path("b")
    assert decide([Found(here, False), Found(gone, False)], "f", False) == FRESH
    assert decide([Found(here, True, "f"), Found(gone, True, "f")], "f", False) == COMPLETE
    assert decide([Found(here, True, "f"), Found(gone, False)], "f", False) == FRESH
    assert decide([Found(here, True, "f"), Found(gone, False)], "f", False, resumable=True) == RESUME
    assert decide([Found(here, True, "f", complete=False)], "f", False) == FRESH
    assert decide([Found(here, True, "g")], "f", True) == REPLACE
    assert decide([Found(here, False)], "f", True) == FRESH
    with pytest.raises(OutputExistsError, match="a: holds a bank with other options or inputs; pass --force"):
        decide([Found(here, True, "g", what="a bank"), Found(gone, True, "f")], "f", False)
    with pytest.raises(OutputExistsError, match="a: holds junk; pass --force"):
        decide([Found(here, True, None, what="junk")], "f", False)


def test_volatile_options_come_from_the_declarations():
    assert config.volatile_names(ExtractFeaturesOptions) == {"out", "workers", "device", "force"}
    assert config.volatile_names(FitRotationsOptions) == {"out", "out_bank", "workers", "device", "force"}
    assert config.volatile_names(RotateBankOptions) == {"out", "force"}
    opts = ExtractFeaturesOptions(prev=Path("p"), out=Path("o.h5"), data=Path("d"), workers=2)
    recipe = Recipe.of([opts], {"p": "1"})
    assert "force" not in recipe.options and recipe.options["prev"] == "p"
    same = [dataclasses.replace(opts, workers=0), dataclasses.replace(opts, device="cpu", out=Path("x.h5")),
            dataclasses.replace(opts, force=True)]
    assert all(Recipe.of([o], {"p": "1"}).fingerprint == recipe.fingerprint for o in same)
    other = [dataclasses.replace(opts, seed=1), dataclasses.replace(opts, prev=Path("q")),
             dataclasses.replace(opts, amp="bf16")]
    assert all(Recipe.of([o], {"p": "1"}).fingerprint != recipe.fingerprint for o in other)
    assert Recipe.of([opts], {"p": "2"}).fingerprint != recipe.fingerprint


def _bank(path, fingerprint):
    attrs = {"feature_dim": 4, "step": 0, "dataset": "voc", "task": "10-10-ov", "source_checkpoint_sha256": "a" * 64,
             "space": space_name(0), "fingerprint": fingerprint}
    with BankWriter(path, attrs) as w:
        w.add(0, np.ones((2, 4), np.float32), "bg", "extracted", 0)


def test_file_outputs(tmp_path):
    bank, resume = tmp_path / "bank.h5", tmp_path / "rot.last.pt"
    outputs = FileOutputs([bank_output("--out", bank)], force=False, resume=resume)
    outputs.check([("--bank", tmp_path / "in.h5")])
    with outputs.open("f") as state:
        assert state == FRESH and (tmp_path / ".bank.h5.lock").exists()
        _bank(bank, "f")
    assert not (tmp_path / ".bank.h5.lock").exists()
    with outputs.open("f") as state:
        assert state == COMPLETE
    with pytest.raises(OutputExistsError, match="holds a feature bank with other options or inputs"):
        with outputs.open("g"):
            pass
    resume.write_bytes(b"state")
    with FileOutputs([bank_output("--out", bank)], force=True, resume=resume).open("g") as state:
        assert state == FRESH and not resume.exists()
    bank.write_bytes(b"junk")
    with pytest.raises(OutputExistsError, match="not an intact incseg feature bank"):
        outputs.decide("f")
    with pytest.raises(UsageError, match="is also --bank"):
        FileOutputs([bank_output("--out", bank)], force=True).check([("--bank", bank)])


def test_run_dir_uses_the_same_rule(tmp_path):
    run = RunDir(tmp_path / "run")
    assert run.prepare("f", force=False) == FRESH
    manifest = run.start_manifest("x", {}, "f", {}, {})
    assert run.decide("f", False) == FRESH
    run.last.write_bytes(b"state")
    assert run.decide("f", False) == RESUME
    run.checkpoint.write_bytes(b"weights")
    run.update_manifest(manifest, status="complete")
    assert run.decide("f", False) == COMPLETE
    with pytest.raises(OutputExistsError, match="holds a run with other options or inputs \\(status complete\\)"):
        run.decide("g", False)
    assert run.decide("g", True) == REPLACE
