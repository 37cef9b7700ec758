"""Records that survive failures (issue 19, item 6): log.txt kept and appended across
attempts, a run that could not write last.pt removes what it wrote, status and predict.json
tell failed / interrupted / stale from running whatever progress.json holds, a closed stderr
(``2>&1 | head``) ends training as interrupted with last.pt, and inspect knows an exported
program."""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from helpers import TOY_TRAIN_ARGS, error_line, tmpfs

BASE_ARGS = ["--task", "10-10-ov", *TOY_TRAIN_ARGS]


@pytest.fixture
def cli(cli, monkeypatch, toy_env):
    """The in-process CLI (conftest) with the toy splits."""
    for key, value in toy_env.items():
        monkeypatch.setenv(key, value)
    return cli



def _status(cli, path: Path) -> dict:
    r = cli("status", path, "--json")
    assert r.returncode == 0, r.stderr
    text = cli("status", path)
    assert text.returncode == 0 and "Traceback" not in text.stderr, text.stderr
    return json.loads(r.stdout)[0]


# -- log.txt across attempts ---------------------------------------------------------------------
def _read_only_in_epoch_2(split: Path) -> str:
    """A training image that epoch 1 drops (the remainder of its last batch) and epoch 2 reads."""
    from incseg_cli.engine.sampler import EpochBatchSampler

    ids = [line.strip() for line in split.read_text().splitlines() if line.strip()]
    sampler = EpochBatchSampler(len(ids), 8, 0)

    def read(epoch: int) -> set[int]:
        sampler.set_epoch(epoch)
        return {i for batch in sampler for i, _ in batch}

    late = sorted(read(1) - read(0))
    assert late, "every image is read in epoch 1: choose another seed or batch size"
    return ids[late[0]]


