"""DKD and image replay through the CLI, as a script chains them: step 0 with --loss dkd, two
DKD-M steps (the memory carried by --prev), MiB with replay, evaluation, inspect, predict, and
a resumed DKD-M step equal to an uninterrupted one."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from helpers import TOY_TRAIN_ARGS, commands_in_one_process, interrupt_cli

TASK = "10-5-5-ov"
STEP_ARGS = [*TOY_TRAIN_ARGS, "--epochs", "2"]
CHECK_PREDICT = """
import torch
from incseg_cli import api
from incseg_cli.data.transforms import normalize
from incseg_cli.models.decision import sigmoid_decision
from PIL import Image
import numpy as np
model = api.load_model(RUN, device="cpu", eval_protocol="full")
image = Image.open(IMAGE).convert("RGB")
mask = model.predict([image])[0]
x = normalize(torch.from_numpy(np.asarray(image)).permute(2, 0, 1)[None])
with torch.no_grad():
    logits = model.network(x)["logits"]
channels = sigmoid_decision(logits)[0].numpy()
to_label = model._predictor.to_label  # channel -> label id
assert (mask == to_label[channels]).all(), "predict does not use the sigmoid rule"
program = torch.export.load(PROGRAM).module()  # the exported program carries the rule too
labels, program_logits = program(torch.from_numpy(np.asarray(image)).permute(2, 0, 1)[None].contiguous())
assert (labels[0].numpy() == to_label[sigmoid_decision(program_logits)[0].numpy()]).all(), "export: not the sigmoid rule"
print("predict ok")
"""


@pytest.fixture(scope="module")
def dkd_chain(toy_root, toy_env, tmp_path_factory):
    where = tmp_path_factory.mktemp("dkd")
    runs = where / "runs"
    data = ["--data", toy_root]
    steps = [
        ["cli", ["train-base", *data, "--task", TASK, "--loss", "dkd", *TOY_TRAIN_ARGS, "--epochs", "2",
                 "--out", runs / "s0"]],
        ["cli", ["train-step", "--prev", runs / "s0", "--method", "dkd-m", "--replay-images", "6", *data,
                 *STEP_ARGS, "--out", runs / "s1"]],
        ["cli", ["train-step", "--prev", runs / "s1", "--method", "dkd-m", "--replay-images", "6", *data,
                 *STEP_ARGS, "--out", runs / "s2"]],
        ["cli", ["evaluate", runs / "s2", *data, "--json"]],
        ["cli", ["inspect", runs / "s2", "--json"]],
        ["cli", ["report", runs / "s0", runs / "s1", runs / "s2", "--json"]],
        ["cli", ["export", runs / "s2", "--out", runs / "s2.pt2"]],
        ["python", f"RUN, PROGRAM = {str(runs / 's2')!r}, {str(runs / 's2.pt2')!r}\n"
                   f"IMAGE = {str(next((toy_root / 'JPEGImages').glob('*.jpg')))!r}\n" + CHECK_PREDICT],
    ]
    results = commands_in_one_process(steps, where / "steps", toy_env)
    for r in results:
        assert r.returncode == 0, r.stderr[-2000:]
    return runs, results


def _header(run: Path) -> dict:
    return torch.load(run / "checkpoint.pt", map_location="cpu", weights_only=True)["header"]


def test_dkd_step0_records_the_sigmoid_rule_and_its_recipe(dkd_chain):
    runs, _ = dkd_chain
    header = _header(runs / "s0")
    assert header["model"]["decision"] == "sigmoid"
    assert header["base"] == {"loss": "dkd", "pos_weight": 2.0}  # DKD's VOC step-0 weight
    losses = json.loads((runs / "s0" / "manifest.json").read_text())["epochs"][0]["losses"]
    assert set(losses) == {"mbce", "ac", "total"}


def test_dkd_m_steps_carry_their_memory_and_score_hiou(dkd_chain, toy_root):
    runs, results = dkd_chain
    one = json.loads((runs / "s1" / "memory.json").read_text())
    two = json.loads((runs / "s2" / "memory.json").read_text())
    assert len(one["ids"]) == 6 == len(two["ids"]) and one["ids"] == sorted(one["ids"])
    assert set(one["classes"]) == {str(c) for c in range(1, 11)}  # the step-0 classes
    assert set(two["classes"]) == {str(c) for c in range(1, 16)}  # steps 0 and 1
    labels = {line.split("\t")[0]: line.split("\t")[1] for line in
              (toy_root.parent / "splits" / "voc" / "labels-train.tsv").read_text().splitlines()[1:] if "\t" in line}
    for c, entries in one["classes"].items():
        for name, classes in entries:
            assert int(c) in classes and c in labels[name].split(",")  # each image shows its class
    manifest = json.loads((runs / "s1" / "manifest.json").read_text())
    assert manifest["replay"]["images"] == 6 and manifest["replay"]["bytes"] > 0
    assert manifest["options"]["replay_images"] == 6
    assert manifest["train_images"] == len((toy_root.parent / "splits" / "voc" / TASK / "train-1.txt")
                                           .read_text().split()) + 6
    header = _header(runs / "s2")
    assert header["dkd-m"]["lambda_kd"] == 5.0 and header["model"]["decision"] == "sigmoid"
    metrics = json.loads(results[3].stdout)
    assert set(metrics["miou"]) >= {"base_bg", "added"} and metrics["hiou"] is not None
    inspected = json.loads(results[4].stdout)
    assert inspected["replay"]["images"] == 6 and inspected["problems"] == []
    rows = {Path(r["run"]).name: r for r in json.loads(results[5].stdout)["rows"]}
    assert rows["s0"]["memory_bytes"] is None and rows["s1"]["memory_bytes"] == manifest["replay"]["bytes"] > 0
    assert rows["s2"]["hiou"] == pytest.approx(metrics["hiou"])


def test_predict_the_api_and_the_exported_program_use_the_models_sigmoid_rule(dkd_chain):
    _, results = dkd_chain
    assert "predict ok" in results[7].stdout  # CHECK_PREDICT, run in the chain's process


def test_replay_works_with_mib_and_is_refused_where_it_cannot_work(base_run, dkd_chain, toy_root, toy_env, tmp_path,
                                                                   cli, monkeypatch):
    runs, _ = dkd_chain
    data = ["--data", toy_root]
    (mib,) = commands_in_one_process([["cli", ["train-step", "--prev", base_run, "--method", "mib", "--replay-images",
                                               "4", *data, *STEP_ARGS, "--out", tmp_path / "mib-m"]]],
                                     tmp_path / "steps", toy_env)
    assert mib.returncode == 0, mib.stderr[-2000:]
    assert json.loads((tmp_path / "mib-m" / "manifest.json").read_text())["replay"]["images"] == 4
    for key, value in toy_env.items():
        monkeypatch.setenv(key, value)
    wilson = cli("train-step", "--prev", base_run, "--method", "wilson", "--replay-images", "4", *data, *STEP_ARGS,
                 "--out", tmp_path / "wilson-m")
    assert wilson.returncode == 2 and "--replay-images: wilson learns from image-level labels" in wilson.stderr
    dkd_on_ce = cli("train-step", "--prev", base_run, "--method", "dkd", *data, *STEP_ARGS, "--out", tmp_path / "x")
    assert dkd_on_ce.returncode == 4 and "train step 0 with `incseg train-base --loss dkd`" in dkd_on_ce.stderr
    too_many = cli("train-step", "--prev", runs / "s0", "--method", "dkd-m", "--replay-images", "500", *data,
                   *STEP_ARGS, "--out", tmp_path / "too-many")
    assert too_many.returncode == 2 and "--replay-images 500: only" in too_many.stderr
    for out in ("wilson-m", "x", "too-many"):
        assert not (tmp_path / out).exists()


def test_a_resumed_dkd_m_step_equals_an_uninterrupted_one(dkd_chain, toy_root, toy_env, tmp_path, run_cli):
    runs, _ = dkd_chain
    out = tmp_path / "stopped"
    args = ["train-step", "--prev", str(runs / "s0"), "--method", "dkd-m", "--replay-images", "6", "--data",
            str(toy_root), *STEP_ARGS, "--out", str(out)]
    interrupt_cli(args, toy_env, at="epoch 1/2")
    assert (out / "memory.json").is_file() and (out / "last.pt").is_file()
    r = run_cli(*args, env=toy_env, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "resuming" in r.stderr and "read back from" in r.stderr  # the memory is not drawn again
    straight = torch.load(runs / "s1" / "checkpoint.pt", map_location="cpu", weights_only=True)
    resumed = torch.load(out / "checkpoint.pt", map_location="cpu", weights_only=True)
    for key, value in straight["model"].items():
        assert torch.equal(value, resumed["model"][key]), key
