"""The GPU first-run checks without a GPU: scripts/gpu-check.sh under CUDA emulation (the
whole toy chain at 32 px) and its time guard, and the machinery of bench/gpu.py's CLI checks
(the budget, the timeout that stops a process group, the error line of a failure)."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import REPO

SCRIPT = REPO / "scripts" / "gpu-check.sh"
CHAIN = ["cuda", "make-toy-data", "prepare-splits", "train-base", "train-base-bce", "train-step-ft", "train-step-mib",
         "train-step-plop", "train-step-alife", "train-step-wilson", "extract-features", "fit-rotations",
         "finetune-classifier", "evaluate", "predict", "export", "export-run-cuda", "compile", "bench"]

# train-base-bce, ft, wilson and predict: bench/gpu.py's dry run runs them as subprocesses under the
# same emulation (tests/test_speed_paths.py)
SKIPPED_HERE = ["train-base-bce", "train-step-ft", "train-step-plop", "train-step-alife", "train-step-wilson",
                "extract-features", "fit-rotations", "finetune-classifier", "predict"]

needs_bash = pytest.mark.skipif(shutil.which("bash") is None or shutil.which("timeout") is None,
                                reason="needs bash and coreutils timeout")


def _bench_gpu():
    """bench/gpu.py as a module (once; its dataclasses need it in sys.modules)."""
    if "bench_gpu" not in sys.modules:
        spec = importlib.util.spec_from_file_location("bench_gpu", REPO / "bench" / "gpu.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules["bench_gpu"] = module
        spec.loader.exec_module(module)
    return sys.modules["bench_gpu"]


def _incseg() -> str:
    script = Path(sys.executable).with_name("incseg")
    return str(script) if script.is_file() else f"{sys.executable} -m incseg_cli"


def _script_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GPU_CHECK_", "INCSEG_"))}
    env.update(INCSEG=_incseg(), PYTHON=sys.executable, GPU_CHECK_DIR=str(tmp_path / "check"), OMP_NUM_THREADS="1")
    env.update(extra)
    return env


# -- scripts/gpu-check.sh ------------------------------------------------------------------------------
@pytest.mark.slow
@needs_bash
def test_gpu_check_script_under_emulation(tmp_path):
    """The whole acceptance chain on 40 toy images at 32 px, every command believing it has
    an H100: each check passes (compile is skipped: inductor looks for libcuda), one line
    each, the summary line, the JSON, the bench's dry run with the time left."""
    # plop, alife and the bank stages skipped: tests/test_cuda_stages.py runs them on the same
    # emulated GPU (and WILSON's fp16 with its GradScaler); what is left still covers every kind
    # of check and the skips they cause
    env = _script_env(tmp_path, INCSEG_EMULATE_CUDA="1", GPU_CHECK_SIZE="32", GPU_CHECK_IMAGES="40",
                      GPU_CHECK_BENCH_ARGS="--stages train-base-bce evaluate",
                      GPU_CHECK_SKIP=" ".join(["compile", *SKIPPED_HERE]))
    start = time.monotonic()
    proc = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path)
    seconds = time.monotonic() - start
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    skipped = ["compile", *SKIPPED_HERE]
    for name in CHAIN:
        if name in skipped:
            assert f"SKIP {name}: GPU_CHECK_SKIP" in lines, (name, proc.stdout)
        else:
            assert any(line.startswith(f"PASS {name} ") for line in lines), (name, proc.stdout)
    assert lines[-1].startswith(f"gpu-check: {len(CHAIN) - len(skipped)} passed, 0 failed, {len(skipped)} skipped "
                                "in "), lines[-1]
    assert "CUDA emulated" in lines[-1]
    summary = json.loads((tmp_path / "check" / "gpu-check.json").read_text())
    assert summary["emulated"] and summary["gpus"] == 1 and summary["toy"]["crop_and_eval_size"] == 32
    assert [c["name"] for c in summary["checks"]] == CHAIN
    for check in summary["checks"]:
        if check["name"] not in skipped:
            assert check["status"] == "pass" and check["exit_code"] == 0 and check["seconds"] >= 0, check
            assert check["command"], check
    # the runs went to the (emulated) GPU in the precision each stage trains in
    runs = tmp_path / "check" / "runs"
    for run, amp in (("step0", "off"), ("step1-mib", "off")):
        manifest = json.loads((runs / run / "manifest.json").read_text())
        assert manifest["device"] == "cuda:0", run
        assert amp is None or manifest["amp"] == amp, run
    bench = json.loads(Path(summary["bench"]).read_text())
    assert bench["emulated"] and set(bench["stages"]) == {"train-base-bce", "evaluate"}
    assert any(c["precision"] == "fp16" and c["grad_scaler"] for c in bench["stages"]["train-base-bce"]["configs"])
    assert seconds < 180, seconds  # about 100 s on 2 cores


