"""scripts/slurm (issue 21, "Clusters"): the sbatch templates and their machinery, chain.sh,
under plain bash. A toy chain stopped by SIGUSR1 (SLURM's --signal=B:USR1 warning) exits 130
with last.pt written, and its rerun ends with the files of an uninterrupted run. Stand-ins for
incseg, torchrun, srun and scontrol check each template's commands, the torchrun and srun
launch lines and the requeue, in milliseconds."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from helpers import FAKE_INCSEG, REPO, TOY_TRAIN_ARGS
from incseg_cli.engine.checkpoint import load_checkpoint

SLURM = REPO / "scripts" / "slurm"
TEMPLATES = sorted(SLURM.glob("*.sbatch"))
INCSEG = Path(sys.executable).parent / "incseg"

TOY_CHAIN = """
chain() {
    run_stage train-base --data "$VOC_ROOT" --task 10-10-ov --out "$RUNS/step0"
    run_stage evaluate "$RUNS/step0" --data "$VOC_ROOT" --out "$RUNS/step0-eval.json"
}
"""

FAKE_LOGGER = '#!/bin/bash\necho "{name} $*" >> "$FAKE_LOG"\n'


def _env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_") and k != "INCSEG_DEBUG"}
    env.update(INCSEG_NO_PROGRESS="1", OMP_NUM_THREADS="1", **{k: str(v) for k, v in extra.items()})
    return env


def _start(template: Path, env: dict, log: Path, cwd: Path) -> subprocess.Popen:
    with open(log, "w") as fh:
        return subprocess.Popen(["bash", str(template)], stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=cwd,
                                start_new_session=True)  # its own process group, as a batch job


def _wait_for(path: Path, proc: subprocess.Popen, log: Path, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, log.read_text()
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.01)


# -- the templates --------------------------------------------------------------------------------
def test_templates_parse_and_handle_preemption():
    assert {t.name for t in TEMPLATES} >= {"voc-15-5.sbatch", "alife-voc-15-1.sbatch", "plop-voc-15-5.sbatch",
                                           "mib-voc-15-5.sbatch", "multinode-voc-15-5.sbatch"}
    for path in [*TEMPLATES, SLURM / "chain.sh"]:
        r = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True)
        assert r.returncode == 0, (path, r.stderr)
    for path in TEMPLATES:
        text = path.read_text()
        assert "#SBATCH --signal=B:USR1@120" in text and "#SBATCH --requeue" in text, path
        assert "run_chain chain" in text and "chain.sh" in text, path
    library = (SLURM / "chain.sh").read_text()
    assert 'scontrol requeue "$SLURM_JOB_ID"' in library and "trap '_chain_signal USR1' USR1" in library
    multinode = (SLURM / "multinode-voc-15-5.sbatch").read_text()
    assert "--nodes=2" in multinode and "--ntasks-per-node=1" in multinode


@pytest.fixture
def fakes(tmp_path) -> Path:
    """A folder of stand-ins for incseg, torchrun, srun and scontrol (first on PATH)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "incseg").write_text(FAKE_INCSEG)
    for name in ("torchrun", "srun"):
        (bin_dir / name).write_text(FAKE_LOGGER.format(name=name))
    (bin_dir / "scontrol").write_text(FAKE_LOGGER.format(name="scontrol") + 'if [[ $1 == show ]]; then echo node7; fi\n')
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    return bin_dir


def _fake_env(fakes: Path, tmp_path: Path, **extra) -> dict:
    return _env(PATH=f"{fakes}:{os.environ['PATH']}", INCSEG=fakes / "incseg", FAKE_LOG=tmp_path / "calls.txt", **extra)


