"""export on a full disk and under Ctrl-C (issue 19, item 7).

torch's zip writer does not survive a failed write: it fails again in its destructor and
aborts the process (SIGABRT, exit 134) whenever the garbage collector reaches it. A full disk
must instead be exit 9 with nothing half-written, and a SIGINT anywhere in export exit 130
with neither the temporary file nor the lock (``.NAME.lock``) left, and no traceback (not
even from inside the final ``gc.collect()``).

Each case runs the real command (``incseg_cli.cli.main`` with ``sys.argv``, so the end of the
process is the real one) in a child process, which sends itself SIGINT at a chosen point.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import error_line, tmpfs
from incseg_cli.engine.kinds import PROGRAM, kind_of

pytestmark = pytest.mark.slow

DRIVER = r"""
import errno, os, signal, sys
point, run, out = sys.argv[1:4]
from incseg_cli import cli, fileio
from incseg_cli.engine import lock
from incseg_cli.stages import export

def stop():
    os.kill(os.getpid(), signal.SIGINT)

def before(owner, name, when=lambda *a, **k: True):
    original = getattr(owner, name)
    def patched(*args, **kwargs):
        if when(*args, **kwargs):
            stop()
        return original(*args, **kwargs)
    setattr(owner, name, patched)

if point == "full":  # the disk fills up after 200 kB of the program
    class Full:
        def __init__(self, fh): self.fh, self.n = fh, 0
        def write(self, data):
            self.n += len(memoryview(data).cast("B"))
            if self.n > 200_000:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return self.fh.write(data)
        def __getattr__(self, name): return getattr(self.fh, name)
        def __enter__(self): return self
        def __exit__(self, *exc): self.fh.close()
    export.open = lambda path, mode="r": Full(open(path, mode))
elif point == "lock":  # while the lock is being taken
    before(lock.OutputLock, "_write")
elif point == "trace":  # as torch.export starts tracing
    before(export, "export_program")
elif point == "write":  # inside torch's write callback, a few records in
    calls = []
    before(export._Sink, "write", lambda *a: calls.append(1) or len(calls) == 5)
elif point == "renamed":  # right after the program is renamed into place
    before(fileio, "fsync_path", lambda path: os.path.isdir(path))
elif point == "exit":  # in the clean-up after the command (gc.collect() of the workers' iterators)
    before(cli, "_end_workers")
sys.argv = ["incseg", "export", run, "--out", out]
cli.main()
"""


def _export(point: str, run: Path, out: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, INCSEG_NO_PROGRESS="1")
    env.pop("INCSEG_DEBUG", None)
    return subprocess.run([sys.executable, "-c", DRIVER, point, str(run), str(out)], capture_output=True,
                          text=True, env=env, timeout=240)


def _clean(result: subprocess.CompletedProcess) -> None:
    err = result.stderr
    assert "Traceback" not in err and "terminate called" not in err and "Stop" not in err, err
    assert result.returncode >= 0, (result.returncode, err)  # not killed by a signal (SIGABRT...)


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_a_full_disk_is_exit_9_with_nothing_written(base_run, tmp_path):
    out = tmp_path / "model.pt2"
    result = _export("full", base_run, out)
    _clean(result)
    assert result.returncode == 9 and "disk full" in error_line(result.stderr, only=True)
    assert list(tmp_path.iterdir()) == []


def test_a_really_full_file_system(base_run, tmp_path):
    """The same on a real file system too small for the program (a tmpfs; root needed)."""
    with tmpfs(tmp_path / "small", "1m") as small:
        result = _export("none", base_run, small / "model.pt2")
        _clean(result)
        assert result.returncode == 9 and "disk full" in error_line(result.stderr, only=True)
        assert list(small.iterdir()) == []


@pytest.mark.parametrize("point", ["lock", "trace", "write", "renamed", "exit"])
def test_sigint_anywhere_in_export_is_exit_130_and_leaves_nothing(point, base_run, tmp_path):
    out = tmp_path / "model.pt2"
    result = _export(point, base_run, out)
    _clean(result)
    assert result.returncode == 130, result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("interrupted:"), result.stderr
    assert _leftovers(tmp_path) == []
    if point in ("renamed", "exit"):  # stopped after the rename: the program is whole
        assert kind_of(out) == PROGRAM
    else:
        assert not out.exists()


def test_sigint_from_outside_while_the_program_is_written(base_run, tmp_path):
    """Ctrl-C as a user sends it, the moment the temporary file appears."""
    out = tmp_path / "model.pt2"
    env = dict(os.environ, INCSEG_NO_PROGRESS="1")
    proc = subprocess.Popen([sys.executable, "-m", "incseg_cli", "export", str(base_run), "--out", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.monotonic() + 120
    while not list(tmp_path.glob(".model.pt2.tmp-*")) and proc.poll() is None:
        assert time.monotonic() < deadline
        time.sleep(0.002)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    result = subprocess.CompletedProcess(proc.args, proc.returncode, "", err)
    _clean(result)
    assert proc.returncode in (0, 130), err  # 0: it had already finished
    assert _leftovers(tmp_path) == []
    assert not out.exists() if proc.returncode == 130 else kind_of(out) == PROGRAM
