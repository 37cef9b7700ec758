"""Class orders (``--class-order random:SEED``, task keys ``TASK@random-SEED``): which classes
each step holds, splits and runs of an order, and a --prev of another order refused."""

from __future__ import annotations

import json

import pytest
import torch

from helpers import TOY_TRAIN_ARGS, commands_in_one_process
from incseg_cli import datasets
from incseg_cli.datasets import orders, registry
from incseg_cli.errors import IncompatibleError, InputError, UsageError
from incseg_cli.tasks import get_task, split_key, with_order


def test_an_order_permutes_the_classes_of_each_step_and_is_seeded():
    papers = get_task("voc", "15-5-ov")
    one = get_task("voc", "15-5-ov@random:3")
    assert one.key == "15-5-ov@random-3" and get_task("voc", one.key) == one  # the key parses back
    assert [len(s) for s in one.steps] == [len(s) for s in papers.steps] and one.steps[0][0] == 0
    assert sorted(c for s in one.steps for c in s) == list(range(21))  # a permutation
    assert one.steps != papers.steps and one.steps == get_task("voc", "15-5-ov@random-3").steps
    assert get_task("voc", "15-5-ov@random:4").steps != one.steps
    assert one.model_index(one.steps[1][0]) == 16  # the channels follow the order
    assert with_order("voc", "15-5-ov", None) == "15-5-ov" and with_order("voc", "15-5-ov", "papers") == "15-5-ov"
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


def test_published_orders_hold_the_papers_steps():
    """PLOP's 15-5s_b and MiB's 19-1b (VOC), MiB's ADE orders b and c across its three tasks:
    the classes of every step as the official tasks.py lists them (spot checks of the lists)."""
    plop_b = get_task("voc", "15-1@plop-b")
    assert set(plop_b.steps[0]) == {0, 12, 9, 20, 7, 15, 8, 14, 16, 5, 19, 4, 1, 13, 2, 11}
    assert plop_b.steps[1:] == ((17,), (3,), (6,), (18,), (10,))
    assert get_task("voc", "15-5-ov@plop-b").steps[1] == (3, 6, 10, 17, 18)  # the same order, 15-5's sizes
    assert get_task("voc", "19-1@mib-b").steps[1] == (5,)
    b10 = get_task("ade", "100-10@mib-b")
    assert b10.steps[1] == (11, 16, 50, 64, 66, 73, 89, 92, 145, 146)
    assert b10.steps[5] == (17, 20, 59, 68, 83, 94, 102, 122, 127, 137)
    assert get_task("ade", "100-50@mib-b").steps[0] == b10.steps[0] and len(b10.steps[0]) == 101
    assert set(get_task("ade", "100-50@mib-b").steps[1]) == {c for s in b10.steps[1:] for c in s}
    c50 = get_task("ade", "50-50@mib-c")
    assert c50.steps[0][:6] == (0, 5, 10, 11, 12, 13) and c50.steps[2][:6] == (2, 3, 4, 7, 15, 18)
    assert get_task("ade", "100-10@mib-c").steps[3] == (22, 42, 49, 58, 59, 89, 91, 92, 108, 125)
    for dataset, names in (("voc", [f"plop-{x}" for x in "bcdefghijklmnopqrstuvw"] + ["mib-b"]),
                           ("ade", ["mib-b", "mib-c"])):
        for name in names:
            task = get_task(dataset, f"{'15-5' if dataset == 'voc' else '100-50'}@{name}")
            assert sorted(c for s in task.steps for c in s) == list(range(21 if dataset == "voc" else 151)), name
    with pytest.raises(UsageError, match="known: papers, random:SEED, mib-b, plop-b..plop-w"):
        get_task("voc", "15-5@plop-z")
    with pytest.raises(UsageError, match="unknown class order 'plop-b' for dataset ade"):
        get_task("ade", "100-50@plop-b")


def test_an_order_file_names_an_order_and_bad_ones_are_refused(tmp_path, monkeypatch):
    monkeypatch.setitem(registry._REGISTRY, "voc", datasets.get("voc"))  # the orders registered here go with the test
    names = list(datasets.get("voc").class_names[1:])
    path = tmp_path / "reversed.json"
    path.write_text(json.dumps({"name": "reversed", "order": names[::-1]}))
    key = with_order("voc", "10-10", str(path))
    assert key == "10-10@reversed"
    assert get_task("voc", key).steps == (tuple([0, *range(11, 21)]), tuple(range(1, 11)))
    assert get_task("voc", key).order_entry() == {"class_order": {"name": "reversed", "classes": list(range(20, 0, -1))}}
    bad = {
        "missing": {"name": "short", "order": names[:-1]},
        "twice": {"name": "twice", "order": names[:-1] + [names[0]]},
        "a name": {"name": "random-3", "order": names},
        "class": {"name": "nope", "order": ["person", "unicorn"]},
    }
    for what, body in bad.items():
        (tmp_path / "bad.json").write_text(json.dumps(body))
        with pytest.raises(InputError) as err:
            with_order("voc", "10-10", str(tmp_path / "bad.json"))
        assert str(tmp_path / "bad.json") in str(err.value), what
    (tmp_path / "again.json").write_text(json.dumps({"name": "reversed", "order": names}))
    with pytest.raises(IncompatibleError, match="already defined with another sequence"):
        with_order("voc", "10-10", str(tmp_path / "again.json"))
    (tmp_path / "ade.json").write_text(json.dumps({"name": "other", "dataset": "ade", "order": names}))
    with pytest.raises(IncompatibleError, match="an order of dataset 'ade', not 'voc'"):
        with_order("voc", "10-10", str(tmp_path / "ade.json"))
    # a task file whose path holds '@': the last one separates the order
    folder = tmp_path / "a@b"
    folder.mkdir()
    (folder / "t.json").write_text(json.dumps({"name": "t", "steps": [names[:10], names[10:]]}))
    assert split_key(f"{folder / 't.json'}@reversed") == (str(folder / "t.json"), "reversed")
    assert split_key(str(folder / "t.json")) == (str(folder / "t.json"), "")
    assert split_key("15-1-ov@plop-b") == ("15-1-ov", "plop-b") and split_key("15-1-ov") == ("15-1-ov", "")