@needs_bash
def test_gpu_check_script_keeps_to_its_budget(tmp_path):
    """A budget too small for anything: nothing starts, every check says why, exit 2."""
    env = _script_env(tmp_path, INCSEG_EMULATE_CUDA="1", GPU_CHECK_BUDGET="10")
    start = time.monotonic()
    proc = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, env=env, timeout=60, cwd=tmp_path)
    assert time.monotonic() - start < 10
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stdout.splitlines()[0].startswith("SKIP cuda: budget")
    summary = json.loads((tmp_path / "check" / "gpu-check.json").read_text())
    statuses = {c["name"]: c["status"] for c in summary["checks"]}
    assert statuses["cuda"] == "skipped: budget" and statuses["train-base"] == "skipped: needs prepare-splits"
    assert statuses["compile"] == "skipped: GPU_CHECK_SKIP" and summary["failed"] == 0


@pytest.mark.slow
@needs_bash
def test_gpu_check_script_stops_a_command_at_the_time_left(tmp_path):
    """A command that would run past the budget is stopped there (its whole process group)
    and fails with a line that says so; the script ends within its budget."""
    slow = tmp_path / "slow-incseg"
    slow.write_text(f"#!/bin/sh\nsleep 120 &\necho $! > {tmp_path}/child.pid\nsleep 120\n")
    slow.chmod(0o755)
    env = _script_env(tmp_path, INCSEG_EMULATE_CUDA="1", INCSEG=str(slow), GPU_CHECK_BUDGET="34")
    start = time.monotonic()
    proc = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, env=env, timeout=120, cwd=tmp_path)
    assert time.monotonic() - start < 34, proc.stdout
    assert proc.returncode == 1, proc.stdout + proc.stderr
    failed = next(line for line in proc.stdout.splitlines() if line.startswith("FAIL "))
    assert failed.startswith("FAIL make-toy-data ") and "stopped at the time left" in failed, failed
    assert "SKIP prepare-splits: needs make-toy-data" in proc.stdout
    child = int((tmp_path / "child.pid").read_text())
    time.sleep(0.2)
    assert not Path(f"/proc/{child}").exists() or "Z" in Path(f"/proc/{child}/stat").read_text().split()[2]


# -- bench/gpu.py's CLI checks ---------------------------------------------------------------------------
def test_error_line_of_a_failed_command():
    gpu = _bench_gpu()
    torchrun = ("note: CUDA emulated on the CPU\n[rank1]: Traceback (most recent call last):\n"
                "[rank1]:   File \"x.py\", line 1, in <module>\n"
                "[rank1]: ValueError: SyncBatchNorm layers only work with GPU modules\n"
                "E1207 torch/distributed/elastic: failed (exitcode: 1)\n" + "=" * 60 + "\nRoot Cause:\n" + "=" * 60 + "\n")
    assert gpu.error_line(torchrun) == "ValueError: SyncBatchNorm layers only work with GPU modules"
    assert gpu.error_line("note: something\nerror: --data is missing (see incseg evaluate --help)\n") == (
        "error: --data is missing (see incseg evaluate --help)")
    assert gpu.error_line("something went wrong\n" + "-" * 20 + "\n") == "something went wrong"
    assert gpu.error_line("") is None


