"""Runs you can watch: log.txt, losses.csv across resumes, progress.json and `incseg status`,
losses read on the host only at flushes, the scatter-add confusion matrix."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import TOY_TRAIN_ARGS, start_train_base, wait_for_file
from incseg_cli import console
from incseg_cli.console import ProgressBar, RunFiles, log, log_file
from incseg_cli.engine.evaluate import ConfusionMatrix
from incseg_cli.engine.losstable import LossTable, read_losses
from incseg_cli.engine.optim import PolyLR, build_optimizer
from incseg_cli.engine.sampler import EpochBatchSampler
from incseg_cli.engine.trainer import Trainer
from incseg_cli.errors import InputError, NonFiniteError, UsageError
from incseg_cli.methods.base import Method
from incseg_cli.stages.status import format_status, run_status

STAMP = r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d "


# -- confusion matrix ------------------------------------------------------------------------------
def test_confusion_matrix_equals_a_reference_with_ignored_pixels():
    gen = torch.Generator().manual_seed(0)
    n = 7
    cm = ConfusionMatrix(n)
    ref = np.zeros((n, n), dtype=np.int64)
    ignored = 0
    for _ in range(3):
        target = torch.randint(0, n, (2, 9, 11), generator=gen)
        target[torch.rand(target.shape, generator=gen) < 0.3] = 255
        pred = torch.randint(0, n, (2, 9, 11), generator=gen)
        cm.update(pred, target.to(torch.uint8))  # labels arrive as uint8
        t, p = target.flatten().numpy(), pred.flatten().numpy()
        for a, b in zip(t, p):
            if a != 255:
                ref[a, b] += 1
        ignored += int((t == 255).sum())
    assert (cm.numpy() == ref).all() and ref.sum() > 0 and ignored > 0
    assert int(cm.counts[-1]) == ignored  # the extra bin


# -- losses.csv ---------------------------------------------------------------------------------------
def test_loss_table_drops_rows_past_the_restored_iteration(tmp_path):
    path = tmp_path / "losses.csv"
    table = LossTable(path)
    assert table.open(0) == []
    table.append([{"iteration": i, "epoch": 1 + (i - 1) // 4, "lr_model": 0.1 / i, "ce": 1.0 / i, "total": 1.0 / i}
                  for i in range(1, 11)])
    with open(path, "a") as fh:
        fh.write("11,3,0.0")  # a line cut short by SIGKILL
    _, rows = read_losses(path)
    assert [r["iteration"] for r in rows] == list(range(1, 11))
    kept = LossTable(path).open(6)  # last.pt restored iteration 6
    assert [r["iteration"] for r in kept] == list(range(1, 7))
    columns, rows = read_losses(path)
    assert columns == ["iteration", "epoch", "lr_model", "ce", "total"] and len(rows) == 6
    assert rows[2]["ce"] == 1.0 / 3 and rows[2]["epoch"] == 1 and isinstance(rows[2]["iteration"], int)
    # a loss that appears later widens the header, earlier rows keep an empty cell
    table = LossTable(path)
    table.open(6)
    table.append([{"iteration": 7, "epoch": 2, "lr_model": 0.01, "ce": 0.5, "total": 0.7, "kd": 0.2}])
    columns, rows = read_losses(path)
    assert columns[-1] == "kd" and "kd" not in rows[0] and rows[-1]["kd"] == 0.2


# -- the loop: no host read per iteration, NaN caught before last.pt ---------------------------------
class _Rows(torch.utils.data.Dataset):
    def __len__(self):
        return 16

    def __getitem__(self, key):
        index, _ = key
        return {"x": torch.full((3,), index / 16), "index": index}


class _Regression(Method):
    name = "toy"

    def __init__(self, nan_at: int | None = None):
        self.nan_at = nan_at

    def losses(self, model, batch, info):
        loss = ((model(batch["x"]) - 1.0) ** 2).mean()
        if info.iteration == self.nan_at:
            loss = loss * float("nan")
        return {"mse": loss, "l1": loss.sqrt()}


def _trainer(tmp_path, method, epochs=3):
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1)
    sampler = EpochBatchSampler(16, 4, seed=0)
    loader = torch.utils.data.DataLoader(_Rows(), batch_sampler=sampler)
    optimizer = build_optimizer(method.param_groups(model, 0.01), "sgd", 0.01, 0.0)
    return Trainer(model=model, method=method, loader=loader, sampler=sampler, optimizer=optimizer,
                   scheduler=PolyLR(optimizer, 4 * epochs), epochs=epochs, device=torch.device("cpu"),
                   last_path=tmp_path / "last.pt", fingerprint="f", files=RunFiles.of(tmp_path, directory=True),
                   outputs=[str(tmp_path / "checkpoint.pt")])


def test_losses_are_read_on_the_host_only_at_flushes(tmp_path, monkeypatch):
    trainer = _trainer(tmp_path, _Regression())
    reads = []
    for name in ("cpu", "item", "tolist"):
        real = getattr(torch.Tensor, name)

        def counting(self, *args, _real=real, _name=name, **kwargs):
            reads.append((_name, tuple(self.shape)))
            return _real(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counting)
    in_iterations = []
    for name in ("train_step",):
        step = getattr(trainer, name)

        def watched(*args, _step=step):
            before = len(reads)
            _step(*args)
            in_iterations.append(len(reads) - before)

        setattr(trainer, name, watched)
    advance = trainer.monitor.advance

    def watched_advance(iteration):
        before = len(reads)
        advance(iteration)
        in_iterations.append(len(reads) - before)

    trainer.monitor.advance = watched_advance
    trainer.fit()
    assert len(in_iterations) == 24 and not any(in_iterations)  # no host read inside an iteration
    # one read of the 4 buffered iterations (2 losses and the total) per epoch end
    assert reads.count(("cpu", (4, 3))) == 3
    columns, rows = read_losses(tmp_path / "losses.csv")
    assert columns == ["iteration", "epoch", "lr_model", "mse", "l1", "total"]
    assert [r["iteration"] for r in rows] == list(range(1, 13))
    means = [sum(r["mse"] for r in rows if r["epoch"] == e) / 4 for e in (1, 2, 3)]
    assert [h["losses"]["mse"] for h in trainer.history] == pytest.approx(means, rel=1e-12)
    progress = json.loads((tmp_path / "progress.json").read_text())
    assert progress["state"] == "trained" and progress["iteration"] == 12 and progress["epochs"] == 3
    assert progress["losses"]["total"] == rows[-1]["total"]


def test_non_finite_loss_stops_before_last_pt(tmp_path):
    trainer = _trainer(tmp_path, _Regression(nan_at=5))  # iteration 6 (0-based 5): epoch 2
    with pytest.raises(NonFiniteError, match=r"loss mse is nan at epoch 2, iteration 2"):
        trainer.fit()
    state = torch.load(tmp_path / "last.pt", weights_only=False)
    assert state["epoch"] == 1 and state["iteration"] == 4  # epoch 1's, never the diverged weights
    assert all(torch.isfinite(v).all() for v in state["model"].values())
    progress = json.loads((tmp_path / "progress.json").read_text())
    assert progress["state"] == "failed" and "nan" in progress["error"]
    _, rows = read_losses(tmp_path / "losses.csv")
    assert rows[-1]["iteration"] == 8 and np.isnan(rows[5]["mse"])  # the diverging rows are kept to look at
    assert run_status(tmp_path)["status"] == "failed"


# -- log.txt and progress lines ----------------------------------------------------------------------
def test_log_file_tees_with_timestamps_and_the_ending(tmp_path):
    import re

    path = tmp_path / "run" / "log.txt"
    with log_file(path):
        log("first line\nsecond line")
    with pytest.raises(NonFiniteError):
        with log_file(path):
            log("resumed")
            raise NonFiniteError("loss ce is nan")
    lines = path.read_text().splitlines()
    assert all(re.match(STAMP, line) for line in lines)
    texts = [line[20:] for line in lines]
    assert texts[0].startswith("$ incseg") and texts[1:3] == ["first line", "second line"]
    assert texts[3].startswith("$ incseg") and texts[4:] == ["resumed", "error: loss ce is nan"]
    # bad options refuse a command: the log it would have started is not left behind
    refused = tmp_path / "refused.log"
    with pytest.raises(UsageError):
        with log_file(refused):
            raise UsageError("--epochs must be >= 1")
    assert not refused.exists()


def test_plain_progress_lines_carry_rate_and_eta(capsys, monkeypatch):
    monkeypatch.setattr(console, "_interactive", lambda: False)
    with ProgressBar(100, "epoch 1/5", log_every=0.0, done=20) as bar:
        time.sleep(0.02)
        bar.advance(10, postfix="loss 1.2345")
    err = capsys.readouterr().err
    assert "epoch 1/5: 30/100 (30%)" in err and "it/s, ETA " in err and "loss 1.2345" in err
    assert 0 < bar.rate() <= 10 / 0.02 and bar.eta() >= 70 / (10 / 0.02)  # 20 done before: not in the rate


# -- status from files --------------------------------------------------------------------------------
def _fake_run(path: Path, state: str, pid: int, manifest_status: str = "running") -> Path:
    path.mkdir(parents=True)
    (path / "manifest.json").write_text(json.dumps({"status": manifest_status, "argv": ["incseg", "train-base"],
                                                    "epochs": []}))
    (path / "progress.json").write_text(json.dumps({
        "state": state, "stage": "train-base", "pid": pid, "host": os.uname().nodename, "epoch": 2, "epochs": 5,
        "iteration": 30, "iterations": 75, "it_per_s": 3.0, "eta_seconds": 15.0, "losses": {"ce": 1.5, "total": 1.5},
        "updated_unix": time.time(), "resume_state": str(path / "last.pt")}))
    return path


def test_status_tells_running_interrupted_and_stale_runs_apart(tmp_path):
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    # a process whose command line names incseg, as a running stage's does
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "incseg"])
    try:
        # until the child has exec'd, /proc shows the parent's command line (a race under load)
        deadline = time.monotonic() + 30
        while b"incseg" not in Path(f"/proc/{alive.pid}/cmdline").read_bytes():
            assert time.monotonic() < deadline
            time.sleep(0.01)
        running = run_status(_fake_run(tmp_path / "a", "running", alive.pid))
        assert running["status"] == "running" and running["epoch"] == 2 and running["eta_seconds"] <= 15.0
        stale = run_status(_fake_run(tmp_path / "b", "running", gone.pid))
        assert stale["status"] == "stale" and "process is gone" in stale["note"]
        interrupted = run_status(_fake_run(tmp_path / "c", "interrupted", gone.pid))
        assert interrupted["status"] == "interrupted" and interrupted["eta_seconds"] is None
    finally:
        alive.kill()
        alive.wait()
    with pytest.raises(InputError, match="not found"):
        run_status(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="not an incseg run directory"):
        run_status(tmp_path / "empty")


# -- end to end through the CLI -----------------------------------------------------------------------
def _cli(*args, env=None):
    full = dict(os.environ, INCSEG_NO_PROGRESS="1", **(env or {}))
    full.pop("INCSEG_DEBUG", None)
    return subprocess.run([sys.executable, "-m", "incseg_cli", *map(str, args)], capture_output=True, text=True,
                          env=full, timeout=300)


@pytest.mark.slow
def test_status_of_a_running_then_interrupted_run(toy_root, toy_env, tmp_path):
    out = tmp_path / "running"
    proc = start_train_base(toy_root, toy_env, out, epochs=40)
    try:
        wait_for_file(out / "progress.json", proc)
        r = _cli("status", out, "--json")
        assert r.returncode == 0, r.stderr
        (s,) = json.loads(r.stdout)
        assert s["status"] == "running" and s["stage"] == "train-base" and s["pid"] == proc.pid
        assert s["epochs"] == 40 and s["iterations"] == 40 * 13 and 0 <= s["iteration"] < s["iterations"]
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    text = format_status(run_status(out))  # what `incseg status` prints, without starting one more process
    assert text.startswith(f"{out}: interrupted (train-base)") and "/40, iteration " in text, text
    assert "rerun the same command" in text


@pytest.mark.slow
def test_losses_csv_continues_across_an_interruption_with_exact_epoch_means(base_run, toy_root, toy_env, tmp_path):
    """base_run: the same command (2 epochs), never interrupted."""
    import re

    out = tmp_path / "resumed"
    proc = start_train_base(toy_root, toy_env, out, epochs=2)
    wait_for_file(out / "last.pt", proc)
    proc.send_signal(signal.SIGINT)  # after epoch 1's last.pt: stops at the next iteration boundary
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    _, before = read_losses(out / "losses.csv")
    # epoch 2 was cut; the signal may land before its first iteration (then 13 rows, epoch 1's)
    assert 13 <= len(before) < 26
    r = _cli("train-base", "--data", toy_root, "--task", "10-10-ov", *TOY_TRAIN_ARGS, "--epochs", "2",
             "--out", out, env=toy_env)
    assert r.returncode == 0 and "resuming" in r.stderr, r.stderr
    assert (out / "losses.csv").read_text() == (base_run / "losses.csv").read_text()  # no gap, no duplicate
    straight = json.loads((base_run / "manifest.json").read_text())["epochs"]
    resumed = json.loads((out / "manifest.json").read_text())["epochs"]
    assert [e["losses"] for e in resumed] == [e["losses"] for e in straight]  # exact, not approx
    _, rows = read_losses(out / "losses.csv")
    assert resumed[1]["losses"]["total"] == pytest.approx(
        sum(r["total"] for r in rows if r["epoch"] == 2) / 13, rel=1e-12)
    # log.txt: both invocations, timestamped, how the first ended, what the second wrote
    log_lines = (out / "log.txt").read_text().splitlines()
    assert all(re.match(STAMP, line) for line in log_lines)
    texts = [line[20:] for line in log_lines]
    assert sum(t.startswith("$ incseg train-base") for t in texts) == 2
    assert any(t.startswith("interrupted: ") for t in texts)
    assert texts[-1] == f"wrote {out / 'checkpoint.pt'}, metrics.json, manifest.json, losses.csv, log.txt"
    assert texts[-1] in r.stderr
    # status of the finished runs, as JSON
    r = _cli("status", out, base_run, tmp_path / "not-a-run", "--json")
    assert r.returncode == 0, r.stderr
    assert "not-a-run: not found" in r.stderr
    statuses = json.loads(r.stdout)
    assert [s["status"] for s in statuses] == ["complete", "complete"]
    s = statuses[0]
    assert (s["stage"], s["epoch"], s["epochs"], s["iteration"], s["iterations"]) == ("train-base", 2, 2, 26, 26)
    assert s["losses"]["total"] == rows[-1]["total"] and s["it_per_s"] > 0
    assert {Path(p).name for p in s["outputs"]} >= {"checkpoint.pt", "metrics.json", "losses.csv", "log.txt"}
    assert s["miou"]["all"] == json.loads((out / "metrics.json").read_text())["miou"]["all"]


def test_a_command_refused_by_the_lock_adds_nothing_to_the_holders_log(tmp_path):
    from incseg_cli.errors import LockedError

    path = tmp_path / "bank.h5.log"
    with log_file(path):
        log("holder: extracting")
    before = path.read_text()
    with pytest.raises(LockedError):
        with log_file(path):
            raise LockedError("bank.h5: another incseg is writing it")
    assert path.read_text() == before
    fresh = tmp_path / "other.log"
    with pytest.raises(LockedError):
        with log_file(fresh):
            raise LockedError("locked")
    assert not fresh.exists()
