"""Runs that survive a cluster and a careless hand (issue 9): group signals with DataLoader
workers, SIGUSR1, --out among the inputs, --force, locks, outputs that cannot be written."""

import errno
import hashlib
import json
import os
import platform
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from helpers import TOY_TRAIN_ARGS, error_line, tmpfs
from incseg_cli import signals
from incseg_cli.engine.checkpoint import load_checkpoint
from incseg_cli.engine.lock import OutputLock, lock_path
from incseg_cli.engine.rundir import RunDir, check_side_outputs
from incseg_cli.console import RunFiles
from incseg_cli.engine.optim import PolyLR, build_optimizer
from incseg_cli.engine.sampler import EpochBatchSampler
from incseg_cli.engine.trainer import Trainer
from incseg_cli.errors import Interrupted, LockedError, OutputError, OutputExistsError, UsageError
from incseg_cli.methods.base import Method
from incseg_cli.fileio import check_writable, host_tag, refuse_overlap, torch_save, write_json
from incseg_cli.stages.train_step import resolve_step

BASE_ARGS = ["--task", "10-10-ov", *TOY_TRAIN_ARGS, "--epochs", "2"]  # as conftest's base_run


# -- helpers ------------------------------------------------------------------------------------
def _start(args, env, log: Path) -> subprocess.Popen:
    """The CLI in its own session (a process group, as under a batch system); stderr to ``log``."""
    full = dict(os.environ, INCSEG_NO_PROGRESS="1", **env)
    full.pop("INCSEG_DEBUG", None)
    with open(log, "w") as fh:
        return subprocess.Popen([sys.executable, "-m", "incseg_cli", *map(str, args)], stdout=subprocess.DEVNULL,
                                stderr=fh, env=full, start_new_session=True)


def _wait_for_text(log: Path, text: str, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while text not in log.read_text():
        assert proc.poll() is None, log.read_text()
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.01)


def _same_weights(a_dir: Path, b_dir: Path) -> bool:
    a = torch.load(a_dir / "checkpoint.pt", weights_only=True)["model"]
    b = torch.load(b_dir / "checkpoint.pt", weights_only=True)["model"]
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _tree_hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid



# -- signals ------------------------------------------------------------------------------------
@pytest.mark.slow
def test_sigterm_to_the_process_group_with_workers(base_run, toy_root, toy_env, run_cli, tmp_path):
    """What scancel/systemd/Kubernetes do: every process of the group gets SIGTERM. The
    workers ignore it, the main process writes last.pt at the next iteration boundary and
    exits 130, and the resumed run ends with the weights of one never interrupted."""
    out, log = tmp_path / "run", tmp_path / "stderr.txt"
    proc = _start(["train-base", "--data", toy_root, *BASE_ARGS, "--workers", "2", "--out", out], toy_env, log)
    _wait_for_text(log, "training voc/10-10-ov", proc)
    os.killpg(proc.pid, signal.SIGTERM)
    assert proc.wait(timeout=120) == 130, log.read_text()
    err = log.read_text()
    assert "Traceback" not in err and "DataLoader worker" not in err, err
    assert err.count("SIGTERM: stopping") == 1  # the main process only, not each worker
    assert [line for line in err.splitlines() if line.startswith("interrupted:")] == [err.strip().splitlines()[-1]]
    assert "last.pt is written" in err
    state = torch.load(out / "last.pt", weights_only=True)
    assert state["epoch"] * 13 + state["batch"] == state["iteration"] < 26  # stopped inside the run
    resumed = run_cli("train-base", "--data", toy_root, *BASE_ARGS, "--out", out, env=toy_env)
    assert resumed.returncode == 0, resumed.stderr
    assert _same_weights(base_run, out)


@pytest.mark.slow
def test_sigusr1_writes_last_and_training_goes_on(base_run, toy_root, toy_env, tmp_path):
    out, log = tmp_path / "run", tmp_path / "stderr.txt"
    proc = _start(["train-base", "--data", toy_root, *BASE_ARGS, "--workers", "2", "--out", out], toy_env, log)
    _wait_for_text(log, "training voc/10-10-ov", proc)
    os.killpg(proc.pid, signal.SIGUSR1)  # SLURM --signal: a warning before pre-emption
    assert proc.wait(timeout=120) == 0, log.read_text()
    err = log.read_text()
    assert "Traceback" not in err
    assert err.count("(SIGUSR1); training goes on") == 1 and "wrote last.pt" in err
    assert not (out / "last.pt").exists()  # a complete run keeps no resume state
    assert _same_weights(base_run, out)  # the extra save changed nothing


