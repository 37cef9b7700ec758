"""PLOP end to end through the CLI on toy 10-10-ov: the run records its thresholds, options of
other methods are refused, and a run stopped after its pre-pass resumes with the saved
thresholds to the weights of an uninterrupted run."""

import json
import math
import os
import subprocess
import sys

import pytest
import torch

from helpers import TOY_TRAIN_ARGS, interrupt_cli

pytestmark = pytest.mark.slow


def _args(base_run, toy_root, out, *extra):
    return ["train-step", "--prev", base_run, "--method", "plop", "--data", toy_root, *TOY_TRAIN_ARGS,
            "--epochs", "1", *extra, "--out", out]


@pytest.fixture(scope="module")
def plop_run(base_run, toy_root, toy_env, tmp_path_factory):
    out = tmp_path_factory.mktemp("plop") / "step1"
    env = dict(os.environ, INCSEG_NO_PROGRESS="1", **toy_env)
    r = subprocess.run([sys.executable, "-m", "incseg_cli", *map(str, _args(base_run, toy_root, out))],
                       capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "plop thresholds" in r.stderr
    return out


def test_plop_run_records_method_and_thresholds(plop_run):
    top = torch.load(plop_run / "checkpoint.pt", map_location="cpu", weights_only=True)["header"]
    assert top["method"] == "plop" and top["step"] == 1
    header = top["plop"]  # the method's settings, under its name
    # toy 10-10-ov step 1: background + 10 old + 10 new classes
    assert len(header["thresholds"]) == 21
    assert header["pod_factor"] == 0.01 and header["pod_logits_factor"] == 0.0005
    assert header["pseudo_floor"] == 0.001 and header["pseudo_median"] == "official"
    manifest = json.loads((plop_run / "manifest.json").read_text())
    assert manifest["method"] == "plop"
    assert manifest["method_settings"]["thresholds"] == header["thresholds"]
    finite = [t for t in header["thresholds"] if not isinstance(t, str)]
    assert finite and all(t >= 0.001 for t in finite)  # the floor is a lower bound
    assert manifest["options"]["head_init"] == "random" and manifest["options"]["val_set"] == "seen"  # toy preset
    assert set(manifest["epochs"][0]["losses"]) == {"ce", "pod", "total"}
    assert all(math.isfinite(v) for v in manifest["epochs"][0]["losses"].values())
    metrics = json.loads((plop_run / "metrics.json").read_text())
    assert metrics["method"] == "plop"


@pytest.mark.parametrize("method,flag,value", [("plop", "--alpha", "0.5"), ("plop", "--lambda-kd", "1"),
                                               ("mib", "--pod-factor", "0.01")])
def test_options_of_other_methods_are_refused(method, flag, value, base_run, toy_root, toy_env, run_cli, tmp_path):
    out = tmp_path / "refused"
    r = run_cli("train-step", "--prev", base_run, "--method", method, flag, value, "--data", toy_root,
                *TOY_TRAIN_ARGS, "--out", out, env=toy_env)
    assert r.returncode == 2, r.stderr
    lines = [l for l in r.stderr.splitlines() if l.strip()]
    assert lines[-1] == f"error: {flag} is not used by --method {method}" and "Traceback" not in r.stderr
    assert not out.exists()


def test_bad_plop_option_is_one_line(base_run, toy_root, toy_env, run_cli, tmp_path):
    out = tmp_path / "bad"
    r = run_cli(*_args(base_run, toy_root, out, "--pseudo-median", "mean"), env=toy_env)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "'--pseudo-median': 'mean' is not one of 'official', 'corrected'" in r.stderr
    assert not out.exists()


def test_resume_after_prepass_reuses_thresholds(plop_run, base_run, toy_root, toy_env, run_cli, tmp_path):
    out = tmp_path / "stopped"
    # signals are deferred to the first boundary, right after the pre-pass
    interrupt_cli(_args(base_run, toy_root, out), toy_env, at="plop thresholds")
    state = torch.load(out / "last.pt", map_location="cpu", weights_only=True)
    # Usually iteration 0; on a loaded machine the signal may land an iteration or two later.
    assert "thresholds" in state["method_state"]
    r = run_cli(*_args(base_run, toy_root, out), env=toy_env, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "resuming" in r.stderr and "plop thresholds" not in r.stderr  # loaded, not recomputed
    straight = torch.load(plop_run / "checkpoint.pt", map_location="cpu", weights_only=True)
    resumed = torch.load(out / "checkpoint.pt", map_location="cpu", weights_only=True)
    assert resumed["header"]["plop"]["thresholds"] == straight["header"]["plop"]["thresholds"]
    for key, value in straight["model"].items():
        assert torch.equal(value, resumed["model"][key]), key


@pytest.mark.parametrize("dataset,task,epochs,factors", [
    ("voc", "15-5-ov", 30, (0.01, 0.0005)), ("voc", "10-1-ov", 10, (0.01, 0.0005)),
    ("ade", "100-50-ov", 60, (0.001, 1e-5)), ("voc", "10-10-ov", 6, (0.01, 0.0005)),
])
def test_recipe_defaults_per_preset(dataset, task, epochs, factors):
    from incseg_cli.methods.plop import PLOP
    from helpers import resolved_options
    from incseg_cli.tasks import get_task

    preset = "toy" if epochs == 6 else dataset
    o = resolved_options(PLOP.name, get_task(dataset, task), 1, preset=preset)
    assert (o["epochs"], o["lr"], (o["pod_factor"], o["pod_logits_factor"])) == (epochs, 1e-3, factors)
    assert o["pseudo_floor"] == 0.001 and o["val_set"] == "seen"
    assert o["head_init"] == ("random" if preset == "toy" else "mib")  # the papers' MiB init but on toy
    # the command line wins over the recipe
    assert resolved_options(PLOP.name, get_task(dataset, task), 1, preset=preset, pod_factor=0.5)["pod_factor"] == 0.5