def test_a_header_class_order_entry_is_checked():
    info = datasets.get("voc")
    good = {"task": "15-1-ov@plop-b", "class_order": {"name": "plop-b", "classes": list(info.orders["plop-b"])}}
    assert orders.from_header(info, good) == ("plop-b", info.orders["plop-b"])
    assert orders.from_header(info, {"task": "15-1-ov"}) is None
    for bad, message in (({**good, "task": "15-1-ov@plop-c"}, "is not the order of task"),
                         ({**good, "class_order": "plop-b"}, "is not {"),
                         ({**good, "class_order": {"name": "plop-b", "classes": [1, 2]}}, "must list each")):
        with pytest.raises(InputError, match=message):
            orders.from_header(info, bad)


def test_a_chain_in_an_order_of_ones_own_needs_the_file_only_at_step_0(toy_root, toy_env, tmp_path):
    """The order's sequence travels in the header and metrics: a later process (train-step,
    evaluate, report) reads it without the file, which may be gone."""
    names = list(datasets.get("voc").class_names[1:])
    order = tmp_path / "mine.json"
    order.write_text(json.dumps({"name": "mine", "dataset": "voc", "order": names[::-1]}))
    splits = tmp_path / "splits"
    common = ["--data", toy_root, "--splits", splits, *TOY_TRAIN_ARGS, "--epochs", "1"]
    prepared, base = commands_in_one_process([
        ["cli", ["prepare-splits", "--data", toy_root, "--task", "10-10-ov", "--class-order", order, "--out", splits,
                 "--json"]],
        ["cli", ["train-base", "--task", "10-10-ov", "--class-order", order, *common, "--out", tmp_path / "s0"]],
    ], tmp_path / "first", toy_env)
    assert base.returncode == 0, base.stderr[-2000:]
    assert json.loads(prepared.stdout)["tasks"][0]["task"] == "10-10-ov@mine"
    header = torch.load(tmp_path / "s0" / "checkpoint.pt", map_location="cpu", weights_only=True)["header"]
    assert header["task"] == "10-10-ov@mine" and header["steps"] == [[0, *range(11, 21)]]
    assert header["class_order"] == {"name": "mine", "classes": list(range(20, 0, -1))}
    order.unlink()
    step, evaluated, report = commands_in_one_process([
        ["cli", ["train-step", "--prev", tmp_path / "s0", "--method", "ft", *common, "--out", tmp_path / "s1"]],
        ["cli", ["evaluate", tmp_path / "s1", "--data", toy_root, "--json"]],
        ["cli", ["report", tmp_path / "s0", tmp_path / "s1", "--no-published", "--json"]],
    ], tmp_path / "second", toy_env)
    assert step.returncode == 0 and evaluated.returncode == 0 and report.returncode == 0, step.stderr[-2000:]
    metrics = json.loads(evaluated.stdout)
    assert metrics["task"] == "10-10-ov@mine" and metrics["class_order"]["name"] == "mine"
    assert metrics["groups"]["new"] == "1-10"
    assert "10-10-ov@mine" in report.stdout


def test_list_tasks_names_the_orders_and_shows_tasks_in_one(cli):
    r = cli("list-tasks", "--dataset", "voc", "--orders", "--json")
    assert r.returncode == 0, r.stderr
    found = {o["name"]: o["classes"] for o in json.loads(r.stdout)}
    assert len(found) == 23 and found["plop-b"][:3] == [12, 9, 20] and found["mib-b"][-1] == 5
    r = cli("list-tasks", "--class-order", "mib-c", "--json")  # every dataset: those that know it
    assert r.returncode == 0, r.stderr
    assert {t["dataset"] for t in json.loads(r.stdout)} == {"ade"}
    r = cli("list-tasks", "--dataset", "voc", "--class-order", "plop-b")
    assert r.returncode == 0 and "15-1[-ov]@plop-b" in r.stdout
    r = cli("list-tasks", "--dataset", "voc", "--class-order", "papers", "--json")
    assert r.returncode == 0 and "@" not in r.stdout
    r = cli("list-tasks", "--dataset", "ade", "--class-order", "plop-b")
    assert r.returncode == 2 and "unknown class order 'plop-b' for dataset ade" in r.stderr