@pytest.mark.slow
def test_sigterm_outside_training_removes_temporary_files(base_run, toy_root, toy_env, tmp_path):
    """extract-features stopped while it writes its bank: 130, one line, no .tmp file, and a
    rerun writes the bank."""
    out, log = tmp_path / "bank.h5", tmp_path / "stderr.txt"
    args = ["extract-features", "--model", base_run, "--data", toy_root, "--out", out, "--samples", "4000",
            "--crop-size", "32", "--workers", "0"]
    proc = _start(args, toy_env, log)
    deadline = time.monotonic() + 120
    while not list(tmp_path.glob(".bank.h5.tmp-*")):
        assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGTERM)
    assert proc.wait(timeout=60) == 130, log.read_text()
    err = log.read_text()
    assert "Traceback" not in err and err.strip().splitlines()[-1].startswith("interrupted: SIGTERM")
    assert not out.exists() and not list(tmp_path.glob(".bank.h5*")), os.listdir(tmp_path)


def test_deferred_signals_in_process():
    """Inside a training loop the first stop waits for the boundary, a repeated SIGTERM is
    ignored (torchrun forwards the group's), a second Ctrl-C stops at once; SIGUSR1 asks once."""
    with pytest.raises(signals.Stop):
        with signals.deferred():
            signals.request_stop(signal.SIGTERM)
            assert signals.stop_requested() == signal.SIGTERM
            signals.request_stop(signal.SIGTERM)  # ignored
            signals.request_stop(signal.SIGINT)  # raises
    with pytest.raises(signals.Stop):  # a stop still pending when the block ends is not lost
        with signals.deferred():
            signals.request_stop(signal.SIGINT)
    with signals.deferred():
        assert signals.stop_requested() is None
        signals.request_stop(signal.SIGUSR1)
        assert signals.take_save_request() and not signals.take_save_request()


# -- --out among the inputs, --force ------------------------------------------------------------
@pytest.mark.slow
def test_out_equal_to_prev_is_refused_and_prev_is_intact(base_run, toy_root, toy_env, cli, tmp_path, monkeypatch):
    monkeypatch.setenv("INCSEG_SPLITS", toy_env["INCSEG_SPLITS"])
    prev = tmp_path / "step0"
    shutil.copytree(base_run, prev)
    before = _tree_hashes(prev)
    step = ["train-step", "--prev", prev, "--data", toy_root, "--method", "ft", *TOY_TRAIN_ARGS, "--epochs", "1"]
    for out, extra, words in ((prev, [], "is also the run of --prev"), (prev, ["--force"], "is also the run of --prev"),
                              (prev, ["--force", "--lr", "-1"], "--lr"), (prev / "sub", ["--force"], "lies inside")):
        r = cli(*step, "--out", out, *extra)
        assert r.returncode == 2 and words in error_line(r.stderr), (extra, r.stderr)
    assert _tree_hashes(prev) == before
    with pytest.raises(UsageError) as info:  # no "give the step -1 run as --prev"
        resolve_step(load_checkpoint(prev), None, 0)
    assert "train-step learns steps >= 1" in str(info.value) and "-1" not in str(info.value)


def test_overlap_and_side_outputs(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "manifest.json").write_text("{}")
    (run / "checkpoint.pt").write_bytes(b"x")
    inputs = [("--current", run / "checkpoint.pt"), ("--current", run), ("--data", tmp_path / "data")]
    for out, words in ((run, "is also"), (run / "x", "lies inside"), (tmp_path, "contains")):
        with pytest.raises(UsageError, match=words):
            refuse_overlap(out, "--out", inputs, inside_ok=("--data",))
    refuse_overlap(tmp_path / "data" / "run", "--out", inputs, inside_ok=("--data",))
    # evaluate: beside the run's files is fine, over them or over the run is not
    check_side_outputs(run / "checkpoint.pt", [("--out", run / "eval-full.json", False)])
    for bad in (run / "metrics.json", run, run / "checkpoint.pt"):
        with pytest.raises(UsageError):
            check_side_outputs(run, [("--out", bad, False)])


