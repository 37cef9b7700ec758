"""The ALIFE chain end to end through the CLI, as a shell script calls it:
base → train-step --method alife → extract-features → fit-rotations → finetune-classifier →
evaluate, a second ALIFE-M stage on 10-5-5-ov, resume, inspect, and bad inputs."""

import json
import os
import signal
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest
import torch

from helpers import TOY_TRAIN_ARGS, commands_in_one_process, error_line
from incseg_cli.fileio import sha256_file
from incseg_cli.bank import BankWriter, read_bank, write_checksum

pytestmark = pytest.mark.slow

SMALL = ["--preset", "toy", "--batch-size", "8", "--crop-size", "32"]
SAMPLES = ["--samples", "12"]


def _ok(result):
    assert result.returncode == 0, result.stderr
    return result


def _error(result, code, *fragments):
    line = error_line(result.stderr)
    assert result.returncode == code, result.stderr
    for fragment in fragments:
        assert fragment in line, line
    return line


@pytest.fixture
def cli(cli, monkeypatch, toy_env):
    """The in-process CLI (conftest) with the toy splits."""
    for key, value in toy_env.items():
        monkeypatch.setenv(key, value)
    return cli


def _weights(run):
    return torch.load(run / "checkpoint.pt", map_location="cpu", weights_only=True)


def _stage(data, prev, out, *, append=None):
    """The commands of one ALIFE-M stage from the final model ``prev``, and the paths they write."""
    paths = {"s1": out / "s1", "bank": out / "bank.h5", "rot": out / "rot.pt", "rotated": out / "rotated.h5",
             "s3": out / "s3"}
    extra = ["--append", append] if append else []
    steps = [
        ["cli", ["train-step", "--prev", prev, "--data", data, "--method", "alife", *TOY_TRAIN_ARGS, "--epochs", "1",
                 "--out", paths["s1"]]],
        ["cli", ["extract-features", "--prev", prev, "--data", data, "--out", paths["bank"], *SMALL, *SAMPLES, *extra]],
        ["cli", ["fit-rotations", "--bank", paths["bank"], "--prev", prev, "--current", paths["s1"], "--data", data,
                 "--out", paths["rot"], "--out-bank", paths["rotated"], *SMALL, "--epochs", "1"]],
        ["cli", ["finetune-classifier", "--current", paths["s1"], "--old", prev, "--bank", paths["rotated"],
                 "--data", data, "--out", paths["s3"], *TOY_TRAIN_ARGS]],
    ]
    return paths, steps


def _run_stages(env, where, *stages):
    """The commands of ``stages`` in turn in one process (torch imported once), each succeeding."""
    steps = [step for _, commands in stages for step in commands]
    results = commands_in_one_process(steps, where, env)
    assert len(results) == len(steps) and all(r.returncode == 0 for r in results), results[-1].stderr[-3000:]
    return [paths for paths, _ in stages]


def _module_cli(*args, env=None):
    """``run_cli`` for the module-scoped fixtures (conftest's is function-scoped)."""
    full = dict(os.environ, INCSEG_NO_PROGRESS="1", **(env or {}))
    full.pop("INCSEG_DEBUG", None)
    return subprocess.run([sys.executable, "-m", "incseg_cli", *map(str, args)], capture_output=True,
                          text=True, env=full, timeout=300)


@pytest.fixture(scope="module")
def chain(toy_root, toy_env, base_run, tmp_path_factory):
    top = tmp_path_factory.mktemp("alife")
    (paths,) = _run_stages(toy_env, top / "commands", _stage(toy_root, base_run, top))
    return paths


