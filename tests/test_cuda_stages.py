"""Every stage of every method takes its CUDA branches (issue 18): the CLI in this process under
the CUDA emulation (incseg_cli/testing/cuda.py), with the default ``--device auto``, in fp32,
fp16 (with GradScaler) and bf16, computing real losses and metrics on the CPU.

The chains of each precision start their steps from the same fp32 step-0 runs, so the first
iteration of every step sees the same weights and batch: its losses differ from fp32 only by
the precision, within the tolerances below.
"""

from __future__ import annotations

import csv
import json
import math
import subprocess
from pathlib import Path

import pytest
import torch

from helpers import TOY_TRAIN_ARGS

pytestmark = pytest.mark.slow

AMPS = ("off", "fp16", "bf16")
STEP_METHODS = ("ft", "mib", "plop", "alife")
# Relative tolerance of a first-iteration loss against fp32 (absolute below 1e-3): the toy
# network's logits carry fp16's 11-bit and bf16's 8-bit mantissas through a few layers.
TOLERANCE = {"fp16": 0.01, "bf16": 0.03}


def _run(args: list) -> subprocess.CompletedProcess:
    from incseg_cli.cli import main

    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in args])
    return subprocess.CompletedProcess(args, exc.value.code)


def _chain(root: Path, out: Path, amp: str, base: Path) -> dict[str, subprocess.CompletedProcess]:
    """Every stage at ``--amp amp``; the steps start from ``base``'s step-0 runs."""
    one = [*TOY_TRAIN_ARGS, "--epochs", "1", "--amp", amp, "--workers", "0"]
    data = ["--data", root]
    done: dict[str, subprocess.CompletedProcess] = {}

    def stage(name: str, *args) -> None:
        done[name] = _run(list(args))

    stage("s0", "train-base", *data, "--task", "10-10-ov", *one, "--out", out / "s0")
    stage("s0bce", "train-base", *data, "--task", "10-10-ov", *one, "--loss", "bce", "--out", out / "s0bce")
    for method in STEP_METHODS:
        stage(f"s1-{method}", "train-step", "--prev", base / "s0", "--method", method, *data, *one,
              "--out", out / f"s1-{method}")
    stage("s1-wilson", "train-step", "--prev", base / "s0bce", "--method", "wilson", *data,
          *[a if a != "1" else "2" for a in one], "--pseudo-epochs", "1", "--out", out / "s1-wilson")
    bank = ["--preset", "toy", "--amp", amp, "--workers", "0"]
    stage("bank0", "extract-features", "--prev", base / "s0", *data, *bank, "--samples", "8", "--out", out / "bank0.h5")
    stage("rot1", "fit-rotations", "--bank", base / "bank0.h5", "--prev", base / "s0", "--current", base / "s1-alife",
          *data, *bank, "--epochs", "1", "--batch-size", "8", "--crop-size", "32", "--out", out / "rot1.pt",
          "--out-bank", out / "bank1.h5")
    stage("rotate", "rotate-bank", "--bank", base / "bank0.h5", "--rotations", out / "rot1.pt",
          "--out", out / "bank1-again.h5")
    stage("s1-alife-m", "finetune-classifier", "--current", base / "s1-alife", "--prev", base / "s0",
          "--bank", base / "bank1.h5", *data, "--preset", "toy", "--amp", amp, "--workers", "0",
          "--out", out / "s1-alife-m")
    stage("evaluate", "evaluate", base / "s1-mib", *data, "--eval-size", "32", "--amp", amp, "--workers", "0",
          "--out", out / "eval.json")
    stage("predict", "predict", base / "s1-mib", root / "JPEGImages", "--out", out / "pred", "--amp", amp,
          "--workers", "0")
    stage("export", "export", base / "s1-mib", "--out", out / "mib.pt2")
    return done


@pytest.fixture(scope="module")
def chains(toy_root, toy_env, tmp_path_factory):
    """The three chains, fp32 first (its step-0 runs, bank and ALIFE step are the others' inputs)."""
    from incseg_cli.testing import cuda

    top = tmp_path_factory.mktemp("cuda-stages")
    with pytest.MonkeyPatch.context() as mp:
        for key, value in {**toy_env, "INCSEG_NO_PROGRESS": "1"}.items():
            mp.setenv(key, value)
        mp.delenv("INCSEG_DEBUG", raising=False)
        cuda.install(1)
        try:
            results = {}
            for amp in AMPS:
                results[amp] = _chain(toy_root, top / amp, amp, top / "off")
        finally:
            cuda.remove()
    return top, results


def _first_row(run: Path) -> dict[str, float]:
    with open(run / "losses.csv") as fh:
        row = next(csv.DictReader(fh))
    return {k: float(v) for k, v in row.items() if not k.startswith(("lr_", "iteration", "epoch"))}


@pytest.mark.parametrize("amp", AMPS)
def test_every_stage_runs_on_the_emulated_gpu(chains, amp):
    top, results = chains
    failed = {name: r.returncode for name, r in results[amp].items() if r.returncode != 0}
    assert not failed, failed
    out = top / amp
    expected = {"off": "off", "fp16": "torch.float16", "bf16": "torch.bfloat16"}[amp]
    for run in ["s0", "s0bce", *(f"s1-{m}" for m in (*STEP_METHODS, "wilson", "alife-m"))]:
        manifest = json.loads((out / run / "manifest.json").read_text())
        assert manifest["device"] == "cuda:0", run
        assert manifest["amp"] == expected, run
        assert manifest["grad_scaler"] == (amp == "fp16"), run
        assert manifest["precision"]["tf32"] is False and manifest["precision"]["capability"] == "9.0"
        metrics = json.loads((out / run / "metrics.json").read_text())
        assert all(v is None or math.isfinite(v) for v in metrics["miou"].values()), run
        with open(out / run / "losses.csv") as fh:
            assert all(math.isfinite(float(v)) for row in csv.DictReader(fh) for k, v in row.items()), run
    evaluation = json.loads((out / "eval.json").read_text())
    assert evaluation["precision"]["amp"] == {"off": "off", "fp16": "float16", "bf16": "bfloat16"}[amp]
    predicted = json.loads((out / "pred" / "predict.json").read_text())
    assert predicted["status"] == "complete" and predicted["device"] == "cuda:0"
    # The exported program names no device: it runs wherever its module is moved.
    from incseg_cli.stages.export import device_bound_nodes

    assert device_bound_nodes(torch.export.load(out / "mib.pt2")) == []


@pytest.mark.parametrize("amp", ["fp16", "bf16"])
def test_first_iteration_losses_are_those_of_fp32(chains, amp):
    top, _ = chains
    tolerance = TOLERANCE[amp]
    for run in ["s0", "s0bce", *(f"s1-{m}" for m in (*STEP_METHODS, "wilson", "alife-m"))]:
        reference, lowered = _first_row(top / "off" / run), _first_row(top / amp / run)
        assert reference.keys() == lowered.keys()
        for name, value in reference.items():
            assert abs(lowered[name] - value) <= max(1e-3, tolerance * abs(value)), (run, name, value, lowered[name])