def test_force_moves_the_old_run_aside_until_the_new_one_starts(tmp_path):
    run = RunDir(tmp_path / "run")
    run.prepare("old", force=False)
    run.start_manifest("x", {}, "old", {}, {})
    run.checkpoint.write_bytes(b"old weights")
    # a new run that fails before its first last.pt puts the old one back
    assert run.prepare("new", force=True) == "fresh"
    assert not run.checkpoint.exists() and run.replaced is not None and (run.replaced / "checkpoint.pt").exists()
    run.start_manifest("x", {}, "new", {}, {})
    run.abandon()
    assert run.checkpoint.read_bytes() == b"old weights" and run.read_manifest()["fingerprint"] == "old"
    assert not list(tmp_path.glob(".run.replaced-*"))
    # one that has written last.pt has started: the old run goes
    assert run.prepare("new", force=True) == "fresh"
    run.last.write_bytes(b"state")
    run.abandon()
    assert run.last.exists() and not list(tmp_path.glob(".run.replaced-*"))
    # --force never replaces what is not an incseg run, and does not say to pass it
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(OutputExistsError) as info:
        RunDir(foreign).prepare("abc", force=True)
    assert "pass --force" not in str(info.value) and (foreign / "notes.txt").exists()


def test_an_interrupted_force_is_recovered(tmp_path):
    """A --force whose process died (SIGKILL) before the new run wrote last.pt: the next
    invocation puts the old run back."""
    run = RunDir(tmp_path / "run")
    run.prepare("old", force=False)
    run.checkpoint.write_bytes(b"old weights")
    run.update_manifest(run.start_manifest("x", {}, "old", {}, {}), status="complete")
    aside = tmp_path / f".run.replaced-{_dead_pid()}"
    os.replace(run.path, aside)
    run.path.mkdir()
    (run.path / "manifest.json").write_text(json.dumps({"fingerprint": "new", "epochs": []}))
    assert RunDir(run.path).prepare("old", force=False) == "complete"
    assert run.checkpoint.read_bytes() == b"old weights" and not aside.exists()


# -- locks --------------------------------------------------------------------------------------
@pytest.mark.slow
def test_a_second_run_on_a_locked_out_is_refused(toy_root, toy_env, run_cli, tmp_path):
    out = tmp_path / "run"
    with OutputLock(out):
        r = run_cli("train-base", "--data", toy_root, *BASE_ARGS, "--out", out, env=toy_env)
    assert r.returncode == 8, r.stderr
    line = error_line(r.stderr)
    assert f"pid {os.getpid()} on {platform.node()}" in line and "another incseg is writing it" in line
    assert not out.exists() and not lock_path(out).exists()


def test_lock_refuses_a_holder_and_takes_over_a_stale_one(tmp_path, capsys):
    target = tmp_path / "bank.h5"
    with OutputLock(target):
        assert json.loads(lock_path(target).read_text())["pid"] == os.getpid()
        with pytest.raises(LockedError, match=f"pid {os.getpid()}"):
            OutputLock(target).acquire()
    assert not lock_path(target).exists()  # released and removed
    dead = _dead_pid()
    lock_path(target).write_text(json.dumps({"pid": dead, "host": platform.node()}))
    with OutputLock(target):  # what a SIGKILLed holder leaves: taken over with a note
        pass
    assert f"took over the stale lock of pid {dead}" in capsys.readouterr().err


# -- outputs that cannot be written -------------------------------------------------------------
def test_write_errors_are_output_errors(tmp_path, monkeypatch):
    target = tmp_path / "state.pt"
    target.write_bytes(b"old")
    # torch.save hitting a size limit (as a full disk: "PytorchStreamWriter failed writing file")
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, hard))
    try:
        with pytest.raises(OutputError, match=f"cannot write {target}"):
            torch_save({"w": torch.zeros(1 << 20)}, target)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    assert target.read_bytes() == b"old" and os.listdir(tmp_path) == ["state.pt"]

    synced: list[str] = []
    real_fsync = os.fsync

    def fsync(fd):
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    write_json(tmp_path / "m.json", {"a": 1})
    assert str(tmp_path / f".m.json.tmp-{os.getpid()}@{host_tag()}") in synced and str(tmp_path) in synced  # file, then dir

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OutputError, match="disk full"):
        write_json(tmp_path / "m.json", {"a": 2})
    assert json.loads((tmp_path / "m.json").read_text()) == {"a": 1}
    assert sorted(os.listdir(tmp_path)) == ["m.json", "state.pt"]


def test_check_writable(tmp_path):
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(OutputError, match="is a file, not a directory"):
        check_writable(a_file / "run", "--out", directory=True)
    with pytest.raises(OutputError, match="a file is in the way"):
        check_writable(a_file, "--out", directory=True)
    with pytest.raises(OutputError, match="a directory is in the way"):
        check_writable(tmp_path, "--out")
    check_writable(tmp_path / "new" / "deeper" / "x.json", "--out")
    assert sorted(os.listdir(tmp_path)) == ["file"]  # nothing made