def test_step1_freezing_and_header(chain, base_run):
    s1, base = _weights(chain["s1"]), _weights(base_run)
    h = s1["header"]
    assert h["method"] == "alife" and h["step"] == 1 and h["alife"]["freeze"] == "step1"
    assert h["alife"]["lambda_ali"] == 0.5 and h["alife"]["lambda_kd"] == 1.0  # the toy defaults
    assert h["parent_sha256"] == sha256_file(base_run / "checkpoint.pt")
    frozen_bn = [k for k in base["model"] if k.startswith(("backbone.", "aspp.")) and "running_mean" in k]
    assert frozen_bn and all(torch.equal(s1["model"][k], base["model"][k]) for k in frozen_bn)
    assert not torch.equal(s1["model"]["decoder.1.running_mean"], base["model"]["decoder.1.running_mean"])
    manifest = json.loads((chain["s1"] / "manifest.json").read_text())
    assert manifest["options"]["lambda_ali"] == 0.5 and manifest["options"]["head_init"] == "random"  # the toy preset's


def test_bank_rotations_and_step3(chain, base_run, toy_root, run_cli):
    bank = read_bank(chain["bank"])
    assert bank.labels == list(range(11)) and bank.step == 0 and bank.feature_dim == 64
    assert bank.source_sha256 == sha256_file(base_run / "checkpoint.pt")
    assert all(e.count == 12 and e.source == "extracted" and (e.features >= 0).all() for e in bank.classes.values())
    rotated = read_bank(chain["rotated"])
    assert rotated.attrs["space"] == "step 1 features" and rotated.source_sha256 == sha256_file(chain["s1"] / "checkpoint.pt")
    for c in bank.labels:
        a, b = bank.classes[c].features, rotated.classes[c].features
        assert np.allclose(np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1), rtol=1e-5)
        assert not np.allclose(a, b)
    rot = torch.load(chain["rot"], map_location="cpu", weights_only=True)
    assert rot["header"]["classes"] == list(range(11)) and rot["params"].shape == (11, 64 * 63 // 2)
    assert rot["header"]["source_space"] == "step 0 features" and len(rot["header"]["history"]) == 1

    s1, s3 = _weights(chain["s1"]), _weights(chain["s3"])
    h = s3["header"]
    assert h["method"] == "alife-m" and h["step"] == 1 and h["alife-m"]["freeze"] == "step3" and h["alife-m"]["memory_vectors"] == 11 * 12
    assert h["parent_sha256"] == sha256_file(chain["s1"] / "checkpoint.pt")
    changed = [k for k in s1["model"] if not torch.equal(s1["model"][k], s3["model"][k])]
    assert changed and all(k.startswith("classifier.") for k in changed)

    r = _ok(run_cli("evaluate", chain["s3"], "--data", toy_root, "--eval-size", "32", "--json", "--workers", "0"))
    metrics = json.loads(r.stdout)
    assert metrics["method"] == "alife-m" and metrics["step"] == 1
    assert metrics["miou"] == pytest.approx(json.loads((chain["s3"] / "metrics.json").read_text())["miou"])


def test_extraction_is_seeded_and_reruns_skip(chain, base_run, toy_root, cli, tmp_path):
    args = ["extract-features", "--prev", base_run, "--data", toy_root, *SMALL, *SAMPLES]
    again = _ok(cli(*args, "--out", tmp_path / "again.h5", "--json"))
    summary = json.loads(again.stdout)
    assert summary["classes"] == {str(c): 12 for c in range(11)} and summary["skipped"] is False
    a, b = read_bank(chain["bank"]), read_bank(tmp_path / "again.h5")
    assert all(np.array_equal(a.classes[c].features, b.classes[c].features) for c in a.labels)
    skipped = _ok(cli(*args, "--out", chain["bank"], "--workers", "1"))
    assert "skipping" in skipped.stderr
    other = cli(*args, "--out", chain["bank"], "--seed", "1")
    _error(other, 6, "--force")
    seed1 = _ok(cli(*args, "--out", tmp_path / "seed1.h5", "--seed", "1", "--samples", "4"))
    assert not np.array_equal(read_bank(tmp_path / "seed1.h5").classes[3].features, a.classes[3].features[:4])
    assert seed1.returncode == 0


def test_old_names_and_volatile_options_rerun_to_the_same_result(chain, base_run, toy_root, cli):
    """--model and --out-rotations still work, with a note, and mean what --prev and --out
    mean: the chain's outputs are recognised as theirs. Options that do not change a result
    (workers, device) may change on a rerun, which skips; any other refuses without --force."""
    r = _ok(cli("extract-features", "--model", base_run, "--data", toy_root, *SMALL, *SAMPLES, "--out", chain["bank"]))
    assert "note: --model is now --prev" in r.stderr and "skipping" in r.stderr
    fit = ["fit-rotations", "--bank", chain["bank"], "--prev", base_run, "--current", chain["s1"], "--data", toy_root,
           *SMALL, "--epochs", "1", "--out-bank", chain["rotated"]]
    r = _ok(cli(*fit, "--out-rotations", chain["rot"], "--json"))
    assert "note: --out-rotations is now --out" in r.stderr and json.loads(r.stdout)["skipped"] is True
    r = _ok(cli(*fit, "--out", chain["rot"], "--workers", "2", "--device", "cpu"))
    assert "skipping" in r.stderr
    _error(cli(*fit, "--out", chain["rot"], "--tau", "5"), 6, "--force")
    _error(cli(*fit, "--out", chain["rot"], "--out-rotations", chain["rot"]), 2, "old name of --out")


def test_inspect(chain, run_cli, cli, tmp_path):
    r = _ok(run_cli("inspect", chain["rotated"], "--json"))
    report = json.loads(r.stdout)
    assert report["kind"] == "bank" and report["problems"] == []
    assert report["attrs"]["space"] == "step 1 features" and len(report["classes"]) == 11
    assert report["attrs"]["source_checkpoint_sha256"] == sha256_file(chain["s1"] / "checkpoint.pt")
    human = _ok(cli("inspect", chain["bank"]))
    assert "step 0 features" in human.stdout and "check: ok" in human.stdout
    ckpt = json.loads(_ok(cli("inspect", chain["s3"], "--json")).stdout)
    assert ckpt["kind"] == "checkpoint" and ckpt["header"]["method"] == "alife-m"
    rot = json.loads(_ok(cli("inspect", chain["rot"], "--json")).stdout)
    assert rot["kind"] == "rotations" and rot["params_shape"] == [11, 2016]
    broken = tmp_path / "broken.h5"
    broken.write_bytes(chain["bank"].read_bytes())
    with h5py.File(broken, "a") as f:
        f["classes/4/features"][0, 0] = np.inf
    _error(run_cli("inspect", broken), 5, "checksum mismatch")  # any edit, until resealed
    write_checksum(broken)
    _error(run_cli("inspect", broken), 5, "/classes/4/features")
    _error(cli("inspect", tmp_path / "nothing.h5"), 3, "not found")


def _fake_bank(path, like, dim=None, classes=None):
    """A bank with ``like``'s attributes but another feature size or class set."""
    bank = read_bank(like)
    attrs = {k: v for k, v in bank.attrs.items() if k not in ("format", "version", "classes")}
    attrs["feature_dim"] = dim or bank.feature_dim
    with BankWriter(path, attrs) as w:
        for c in classes or bank.labels:
            w.add(c, np.ones((3, attrs["feature_dim"]), np.float32), str(c), "extracted", 0)
    return path


def test_bad_inputs(chain, base_run, toy_root, toy_env, run_cli, cli, tmp_path):
    fit = ["fit-rotations", "--data", toy_root, *SMALL, "--epochs", "1", "--out", tmp_path / "r.pt",
           "--out-bank", tmp_path / "rb.h5"]
    good = ["--bank", chain["bank"], "--prev", base_run, "--current", chain["s1"]]
    # a bank whose feature size does not match the model
    wide = _fake_bank(tmp_path / "wide.h5", chain["bank"], dim=32)
    # (through a real process once: the exit code and the one line as a shell sees them)
    _error(run_cli(*fit, "--bank", wide, "--prev", base_run, "--current", chain["s1"], env=toy_env), 4, "32-d")
    # a bank of another class set
    few = _fake_bank(tmp_path / "few.h5", chain["bank"], classes=[0, 1, 2])
    _error(cli(*fit, "--bank", few, "--prev", base_run, "--current", chain["s1"]), 4,
           "holds classes 0-2")
    # a step-1 run where the step-0 model is expected
    _error(cli(*fit, "--bank", chain["bank"], "--prev", chain["s1"], "--current", chain["s1"]), 4,
           "step-1 run")
    _error(cli("finetune-classifier", "--current", chain["s1"], "--old", chain["s3"], "--bank", chain["rotated"],
                   "--data", toy_root, *TOY_TRAIN_ARGS, "--out", tmp_path / "ft"), 4, "step-1 run")
    # the raw bank (step 0 features) where the rotated one is expected
    _error(cli("finetune-classifier", "--current", chain["s1"], "--old", base_run, "--bank", chain["bank"],
                   "--data", toy_root, *TOY_TRAIN_ARGS, "--out", tmp_path / "ft"), 4, "step 0 features")
    assert not (tmp_path / "ft").exists() and not (tmp_path / "r.pt").exists()
    # outputs that are inputs, and existing outputs
    _error(cli("fit-rotations", *good, "--data", toy_root, "--out", tmp_path / "r.pt",
                   "--out-bank", chain["bank"]), 2, "is also --bank")
    _error(cli(*fit[:-4], "--out", chain["rot"], "--out-bank", tmp_path / "rb.h5", *good,
                   "--lambda-rot", "0.5"), 6, "--force")
    # a rotations file for other classes
    _error(cli("rotate-bank", "--rotations", chain["rot"], "--bank", few, "--out", tmp_path / "x.h5"), 4,
           "classes [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10]")
    ok = _ok(cli("rotate-bank", "--rotations", chain["rot"], "--bank", chain["bank"], "--out", tmp_path / "y.h5"))
    assert ok.returncode == 0
    assert np.allclose(read_bank(tmp_path / "y.h5").classes[5].features, read_bank(chain["rotated"]).classes[5].features)
    # appending: nothing before step 0, and never onto the input itself
    ext = ["extract-features", "--data", toy_root, *SMALL, "--samples", "2"]
    _error(cli(*ext, "--prev", base_run, "--append", chain["bank"], "--out", tmp_path / "a.h5"), 2,
           "step 0")
    _error(cli(*ext, "--prev", chain["s3"], "--append", chain["rotated"], "--out", chain["rotated"]), 2,
           "is also --append")
    full = tmp_path / "full.h5"
    _ok(cli(*ext, "--prev", chain["s3"], "--append", chain["rotated"], "--out", full))
    assert read_bank(full).labels == list(range(21))
    _error(cli(*ext, "--prev", chain["s3"], "--append", full, "--out", tmp_path / "b.h5"), 4,
           "already holds classes")
    _error(cli(*ext, "--prev", chain["s1"], "--append", chain["bank"], "--out", tmp_path / "c.h5"), 4,
           "step 0 features")
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())  # no temporary left behind


