"""A failing DataLoader worker ends the command cleanly, every time (signals.Loader).

Each failing input runs REPEAT times with 2 workers, two runs at a time (the failures were
races: a hang or a late traceback in some runs, not all). A subprocess per run would pay the
imports each time (seconds here), so one driver process imports incseg and torch once and forks a
fresh child per run; the child runs ``incseg_cli.cli.main()`` as the ``incseg`` script does
and leaves through ``sys.exit``, so the interpreter's teardown, where the hangs and the
late tracebacks happened, runs in every child. The driver kills a child that outlives the
bound (a hang) and the process group left behind by one that did not (a leftover worker).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from helpers import TOY_TRAIN_ARGS

REPEAT = 8  # runs per case (was 20, ~60 s of the suite; each run still forks a fresh child)
RUN_TIMEOUT_S = 30  # a child still running after this is a hang

DRIVER = r'''
import json, os, signal, sys, time

spec = json.loads(sys.argv[1])
import torch  # noqa: F401  (imported once here; every child is a fork)
import incseg_cli.cli
from incseg_cli.cli import predict_cmds, train_cmds  # noqa: F401
from incseg_cli.stages import predict, training  # noqa: F401
import gc
import typer._adapters  # noqa: F401  (what typer imports on a command's first parse)

# A child's teardown collects every object; frozen, the driver's are skipped (and not
# copied page by page on write), which takes a second off each child.
gc.collect()
gc.freeze()

LATE = ("Traceback", "Exception in thread", "Exception ignored", "semaphore", "Bad file descriptor",
        "killed by signal", "exited unexpectedly")


def group_left(pgid):
    """Whether anything of the child's process group outlived it (killed if so)."""
    deadline = time.monotonic() + 1.0
    while True:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return False
        if time.monotonic() > deadline:
            os.killpg(pgid, signal.SIGKILL)
            return True
        time.sleep(0.02)