@pytest.mark.slow
def test_unwritable_outputs_fail_before_the_work(base_run, toy_root, toy_env, cli, tmp_path, monkeypatch):
    monkeypatch.setenv("INCSEG_SPLITS", toy_env["INCSEG_SPLITS"])
    a_file = tmp_path / "file"
    a_file.write_text("x")
    r = cli("train-base", "--data", toy_root, *BASE_ARGS, "--out", a_file / "run")
    assert r.returncode == 9 and "is a file, not a directory" in error_line(r.stderr)
    r = cli("train-base", "--data", toy_root, *BASE_ARGS, "--out", a_file)
    assert r.returncode == 9 and "a file is in the way" in error_line(r.stderr)
    r = cli("evaluate", base_run, "--data", toy_root, "--workers", "0", "--out", a_file / "x.json")
    assert r.returncode == 9 and "mIoU" not in r.stderr  # refused before evaluating
    r = cli("evaluate", base_run, "--data", toy_root, "--workers", "0", "--out", base_run / "metrics.json")
    assert r.returncode == 2 and "is a file of the run" in error_line(r.stderr)


@pytest.mark.slow
def test_read_only_and_full_file_systems(base_run, toy_root, run_cli, tmp_path):
    with tmpfs(tmp_path / "ro", "1m", read_only=True) as ro:
        r = run_cli("evaluate", base_run, "--data", toy_root, "--workers", "0", "--out", ro / "eval.json")
        assert r.returncode == 9 and "read-only file system" in error_line(r.stderr, only=True)
    with tmpfs(tmp_path / "small", "16k") as small:  # room for a few 4 KiB pages
        r = run_cli("evaluate", base_run, "--data", toy_root, "--workers", "0", "--save-predictions", small / "p")
        assert r.returncode == 9, r.stderr
        assert "disk full" in error_line(r.stderr) and "Traceback" not in r.stderr
        assert not [p for p in (small / "p").iterdir() if ".tmp-" in p.name]
        shutil.rmtree(small / "p")
        # torch.save on a full disk: "[enforce fail at inline_container.cc] unexpected pos"
        with pytest.raises(OutputError, match="last.pt: no space left on the device"):
            torch_save({"w": torch.zeros(1 << 20)}, small / "last.pt")
        assert not list(small.iterdir())


# -- the loop survives what a group signal kills ------------------------------------------------
class _Rows(torch.utils.data.Dataset):
    """Rows for a linear model. The ``fail_at``-th read fails like a DataLoader worker killed
    by a signal; with ``stop`` the process got SIGTERM (sent to its whole group) just before."""

    def __init__(self, fail_at: int, stop: bool):
        self.fail_at, self.stop, self.reads = fail_at, stop, 0

    def __len__(self):
        return 16

    def __getitem__(self, key):
        index, _ = key
        self.reads += 1
        if self.reads == self.fail_at:
            if self.stop:
                signals.request_stop(signal.SIGTERM)
            raise RuntimeError("DataLoader worker (pid 4242) is killed by signal: Terminated.")
        return {"x": torch.full((3,), index / 16)}


class _Regression(Method):
    name = "toy"

    def losses(self, model, batch, info):
        return {"mse": ((model(batch["x"]) - 1.0) ** 2).mean()}


def _trainer(tmp_path, dataset):
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1)
    sampler = EpochBatchSampler(16, 4, seed=0)
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=sampler)
    optimizer = build_optimizer(_Regression().param_groups(model, 0.01), "sgd", 0.01, 0.0)
    return Trainer(model=model, method=_Regression(), loader=loader, sampler=sampler, optimizer=optimizer,
                   scheduler=PolyLR(optimizer, 8), epochs=2, device=torch.device("cpu"),
                   last_path=tmp_path / "last.pt", fingerprint="f", files=RunFiles.of(tmp_path, directory=True))


def test_a_loader_killed_by_the_stop_signal_is_the_interruption(tmp_path):
    trainer = _trainer(tmp_path, _Rows(fail_at=23, stop=True))  # in the 2nd batch of epoch 2
    with pytest.raises(Interrupted, match="stopped at epoch 2, iteration 1; last.pt is written"):
        trainer.fit()
    state = torch.load(tmp_path / "last.pt", weights_only=True)
    assert (state["epoch"], state["batch"], state["iteration"]) == (1, 1, 5)  # the last completed iteration
    assert [e["epoch"] for e in state["history"]] == [1]
    # without a stop signal the same error is an error
    (tmp_path / "last.pt").unlink()
    with pytest.raises(RuntimeError, match="killed by signal"):
        _trainer(tmp_path, _Rows(fail_at=23, stop=False)).fit()