def test_fit_rotations_resumes_after_sigint(chain, base_run, toy_root, toy_env, run_cli, tmp_path):
    args = ["fit-rotations", "--bank", chain["bank"], "--prev", base_run, "--current", chain["s1"], "--data", toy_root,
            *SMALL, "--epochs", "8"]
    _ok(run_cli(*args, "--out", tmp_path / "straight.pt", "--out-bank", tmp_path / "straight.h5", env=toy_env))
    out = tmp_path / "stopped.pt"
    env = dict(os.environ, INCSEG_NO_PROGRESS="1", **toy_env)
    proc = subprocess.Popen([sys.executable, "-m", "incseg_cli", *map(str, args), "--out", out,
                             "--out-bank", tmp_path / "stopped.h5"], stderr=subprocess.PIPE, text=True, env=env)
    last = tmp_path / "stopped.last.pt"
    deadline = time.monotonic() + 120
    while not last.exists():
        assert proc.poll() is None, proc.communicate()[1]
        assert time.monotonic() < deadline
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert not out.exists() and not (tmp_path / "stopped.h5").exists()
    r = _ok(run_cli(*args, "--out", out, "--out-bank", tmp_path / "stopped.h5", env=toy_env))
    assert "resuming" in r.stderr and not last.exists()
    a = torch.load(tmp_path / "straight.pt", weights_only=True)["params"]
    b = torch.load(out, weights_only=True)["params"]
    assert torch.equal(a, b)


