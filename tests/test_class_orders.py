"""Class orders (``--class-order random:SEED``, task keys ``TASK@random-SEED``): which classes
each step holds, splits and runs of an order, and a --prev of another order refused."""

from __future__ import annotations

import json

import pytest
import torch

from helpers import TOY_TRAIN_ARGS, commands_in_one_process
from incseg_cli.errors import UsageError
from incseg_cli.tasks import get_task, with_order


def test_an_order_permutes_the_classes_of_each_step_and_is_seeded():
    papers = get_task("voc", "15-5-ov")
    one = get_task("voc", "15-5-ov@random:3")
    assert one.key == "15-5-ov@random-3" and get_task("voc", one.key) == one  # the key parses back
    assert [len(s) for s in one.steps] == [len(s) for s in papers.steps] and one.steps[0][0] == 0
    assert sorted(c for s in one.steps for c in s) == list(range(21))  # a permutation
    assert one.steps != papers.steps and one.steps == get_task("voc", "15-5-ov@random-3").steps
    assert get_task("voc", "15-5-ov@random:4").steps != one.steps
    assert one.model_index(one.steps[1][0]) == 16  # the channels follow the order
    assert with_order("15-5-ov", None) == "15-5-ov" and with_order("15-5-ov", "papers") == "15-5-ov"
    with pytest.raises(UsageError, match="unknown class order 'sorted'"):
        get_task("voc", "15-5@sorted")
    with pytest.raises(UsageError, match="incremental tasks"):
        get_task("voc", "offline@random:1")


def test_runs_of_an_order_are_reproducible_and_refuse_another_orders_prev(toy_root, toy_env, tmp_path, cli,
                                                                          monkeypatch):
    splits = tmp_path / "splits"
    base = ["train-base", "--data", toy_root, "--splits", splits, "--task", "10-5-5-ov", "--class-order", "random:1",
            *TOY_TRAIN_ARGS, "--epochs", "1"]
    steps = [
        ["cli", ["prepare-splits", "--data", toy_root, "--task", "10-5-5-ov", "--class-order", "random:1",
                 "--out", splits, "--json"]],
        ["cli", [*base, "--out", tmp_path / "a"]],
        ["cli", [*base, "--out", tmp_path / "b"]],
    ]
    prepared, a, b = commands_in_one_process(steps, tmp_path / "steps", toy_env)
    assert json.loads(prepared.stdout)["tasks"][0]["task"] == "10-5-5-ov@random-1"
    assert a.returncode == 0 and b.returncode == 0, a.stderr[-2000:] + b.stderr[-2000:]
    ha = torch.load(tmp_path / "a" / "checkpoint.pt", map_location="cpu", weights_only=True)
    hb = torch.load(tmp_path / "b" / "checkpoint.pt", map_location="cpu", weights_only=True)
    order = get_task("voc", "10-5-5-ov@random:1")
    assert ha["header"]["task"] == "10-5-5-ov@random-1" and ha["header"]["steps"] == [list(order.steps[0])]
    assert all(torch.equal(v, hb["model"][k]) for k, v in ha["model"].items())  # same seed and order: same bits
    assert json.loads((tmp_path / "a" / "manifest.json").read_text())["options"]["class_order"] == "random:1"
    monkeypatch.setenv("INCSEG_SPLITS", str(splits))
    other = cli("train-step", "--prev", tmp_path / "a", "--task", "10-5-5-ov", "--method", "ft", "--data", toy_root,
                *TOY_TRAIN_ARGS, "--out", tmp_path / "other")
    assert other.returncode == 4 and "expected voc/10-5-5-ov step 0" in other.stderr
    assert not (tmp_path / "other").exists()
