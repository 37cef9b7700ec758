"""The package a pip user gets: a wheel built from the source tree, installed into a fresh
virtual environment, run from a folder outside the repository.

The new environment sees this one's site-packages through a .pth file (torch and the other
dependencies, nothing downloaded); the editable install of this checkout is not in it: a
.pth line adds a directory to sys.path without running the .pth files inside it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from helpers import REPO


def _run(command: list, cwd: Path, env: dict, timeout: float = 120) -> subprocess.CompletedProcess:
    result = subprocess.run([str(c) for c in command], cwd=cwd, env=env, capture_output=True, text=True,
                            timeout=timeout)
    assert result.returncode == 0, f"{' '.join(map(str, command))}\n{result.stderr[-3000:]}"
    return result


@pytest.mark.slow
def test_wheel_ships_the_splits_and_runs_outside_the_repository(tmp_path):
    # the build backend, from this environment: nothing is downloaded
    pytest.importorskip("setuptools", reason="pip wheel --no-build-isolation needs setuptools in this environment")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "INCSEG_SPLITS", "INCSEG_DEBUG")}
    env.update(INCSEG_NO_PROGRESS="1", XDG_DATA_HOME=str(tmp_path / "xdg"), PIP_NO_INDEX="1",
               PIP_DISABLE_PIP_VERSION_CHECK="1")

    # What a clone holds, without this checkout's build leftovers, so the build writes no
    # build/ or egg-info into the working tree.
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy2(REPO / name, src / name)
    shutil.copytree(REPO / "incseg_cli", src / "incseg_cli", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", tmp_path / "dist",
          src], tmp_path, env, timeout=180)
    wheel = next((tmp_path / "dist").glob("incseg-*.whl"))
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
    shipped_files = sorted(str(p.relative_to(REPO)) for p in (REPO / "incseg_cli" / "splits").rglob("*") if p.is_file())
    assert sorted(n for n in names if n.startswith("incseg_cli/splits/")) == shipped_files
    assert any(n.startswith("incseg-") and n.endswith("/LICENSE") for n in names)

    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", venv], tmp_path, env)
    python = venv / "bin" / "python"
    site = Path(_run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                     tmp_path, env).stdout.strip())
    (site / "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    _run([sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "-q", wheel], tmp_path, env)
    incseg = venv / "bin" / "incseg"

    work = tmp_path / "work"  # no ./splits here: the shipped ones and the user data directory
    work.mkdir()
    where = _run([python, "-c", "import incseg_cli, json; from incseg_cli.tasks import get_task; "
                  "from incseg_cli.data.splitroots import task_splits_root; "
                  "print(json.dumps([incseg_cli.__file__, str(task_splits_root(get_task('voc', '15-5')))]))"],
                 work, env)
    package, root = map(Path, json.loads(where.stdout))
    shipped = site / "incseg_cli" / "splits"
    assert package.is_relative_to(site) and root == shipped
    assert (root / "voc" / "15-5" / "task.json").is_file() and (root / "voc" / "labels-val.tsv").is_file()

    tasks = json.loads(_run([incseg, "list-tasks", "--dataset", "voc", "--json"], work, env).stdout)
    assert all(path == str(shipped) for t in tasks for path in t["splits"].values())
    assert "shipped" in _run([incseg, "list-tasks", "--dataset", "voc"], work, env).stdout

    # A toy chain: prepare-splits writes into the user data directory, where train-base finds it.
    _run([incseg, "make-toy-data", "--out", "toy", "--images", "40", "--val-images", "8", "--size", "32"], work, env)
    _run([incseg, "prepare-splits", "--dataset", "voc", "--data", "toy", "--task", "10-10-ov"], work, env)
    user = tmp_path / "xdg" / "incseg" / "splits"
    assert (user / "voc" / "10-10-ov" / "task.json").is_file()
    _run([incseg, "train-base", "--data", "toy", "--task", "10-10-ov", "--preset", "toy", "--epochs", "1",
          "--batch-size", "8", "--crop-size", "32", "--eval-size", "32", "--out", "runs/step0"], work, env, timeout=240)
    manifest = json.loads((work / "runs" / "step0" / "manifest.json").read_text())
    assert manifest["status"] == "complete"
    assert list(manifest["inputs"]) == [str(user / "voc" / "10-10-ov" / "train-0.txt")]

    # Missing splits: the error suggests a writable --out, never the installed package, also
    # when --splits names the shipped ones.
    for extra in ([], ["--splits", shipped]):
        r = subprocess.run([str(incseg), "train-base", "--data", "toy", "--task", "10-5-5-ov", "--preset", "toy",
                            *map(str, extra)], cwd=work, env=env, capture_output=True, text=True, timeout=120)
        line = r.stderr.strip().splitlines()[-1]
        assert r.returncode == 3 and line.startswith("error: no split files for voc/10-5-5-ov"), r.stderr
        assert f"--out {user}`" in line and f"--out {site}" not in line
