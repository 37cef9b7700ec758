"""No debris after a kill (issue 19, item 8).

A process killed outright (SIGKILL, power loss) leaves the temporary file it was filling,
named ``.<output>.tmp-<pid>@<host>``. The next stage that locks that output removes the
temporary files of its own outputs whose process no longer runs on this host (one line
says so); those of a live process, or of another host, are left alone.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from incseg_cli.engine.lock import OutputLock
from incseg_cli.engine.outputs import FileOutput, FileOutputs
from incseg_cli.engine.rundir import RunDir
from incseg_cli.fileio import host_tag, remove_stale_temps, temp_owner
from incseg_cli.bank import read_bank
from incseg_cli.stages.banks import bank_output
from incseg_cli.stages.rotations import read_rotations_output


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def _temps(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob(".*") if temp_owner(p.name) is not None)


def test_every_output_kind_removes_what_dead_writers_left(tmp_path, capsys):
    """Runs, banks, rotations (and their resume state and side files), predictions and
    exported programs: whoever takes an output's lock removes its dead writers' files."""
    dead, host = _dead_pid(), host_tag()
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        run = tmp_path / "run"
        run.mkdir()
        masks = tmp_path / "masks"
        (masks / "overlays").mkdir(parents=True)
        stale = [
            run / f".checkpoint.pt.tmp-{dead}@{host}", run / f".manifest.json.tmp-{dead}",  # an older incseg's name
            tmp_path / f".bank.h5.tmp-{dead}@{host}", tmp_path / f".bank.h5.log.tmp-{dead}@{host}",
            tmp_path / f".rot.pt.tmp-{dead}@{host}", tmp_path / f".rot.pt.progress.json.tmp-{dead}@{host}",
            tmp_path / f".rot.last.pt.tmp-{dead}@{host}",
            masks / f".a.png.tmp-{dead}@{host}", masks / "overlays" / f".a.jpg.tmp-{dead}@{host}",
            tmp_path / f".model.pt2.tmp-{dead}@{host}",
        ]
        kept = [
            tmp_path / f".bank.h5.tmp-{live.pid}@{host}",  # its writer still runs
            tmp_path / f".model.pt2.tmp-{dead}@another-host",  # its pid means nothing here
            tmp_path / f".other.h5.tmp-{dead}@{host}",  # not an output of these stages
        ]
        for path in [*stale, *kept]:
            path.write_bytes(b"partial")
        (tmp_path / f".toy.tmp-{dead}-abc123@{host}").mkdir()  # atomic_dir's temporary directory

        lock = RunDir(run).lock().acquire()
        lock.release()
        outputs = FileOutputs([bank_output("--out-bank", tmp_path / "bank.h5"),
                               FileOutput("--out", tmp_path / "rot.pt", read_rotations_output)],
                              force=False, resume=tmp_path / "rot.last.pt")
        with outputs.open("f"):
            pass
        with OutputLock(masks), OutputLock(tmp_path / "model.pt2"):
            pass
        err = capsys.readouterr().err
        assert not [p for p in stale if p.exists()], [p.name for p in stale if p.exists()]
        assert all(p.exists() for p in kept)
        assert "removed 2 temporary file(s) left by processes that no longer run" in err  # the run's, one line
        assert "written on another host" in err
        assert remove_stale_temps(tmp_path / "toy") == [f".toy.tmp-{dead}-abc123@{host}"]
    finally:
        live.kill()
        live.wait()


@pytest.mark.slow
def test_extract_features_killed_mid_write_leaves_nothing_after_a_rerun(base_run, toy_root, toy_env, tmp_path):
    """SIGKILL while the bank's temporary file is being filled: the file stays (nothing can
    remove it then); the rerun removes it with one line and writes the whole bank."""
    bank = tmp_path / "bank.h5"
    command = [sys.executable, "-m", "incseg_cli", "extract-features", "--prev", str(base_run), "--data",
               str(toy_root), "--out", str(bank), "--samples", "40", "--crop-size", "32", "--batch-size", "4",
               "--workers", "0"]
    env = dict(os.environ, INCSEG_NO_PROGRESS="1", **toy_env)
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    deadline = time.monotonic() + 120
    while not _temps(tmp_path):
        assert proc.poll() is None, proc.communicate()[1]
        assert time.monotonic() < deadline
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=30) == -signal.SIGKILL
    left = _temps(tmp_path)
    assert left and not bank.exists()
    rerun = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    notes = [line for line in rerun.stderr.splitlines() if "temporary file(s) left by processes" in line]
    assert len(notes) == 1 and left[0] in notes[0], rerun.stderr
    assert _temps(tmp_path) == [] and not list(tmp_path.glob(".*.lock"))
    assert len(read_bank(bank).labels) == 11