@pytest.fixture(scope="module")
def three_step_base(toy_root, toy_env, tmp_path_factory):
    out = tmp_path_factory.mktemp("base-10-5-5") / "step0"
    _ok(_module_cli("train-base", "--data", toy_root, "--task", "10-5-5-ov", *TOY_TRAIN_ARGS, "--epochs", "1",
                    "--out", out, env=toy_env))
    return out


def test_alife_m_two_stages(three_step_base, toy_root, toy_env, tmp_path):
    first, steps = _stage(toy_root, three_step_base, tmp_path / "stage1")
    second = _stage(toy_root, first["s3"], tmp_path / "stage2", append=first["rotated"])
    _, second = _run_stages(toy_env, tmp_path / "commands", (first, steps), second)
    assert read_bank(first["rotated"]).labels == list(range(11))
    bank = read_bank(second["bank"])
    assert bank.labels == list(range(16)) and bank.attrs["space"] == "step 1 features"
    assert [bank.classes[c].source for c in (0, 10, 11, 15)] == ["rotated", "rotated", "extracted", "extracted"]
    assert [bank.classes[c].step for c in (0, 10, 11, 15)] == [0, 0, 1, 1]
    rotated = read_bank(second["rotated"])
    assert rotated.attrs["space"] == "step 2 features" and rotated.labels == list(range(16))
    s3 = _weights(second["s3"])["header"]
    assert s3["step"] == 2 and s3["steps"] == [list(range(11)), list(range(11, 16))] + [list(range(16, 21))]
    metrics = json.loads((second["s3"] / "metrics.json").read_text())
    assert metrics["step"] == 2 and metrics["groups"]["added"] == "11-20" and metrics["method"] == "alife-m"