def judge(case, counts, samples, err, status, elapsed, hung, pgid):
    code = os.waitstatus_to_exitcode(status)
    left = group_left(pgid)
    text = open(err, errors="replace").read()
    lines = [line for line in text.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    late = any(mark in text for mark in LATE)
    counts["tried"] += 1
    counts["hang"] += hung
    counts["max_s"] = max(counts["max_s"], round(elapsed, 2))
    counts["traceback"] += late
    counts["wrong_exit"] += code != case["code"]
    counts["leftover"] += left
    clean = (not hung and code == case["code"] and not late and not left and len(errors) == 1
             and lines[-1] == errors[0] and case["says"] in errors[0])
    counts["clean"] += clean
    if not clean and len(samples) < 3:
        samples.append({"exit": code, "seconds": round(elapsed, 2), "stderr": text[-1500:]})


def drive():
    """Fork the runs, ``parallel`` at a time; returns (argv, stderr file) in a child, None in
    the driver once every run is judged (the report printed)."""
    report = {case["name"]: (dict(tried=0, clean=0, hang=0, traceback=0, wrong_exit=0, leftover=0, max_s=0.0), [])
              for case in spec["cases"]}
    todo = [(case, rep) for case in spec["cases"] for rep in range(spec["repeat"])]
    running = {}  # pid -> (case, stderr file, start)
    while todo or running:
        while todo and len(running) < spec["parallel"]:
            case, rep = todo.pop(0)
            argv = [a.replace("{rep}", str(rep)) for a in case["argv"]]
            err = os.path.join(spec["tmp"], f"{case['name']}-{rep}.err")
            sys.stdout.flush()
            sys.stderr.flush()
            pid = os.fork()
            if pid == 0:
                os.setpgid(0, 0)
                return argv, err
            try:
                os.setpgid(pid, pid)
            except OSError:
                pass  # the child did it first
            running[pid] = (case, err, time.monotonic())
        for pid, (case, err, start) in list(running.items()):
            done, status = os.waitpid(pid, os.WNOHANG)
            hung = not done and time.monotonic() - start > spec["timeout"]
            if hung:
                os.killpg(pid, signal.SIGKILL)
                _, status = os.waitpid(pid, 0)
            if done or hung:
                del running[pid]
                judge(case, *report[case["name"]], err, status, time.monotonic() - start, hung, pid)
        time.sleep(0.02)
    print(json.dumps({name: {**counts, "samples": samples} for name, (counts, samples) in report.items()}))
    return None


child = drive()
if child is not None:
    argv, err = child
    fd = os.open(err, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(fd, 2)
    os.close(fd)
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 1)
    os.close(null)
    sys.argv = ["incseg", *argv]
    incseg_cli.cli.main()  # exits through sys.exit and the interpreter's teardown
'''


def run_driver(tmp_path: Path, cases: list[dict], env: dict, timeout: float) -> dict:
    spec = {"cases": cases, "repeat": REPEAT, "timeout": RUN_TIMEOUT_S, "tmp": str(tmp_path), "parallel": 2}
    full_env = dict(os.environ, INCSEG_NO_PROGRESS="1", OMP_NUM_THREADS="1", **env)
    full_env.pop("INCSEG_DEBUG", None)
    result = subprocess.run([sys.executable, "-c", DRIVER, json.dumps(spec)], capture_output=True, text=True,
                            env=full_env, cwd=tmp_path, timeout=timeout)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def assert_all_clean(report: dict) -> None:
    for name, counts in report.items():
        assert counts["clean"] == counts["tried"] == REPEAT, (name, counts)


def noise(size: int = 48) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8)


def bad_folder(root: Path, kind: str) -> Path:
    """A folder of good images and one bad one: ``jpg`` half a JPEG, ``png`` half a PNG,
    ``tif`` a floating-point TIFF. Their headers read, so predict finds them only in a worker."""
    folder = root / kind
    folder.mkdir()
    for k in range(5):
        Image.fromarray(noise()).save(folder / f"good{k}.png")
    if kind == "tif":
        Image.fromarray(np.random.default_rng(1).random((48, 48)).astype(np.float32), mode="F").save(folder / "bad.tif")
    else:
        path = folder / f"bad.{kind}"
        Image.fromarray(noise()).save(path, "JPEG" if kind == "jpg" else "PNG")
        with open(path, "r+b") as f:
            f.truncate(path.stat().st_size // 2)
    return folder


def test_failing_predict_workers_end_cleanly_every_time(base_run, tmp_path):
    cases = []
    for kind, says in (("jpg", "bad.jpg: unreadable image"), ("png", "bad.png: unreadable image"),
                       ("tif", "bad.tif: floating-point image")):
        folder = bad_folder(tmp_path, kind)
        cases.append({"name": f"predict-{kind}", "code": 3, "says": says,
                      "argv": ["predict", str(base_run), str(folder), "--out", str(tmp_path / f"out-{kind}-{{rep}}"),
                               "--workers", "2", "--batch-size", "1"]})
    report = run_driver(tmp_path, cases, {}, timeout=240)
    assert_all_clean(report)


@pytest.fixture
def lying_root(toy_root, tmp_path) -> Path:
    """The toy root whose masks (a third of them) hold value 30, past its 21 classes, while
    the split files (made from the clean masks) still list them."""
    root = tmp_path / "lying"
    shutil.copytree(toy_root, root)
    for k, path in enumerate(sorted((root / "SegmentationClassAug").glob("*.png"))):
        if k % 3 == 0:
            image = Image.open(path)
            mask = np.array(image)
            mask[:4, :4] = 30
            out = Image.fromarray(mask, mode="P")
            out.putpalette(image.getpalette())
            out.save(path)
    return root


def test_failing_train_workers_end_cleanly_every_time(lying_root, toy_env, tmp_path):
    cases = [{"name": "train-base-mask-values", "code": 3, "says": "mask value 30 is not a",
              "argv": ["train-base", "--data", str(lying_root), "--task", "10-10-ov", *TOY_TRAIN_ARGS,
                       "--epochs", "1", "--workers", "2", "--out", str(tmp_path / "run-{rep}")]}]
    report = run_driver(tmp_path, cases, toy_env, timeout=240)
    assert_all_clean(report)


# -- in this process: the loader's own contract ------------------------------------------------
class _Failing:
    """Item ``bad`` fails in its worker: ``raise`` an InputError with a two-line message, or
    ``kill`` the worker with SIGKILL (what the kernel does when memory runs out)."""

    def __init__(self, how: str, bad: int = 3) -> None:
        self.how, self.bad = how, bad

    def __len__(self) -> int:
        return 16

    def __getitem__(self, index: int) -> int:
        if index == self.bad:
            if self.how == "kill":
                os.kill(os.getpid(), 9)
            from incseg_cli.errors import InputError

            raise InputError("images/x.png: unreadable image\n(second line)")
        return index


@pytest.mark.parametrize("how", ["raise", "kill"])
def test_a_failing_worker_ends_every_worker_with_one_error(how):
    from incseg_cli import signals
    from incseg_cli.errors import IncsegError, InputError

    loader = signals.Loader(_Failing(how), batch_size=1, num_workers=2, persistent_workers=True)
    batches = iter(loader)
    workers = list(batches.inner._workers)
    with pytest.raises(IncsegError) as caught:
        for _ in batches:
            pass
    if how == "raise":
        # the worker's own message, whole: not torch's "Caught InputError in DataLoader worker..."
        assert type(caught.value) is InputError and str(caught.value) == "images/x.png: unreadable image\n(second line)"
    else:
        assert "data-loading worker process died" in str(caught.value) and "--workers 0" in str(caught.value)
    assert len(workers) == 2 and not any(w.is_alive() for w in workers)
    assert loader._iterator is None  # the next epoch starts fresh workers


def test_every_loader_of_the_tool_is_the_guarded_one():
    package = Path(__file__).resolve().parents[1] / "incseg_cli"
    others = [p.relative_to(package).as_posix() for p in package.rglob("*.py")
              if p.name != "signals.py" and "DataLoader(" in p.read_text(encoding="utf-8")]
    assert not others, f"make these signals.Loader: {others}"