def test_run_process_stops_the_process_group_at_the_timeout(tmp_path, monkeypatch):
    gpu = _bench_gpu()
    monkeypatch.setattr(gpu, "KILL_GRACE", 2.0)
    pidfile = tmp_path / "child.pid"
    start = time.monotonic()
    code, stderr, timed_out = gpu.run_process(
        ["sh", "-c", f"echo starting >&2; sleep 60 & echo $! > {pidfile}; wait"], dict(os.environ), tmp_path, 1.0,
        tmp_path / "slow")
    assert timed_out and code != 0 and stderr == "starting\n"
    assert time.monotonic() - start < 10
    child = int(pidfile.read_text())
    time.sleep(0.2)
    assert not Path(f"/proc/{child}").exists() or "Z" in Path(f"/proc/{child}/stat").read_text().split()[2]


def _cli(gpu, gpus: int = 1):
    return gpu.CliSettings(images=32, val_images=6, size=32, crop=32, batch=8, jobs=2, seconds_scale=1.0, gpus=gpus,
                           emulate=str(gpus))


def test_cli_checks_skip_what_the_budget_cannot_fit(tmp_path):
    gpu = _bench_gpu()
    lines: list[str] = []
    result = gpu.run_cli_checks(_cli(gpu), tmp_path, lambda: 12.0, lines.append)  # every check needs more
    statuses = {c["name"]: c["status"] for c in result["checks"]}
    assert statuses["make-toy-data"] == "skipped: budget" and statuses["prepare-splits"] == "skipped: needs make-toy-data"
    assert statuses["predict"] == "skipped: needs train-step-mib"
    assert (result["passed"], result["failed"], result["skipped"]) == (0, 0, len(statuses))
    assert not list((tmp_path / "logs").iterdir())  # nothing was started
    assert len(lines) == len(statuses)


def test_cli_checks_record_a_failure_and_skip_what_needs_it(tmp_path, monkeypatch):
    gpu = _bench_gpu()
    monkeypatch.setattr(gpu, "incseg_command", lambda: ["sh", "-c", "echo 'note: x' >&2; echo 'error: broken' >&2; exit 3",
                                                         "incseg"])
    result = gpu.run_cli_checks(_cli(gpu, gpus=2), tmp_path, lambda: 300.0, lambda line: None)
    first = result["checks"][0]
    assert first["name"] == "make-toy-data" and first["status"] == "fail" and first["exit_code"] == 3
    assert first["error"] == first["stderr_last_line"] == "error: broken" and first["seconds"] >= 0
    assert first["command"].startswith("sh -c ")
    names = [c["name"] for c in result["checks"]]
    assert names[-2:] == ["ddp2-train-base", "ddp2-train-step-mib"]  # several GPUs: the torchrun checks
    assert all(c["status"].startswith("skipped: needs ") for c in result["checks"][1:])
    assert (result["passed"], result["failed"]) == (0, 1)


def test_cli_checks_fail_a_run_that_did_not_go_to_cuda(tmp_path):
    """Exit 0 is not enough: a training run must say cuda:N in its manifest."""
    gpu = _bench_gpu()
    check = gpu.Check("train-base", ["true"], expect=(("runs/step0/manifest.json", r'"device": "cuda:\d+"'),))
    (tmp_path / "runs" / "step0").mkdir(parents=True)
    (tmp_path / "runs" / "step0" / "manifest.json").write_text('{"device": "cpu"}')
    assert "does not match" in gpu._unmet(check, tmp_path)
    (tmp_path / "runs" / "step0" / "manifest.json").write_text('{"device": "cuda:0"}')
    assert gpu._unmet(check, tmp_path) is None
