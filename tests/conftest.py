"""Shared fixtures: paths to the shared data, tiny dataset roots built in tmp_path, CLI runner.

Fixtures that build data return factories, so a test can make several roots with different
options. Keep them generic; plain helpers shared by several test modules are in helpers.py,
module-specific ones in the test module.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import SHARED, TOY_TRAIN_ARGS, build_voc_root


@pytest.fixture
def shared_dir() -> Path:
    """``../shared`` beside the repository (spec and VOC label tables); skip if absent."""
    if not (SHARED / "data" / "voc" / "image_labels_train_aug.tsv").is_file():
        pytest.skip(f"shared data not found at {SHARED}")
    return SHARED


@pytest.fixture
def voc_root_factory(tmp_path):
    """``make(name="voc", **build_voc_root options) -> info dict`` (root under tmp_path)."""

    def make(name: str = "voc", **kwargs) -> dict:
        return build_voc_root(tmp_path / name, **kwargs)

    return make


@pytest.fixture
def tiny_voc(voc_root_factory) -> dict:
    """A 12 train / 4 val VOC root (ImageSets lists, SegmentationClassAug palette masks)."""
    return voc_root_factory()


@pytest.fixture
def run_cli():
    """``run_cli(*args, env=None, cwd=None) -> CompletedProcess`` of ``python -m incseg_cli``."""

    def run(*args: str, env: dict | None = None, cwd: Path | None = None, timeout: float = 120):
        full_env = dict(os.environ, INCSEG_NO_PROGRESS="1")
        full_env.pop("INCSEG_DEBUG", None)
        if env:
            full_env.update(env)
        return subprocess.run(
            [sys.executable, "-m", "incseg_cli", *map(str, args)],
            capture_output=True,
            text=True,
            env=full_env,
            cwd=cwd,
            timeout=timeout,
        )

    return run


# -- toy data and a trained step-0 run, shared by the end-to-end tests ------------------------
@pytest.fixture(scope="session")
def toy_root(tmp_path_factory) -> Path:
    """A small toy dataset (VOC layout, 32 px) with splits for 10-10-ov and 10-5-5-ov under
    ``<root>/../splits``."""
    from incseg_cli.datasets import open_layout
    from incseg_cli.data.splits import scan_masks, write_splits
    from incseg_cli.data.toy import build_toy_dataset
    from incseg_cli.tasks import get_task

    base = tmp_path_factory.mktemp("toy")
    root = build_toy_dataset(base / "toy", images=160, val_images=24, size=32, seed=0).out
    layout = open_layout("voc", root)
    classes = scan_masks(layout, "train", workers=1)
    for name in ("10-10-ov", "10-5-5-ov", "offline"):
        write_splits(get_task("voc", name), classes, layout.ids("val"), base / "splits")
    return root


@pytest.fixture(scope="session")
def toy_env(toy_root) -> dict:
    return {"INCSEG_SPLITS": str(toy_root.parent / "splits")}


@pytest.fixture(scope="session")
def base_run(toy_root, toy_env, tmp_path_factory) -> Path:
    """A finished step-0 run of toy 10-10-ov (tiny backbone, 2 epochs)."""
    out = tmp_path_factory.mktemp("runs") / "step0"
    env = dict(os.environ, INCSEG_NO_PROGRESS="1", **toy_env)
    result = subprocess.run(
        [sys.executable, "-m", "incseg_cli", "train-base", "--data", str(toy_root), "--task", "10-10-ov",
         *TOY_TRAIN_ARGS, "--epochs", "2", "--out", str(out)],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    return out


# -- CUDA on the CPU (incseg_cli/testing/cuda.py) -----------------------------------------------


@pytest.fixture
def emulate_cuda():
    """``emulate_cuda(count=1, capability=(9, 0))`` emulates GPUs in this process until the
    test ends: torch.cuda's API, tensors kept on the CPU, CUDA's autocast policy."""
    from incseg_cli.testing import cuda

    def install(count: int = 1, capability: tuple[int, int] = (9, 0)):
        return cuda.install(count, capability)

    yield install
    cuda.remove()


@pytest.fixture
def cli(monkeypatch, capsys):
    """``cli(*args) -> CompletedProcess`` (returncode, stdout, stderr) of the CLI run in this
    process (``main(argv)``: the ``incseg`` command's parsing, error line and exit code) for the
    many quick checks: a subprocess pays ~2 s of imports."""
    from incseg_cli.cli import main

    monkeypatch.setenv("INCSEG_NO_PROGRESS", "1")
    monkeypatch.delenv("INCSEG_DEBUG", raising=False)

    def run(*args: object) -> subprocess.CompletedProcess:
        capsys.readouterr()
        try:
            main([str(a) for a in args])
            code = 0
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
        out, err = capsys.readouterr()
        return subprocess.CompletedProcess(args, code, out, err)

    return run