@pytest.mark.parametrize("name, first, last, count", [
    ("voc-15-5", "train-base --data voc --task 15-5 --loss bce --out runs/voc/15-5/step0-bce",
     "evaluate runs/voc/15-5/step1-wilson --data voc --out runs/voc/15-5/step1-wilson-eval.json", 3),
    ("mib-voc-15-5", "train-base --data voc --task 15-5-ov --out runs/voc/15-5-ov/step0-ce",
     "evaluate runs/voc/15-5-ov/step1-mib --data voc --out runs/voc/15-5-ov/mib.json", 3),
    ("plop-voc-15-5", "train-base --data voc --task 15-5-ov --out runs/voc/15-5-ov/step0-ce",
     "evaluate runs/voc/15-5-ov/step1-plop --data voc --out runs/voc/15-5-ov/plop.json", 3),
    ("alife-voc-15-1", "train-base --data voc --task 15-1-ov --align-corners --out runs/voc/15-1-ov/step0",
     "evaluate runs/voc/15-1-ov/step5-alife-m --data voc --eval-size 512 --out runs/voc/15-1-ov/alife-m.json",
     1 + 5 * 4 + 4 + 2),
], ids=["voc-15-5", "mib-voc-15-5", "plop-voc-15-5", "alife-voc-15-1"])
def test_each_template_runs_its_chain_under_torchrun(name, first, last, count, fakes, tmp_path):
    """GPUS=2: the stages that run under torchrun go through `torchrun --standalone`, the
    others run as one process; OPTS_<COMMAND> reaches every stage of that command."""
    env = _fake_env(fakes, tmp_path, GPUS=2, VOC_ROOT="voc", OPTS_EVALUATE="--eval-size 9 --per-class")
    r = subprocess.run(["bash", str(SLURM / f"{name}.sbatch")], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "chain complete" in r.stderr
    calls = (tmp_path / "calls.txt").read_text().splitlines()
    assert len(calls) == count, calls
    torchrun = f"torchrun --standalone --nnodes 1 --nproc-per-node 2 {fakes / 'incseg'} "
    assert calls[0] == torchrun + first
    assert calls[-1] == torchrun + last + " --eval-size 9 --per-class"
    for call in calls:
        single = call.split()[0] == "incseg"
        assert single == any(c in call for c in ("extract-features", "fit-rotations")), call


def test_multinode_launches_one_torchrun_per_node(fakes, tmp_path):
    env = _fake_env(fakes, tmp_path, SLURM_JOB_ID=77, SLURM_NNODES=2, SLURM_JOB_NODELIST="node[7-8]",
                    SLURM_GPUS_ON_NODE=4, SLURM_CPUS_PER_TASK=32, VOC_ROOT="voc")
    r = subprocess.run(["bash", str(SLURM / "multinode-voc-15-5.sbatch")], capture_output=True, text=True, env=env,
                       cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    calls = [c for c in (tmp_path / "calls.txt").read_text().splitlines() if c.startswith("srun")]
    assert len(calls) == 3
    for k, call in enumerate(calls, 1):
        assert call.startswith(f"srun --nodes 2 --ntasks-per-node 1 --cpus-per-task 32 {fakes / 'torchrun'} --nnodes 2 "
                               "--nproc-per-node 4 --rdzv-backend c10d --rdzv-endpoint node7:29500 "
                               f"--rdzv-id 77-{k} {fakes / 'incseg'} "), call
    assert calls[1].endswith("train-step --prev runs/voc/15-5/step0-bce --data voc --method wilson "
                             "--out runs/voc/15-5/step1-wilson")


@pytest.mark.parametrize("slurm", [True, False])
def test_usr1_stops_the_stage_then_requeues(slurm, fakes, tmp_path):
    """USR1 during the second stage: it gets SIGTERM, the script waits for it, then under SLURM
    `scontrol requeue`; without SLURM it says "rerun to resume". Exit 130 either way."""
    extra = {"SLURM_JOB_ID": 77} if slurm else {}
    env = _fake_env(fakes, tmp_path, FAKE_BLOCK="train-step", **extra)
    log = tmp_path / "log.txt"
    proc = _start(SLURM / "voc-15-5.sbatch", env, log, tmp_path)
    _wait_for(tmp_path / "calls.txt.blocked", proc, log, timeout=30)
    proc.send_signal(signal.SIGUSR1)
    assert proc.wait(timeout=30) == 130, log.read_text()
    calls = (tmp_path / "calls.txt").read_text().splitlines()
    tail = ["TERM train-step", "scontrol requeue 77"] if slurm else ["TERM train-step"]
    assert calls[-len(tail):] == tail and calls[-len(tail) - 1].startswith("incseg train-step"), calls
    assert not any("evaluate" in c for c in calls)
    assert ("requeued job 77" in log.read_text()) == slurm
    assert ("rerun to resume" in log.read_text()) != slurm


# -- a real toy chain -------------------------------------------------------------------------------
def _run_files(runs: Path) -> dict:
    ckpt = load_checkpoint(runs / "step0" / "checkpoint.pt")
    metrics = json.loads((runs / "step0-eval.json").read_text())
    return {"model": ckpt.model, "losses": (runs / "step0" / "losses.csv").read_text(),
            "metrics": [metrics["miou"], metrics["groups"], metrics["confusion"]]}


@pytest.mark.slow
def test_toy_chain_stopped_by_usr1_resumes_to_the_same_weights(toy_root, toy_env, tmp_path):
    """train-base then evaluate on the toy data through voc-15-5.sbatch (CHAIN=toy chain): once
    uninterrupted; once stopped by SIGUSR1 to the script after the first epoch's last.pt (exit
    130, last.pt written) and rerun. Same weights, losses.csv and mIoU."""
    chain = tmp_path / "toy-chain.sh"
    chain.write_text(TOY_CHAIN)
    template = SLURM / "voc-15-5.sbatch"

    def env(runs: Path) -> dict:
        return _env(**toy_env, INCSEG=INCSEG, CHAIN=chain, VOC_ROOT=toy_root, RUNS=runs,
                    OPTS_TRAIN_BASE=" ".join([*TOY_TRAIN_ARGS, "--workers", "0", "--epochs", "3"]),
                    OPTS_EVALUATE="--eval-size 32 --workers 0")

    # the reference, never interrupted, runs beside the other two (one torch thread each)
    ref, ref_log = tmp_path / "ref", tmp_path / "ref.txt"
    reference = _start(template, env(ref), ref_log, tmp_path)
    try:
        _stop_and_rerun(template, env, tmp_path)
        assert reference.wait(timeout=300) == 0, ref_log.read_text()
    finally:
        if reference.poll() is None:  # a failed check: the script and its stage
            os.killpg(reference.pid, signal.SIGKILL)
            reference.wait()
    assert "chain complete" in ref_log.read_text()

    runs = tmp_path / "runs"
    a, b = _run_files(ref), _run_files(runs)
    assert a["model"].keys() == b["model"].keys()
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert a["losses"] == b["losses"] and a["losses"].count("\n") == 3 * 13 + 1
    assert a["metrics"] == b["metrics"]


def _stop_and_rerun(template: Path, env, tmp_path: Path) -> None:
    """The chain stopped by the batch shell's warning signal, then rerun."""
    runs, log = tmp_path / "runs", tmp_path / "stopped.txt"
    proc = _start(template, env(runs), log, tmp_path)
    _wait_for(runs / "step0" / "last.pt", proc, log)
    proc.send_signal(signal.SIGUSR1)
    assert proc.wait(timeout=120) == 130, log.read_text()
    text = log.read_text()
    assert "USR1: stopping the running stage" in text and "rerun to resume" in text, text
    assert "Traceback" not in text and "requeue" not in text
    stopped_in_training = (runs / "step0" / "last.pt").exists()
    # the rare other case: the process was descheduled past the stage's end
    assert stopped_in_training or (runs / "step0" / "checkpoint.pt").exists(), text
    assert not (runs / "step0-eval.json").exists()

    log = tmp_path / "rerun.txt"
    proc = _start(template, env(runs), log, tmp_path)
    assert proc.wait(timeout=300) == 0, log.read_text()
    text = log.read_text()
    assert "chain complete" in text
    assert ("resuming" in text) == stopped_in_training, text
    assert not (runs / "step0" / "last.pt").exists()