@pytest.mark.slow
def test_log_is_kept_and_appended_when_an_image_breaks_mid_training(toy_root, toy_env, run_cli, cli, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(toy_root, data)
    image = data / "JPEGImages" / f"{_read_only_in_epoch_2(toy_root.parent / 'splits/voc/10-10-ov/train-0.txt')}.jpg"
    good = image.read_bytes()
    image.write_bytes(good[: len(good) // 2])
    out = tmp_path / "run"
    args = ["train-base", "--data", data, *BASE_ARGS, "--epochs", "2", "--out", out]
    for attempt in (1, 2):
        r = run_cli(*args, env=toy_env)
        assert r.returncode == 3, r.stderr
        assert image.name in error_line(r.stderr)
        assert (out / "last.pt").is_file()  # epoch 1 is saved
        log = (out / "log.txt").read_text()
        assert log.count("$ incseg train-base") == attempt  # each attempt appended, none lost
        assert log.count(f"error: {image}") == attempt and "epoch 1/2" in log
    status = _status(cli, out)
    assert status["status"] == "failed" and image.name in status["error"]
    image.write_bytes(good)
    r = run_cli(*args, env=toy_env)
    assert r.returncode == 0, r.stderr
    log = (out / "log.txt").read_text()
    assert log.count("$ incseg train-base") == 3 and "resuming" in log and log.count("error:") == 2


# -- a full disk before the first last.pt --------------------------------------------------------
@pytest.mark.slow
def test_a_run_that_cannot_write_last_pt_leaves_nothing(toy_root, toy_env, run_cli, tmp_path):
    with tmpfs(tmp_path / "disk", "600k") as disk:
        out = disk / "run"
        r = run_cli("train-base", "--data", toy_root, *BASE_ARGS, "--epochs", "2", "--out", out, env=toy_env)
        assert r.returncode == 9, r.stderr
        assert "disk full" in error_line(r.stderr)
        assert not out.exists(), sorted(p.name for p in out.iterdir())
        assert not [p for p in disk.iterdir()], list(disk.iterdir())  # no lock, no temporary file


# -- status whatever progress.json holds ---------------------------------------------------------
def _killed_run(path: Path, progress: bytes | None, log_tail: str = "epoch 1/3: ce 1.0 total 1.0") -> Path:
    """A run directory as a killed train-base leaves it: the manifest says running, last.pt
    is there, no process holds its lock."""
    path.mkdir(parents=True)
    (path / "manifest.json").write_text(json.dumps({
        "status": "running", "fingerprint": "f" * 64, "argv": ["incseg", "train-base", "--out", str(path)],
        "options": {"epochs": 3}, "iterations_per_epoch": 13,
        "epochs": [{"epoch": 1, "losses": {"ce": 1.0, "total": 1.0}}]}))
    (path / "last.pt").write_bytes(b"state")
    (path / "log.txt").write_text(f"2025-01-01 00:00:00 $ incseg train-base --out {path}\n"
                                  f"2025-01-01 00:00:01 {log_tail}\n")
    if progress is not None:
        (path / "progress.json").write_bytes(progress)
    return path


PROGRESS = {
    "cut": b'{"state": "running", "epoch": 1, "los',
    "not-json": b"\x00\xff garbage",
    "list": b"[1, 2]",
    "wrong-types": json.dumps({"state": "running", "losses": [1, 2], "pid": "x", "epoch": "e", "epochs": True,
                               "it_per_s": "fast", "eta_seconds": [], "updated_unix": "now", "outputs": [1, None],
                               "lr": "high", "resume_state": 5, "host": 7}).encode(),
    "wrong-state": json.dumps({"state": {"running": True}, "losses": {"ce": "1", "total": 2.0}}).encode(),
    "running-of-a-dead-pid": json.dumps({"state": "running", "pid": 2**22 + 17, "host": platform.node(),
                                         "updated_unix": 4e9}).encode(),
}


@pytest.mark.parametrize("name", list(PROGRESS))
def test_a_killed_run_is_stale_whatever_its_progress_holds(cli, tmp_path, name):
    run = _killed_run(tmp_path / "run", PROGRESS[name])
    status = _status(cli, run)
    assert status["status"] == "stale", status
    assert all(isinstance(v, (int, float)) for v in status["losses"].values())
    assert status["epochs"] is None or isinstance(status["epochs"], int)


def test_a_killed_run_without_progress_or_lock_is_not_running(cli, tmp_path):
    assert _status(cli, _killed_run(tmp_path / "run", None))["status"] == "stale"


@pytest.mark.parametrize("tail,state", [("error: x.jpg: unreadable image", "failed"),
                                        ("interrupted: stopped after epoch 1; last.pt is written", "interrupted")])
def test_an_unreadable_progress_leaves_the_log_to_tell_how_it_ended(cli, tmp_path, tail, state):
    status = _status(cli, _killed_run(tmp_path / "run", b"{", log_tail=tail))
    assert status["status"] == state
    if state == "failed":
        assert status["error"] == "x.jpg: unreadable image"


def test_a_live_lock_holder_is_running_whatever_its_progress_holds(cli, tmp_path):
    from incseg_cli.engine.lock import lock_path

    run = _killed_run(tmp_path / "run", PROGRESS["wrong-types"])
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)  # incseg train-base"])
    try:
        lock_path(run).write_text(json.dumps({"pid": holder.pid, "host": platform.node()}))
        assert _status(cli, run)["status"] == "running"
    finally:
        holder.kill()
        holder.wait()
    assert _status(cli, run)["status"] == "stale"


def test_a_predict_folder_whose_process_is_gone_is_not_running(cli, tmp_path):
    out = tmp_path / "pred"
    out.mkdir()
    (out / "predict.json").write_text(json.dumps({"command": "predict", "status": "running", "images": 3}))
    assert _status(cli, out)["status"] == "stale"


# -- a closed stderr -----------------------------------------------------------------------------
@pytest.mark.slow
def test_a_closed_stderr_interrupts_training_with_last_pt(toy_root, toy_env, cli, tmp_path):
    """``incseg train-base ... 2>&1 | head -2``: the reader goes away while training runs."""
    out = tmp_path / "run"
    env = dict(os.environ, INCSEG_NO_PROGRESS="1", **toy_env)
    env.pop("INCSEG_DEBUG", None)
    proc = subprocess.Popen([sys.executable, "-m", "incseg_cli", "train-base", "--data", str(toy_root), *BASE_ARGS,
                             "--epochs", "3", "--out", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    for line in proc.stdout:
        if line.startswith("training "):
            break
    proc.stdout.close()  # head has its lines
    assert proc.wait(timeout=300) == 130
    assert (out / "last.pt").is_file()
    log = (out / "log.txt").read_text().strip().splitlines()
    assert log[-1].split(" ", 2)[-1].startswith("interrupted:"), log
    assert not any("SystemExit" in line for line in log)
    status = _status(cli, out)
    assert status["status"] == "interrupted" and not status.get("error")


# -- predict.json after a full disk --------------------------------------------------------------
@pytest.mark.slow
def test_predict_on_a_full_disk_records_failed(base_run, toy_root, toy_env, run_cli, cli, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    for src in sorted((toy_root / "JPEGImages").glob("*.jpg"))[:60]:
        shutil.copy(src, images)
    with tmpfs(tmp_path / "disk", "48k") as disk:
        out = disk / "pred"
        r = run_cli("predict", base_run, images, "--out", out, "--workers", "0", "--overlay", env=toy_env)
        assert r.returncode == 9, r.stderr
        assert "disk full" in error_line(r.stderr)
        record = json.loads((out / "predict.json").read_text())
        assert record["status"] == "failed" and "disk full" in record["error"]
        assert _status(cli, out)["status"] == "failed"


# -- inspect an exported program -----------------------------------------------------------------
@pytest.mark.slow
def test_inspect_recognises_an_exported_program(base_run, run_cli, cli, tmp_path):
    program = tmp_path / "m.pt2"
    r = run_cli("export", base_run, "--out", program)
    assert r.returncode == 0, r.stderr
    r = cli("inspect", program, "--json")
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["kind"] == "program" and report["problems"] == []
    assert (report["header"]["task"], report["header"]["step"], report["header"]["classes"]) == ("10-10-ov", 0, 11)
    text = cli("inspect", program)
    assert text.returncode == 0 and "program:" in text.stdout and "check: ok" in text.stdout

    with zipfile.ZipFile(program) as archive:  # one flipped bit inside a weight
        member = next(i for i in archive.infolist() if "/data/weights/" in i.filename and i.file_size > 1000)
    data = bytearray(program.read_bytes())
    data[member.header_offset + 30 + len(member.filename) + member.file_size // 2] ^= 1
    flipped = tmp_path / "flipped.pt2"
    flipped.write_bytes(bytes(data))
    r = cli("inspect", flipped)
    assert r.returncode == 5 and "CRC" in error_line(r.stderr)
    cut = tmp_path / "cut.pt2"
    cut.write_bytes(bytes(data[: len(data) // 2]))
    r = cli("inspect", cut)
    assert r.returncode == 5 and str(cut) in error_line(r.stderr)  # no longer a zip: a damaged file