def test_step1_modes_and_paper_defaults():
    from incseg_cli.methods.alife import ALIFEClassifierFinetune, ALIFEStep1, freeze_batchnorm
    from incseg_cli.models.deeplab import ModelSpec, build_model
    from incseg_cli.tasks import get_task

    model = build_model(ModelSpec.for_backbone("tiny", [11, 10]))
    freeze_batchnorm([model.backbone, model.aspp])
    ALIFEStep1(model, 1.0, 1.0).train_mode(model)
    frozen = [m for m in (*model.backbone.modules(), *model.aspp.modules())
              if isinstance(m, (torch.nn.BatchNorm2d, torch.nn.Dropout))]
    assert frozen and not any(m.training for m in frozen)
    assert not any(p.requires_grad for m in frozen for p in m.parameters())
    assert model.decoder[1].training and model.decoder[1].weight.requires_grad and model.classifier.training
    voc = lambda name: get_task("voc", name)  # noqa: E731
    assert ALIFEStep1.defaults(voc("15-5-ov"), 1, "voc").as_dict() == {"lambda_ali": 2, "lambda_kd": 1, "epochs": 10}
    assert ALIFEStep1.defaults(voc("15-1-ov"), 2, "voc").as_dict() == {"lambda_ali": 5, "lambda_kd": 10, "epochs": 5}
    assert ALIFEStep1.defaults(voc("19-1"), 1, "voc").as_dict() == {"lambda_ali": 1, "lambda_kd": 1, "epochs": 5}
    assert ALIFEStep1.defaults(voc("10-10-ov"), 1, "toy").as_dict() == {"lambda_ali": 0.5, "lambda_kd": 1}
    assert ALIFEClassifierFinetune.defaults(voc("15-5-ov"), 1, "voc").as_dict()["lambda_mem"] == 10
    assert ALIFEClassifierFinetune.defaults(get_task("ade", "100-10-ov"), 4, "ade").as_dict()["lambda_ali"] == 0
