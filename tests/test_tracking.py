"""--log-to: TensorBoard events readable by tensorboard's own reader, a W&B offline run read
back as wandb's own records, the hook's calls to a stand-in wandb, the example grid's panels;
a missing tracker refused."""

from __future__ import annotations

import hashlib
import importlib.machinery
import importlib.util
import io
import json
import os
import struct
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import TOY_TRAIN_ARGS, commands_in_one_process

EPOCHS = ["--epochs", "2", "--val-interval", "1"]
GRID = (4 * 32, 3 * 32)  # 4 images of the 32 px toy eval crop, 3 panels each


def _validated_steps(out: Path) -> list[int]:
    """The iterations of the validations of a 2-epoch run: after epoch 1, and the final one."""
    last = int((out / "losses.csv").read_text().splitlines()[-1].split(",")[0])
    return [last // 2, last]


def _final_miou(out: Path) -> float:
    return 100 * json.loads((out / "metrics.json").read_text())["miou"]["all"]


def test_a_missing_tracker_is_one_line_before_any_work(cli, toy_root, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # find_spec then finds no wandb, installed or not
    r = cli("train-base", "--data", toy_root, "--task", "10-10-ov", *TOY_TRAIN_ARGS, "--log-to", "wandb",
            "--out", tmp_path / "run")
    assert r.returncode == 2 and "--log-to wandb needs the wandb package: pip install wandb" in r.stderr
    assert not (tmp_path / "run").exists()


@pytest.mark.skipif(importlib.util.find_spec("tensorboard") is None, reason="the tensorboard extra is not installed")
def test_tensorboard_events_hold_every_loss_row_the_validations_and_the_example_grid(toy_root, toy_env, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    (r,) = commands_in_one_process(
        [["cli", ["train-base", "--data", toy_root, "--task", "10-10-ov", *TOY_TRAIN_ARGS, *EPOCHS,
                  "--log-to", "tensorboard", "--out", out]]], tmp_path / "steps", toy_env)
    assert r.returncode == 0, r.stderr[-2000:]
    events = EventAccumulator(str(out / "tensorboard"), size_guidance={"images": 0})
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"loss/ce", "loss/total", "lr/model", "val/miou_all"} <= tags
    rows = (out / "losses.csv").read_text().splitlines()[1:]
    losses = events.Scalars("loss/total")
    assert [e.step for e in losses] == [int(line.split(",")[0]) for line in rows]
    assert losses[-1].value == pytest.approx(float(rows[-1].split(",")[-1]), rel=1e-6)
    # after epoch 1 (--val-interval) and the stage's final evaluation at the last iteration
    steps = _validated_steps(out)
    miou = events.Scalars("val/miou_all")
    assert [e.step for e in miou] == steps
    assert miou[-1].value == pytest.approx(_final_miou(out), rel=1e-5)
    images = events.Images("examples")
    assert [e.step for e in images] == steps
    for e in images:
        assert (e.height, e.width) == GRID
        assert Image.open(io.BytesIO(e.encoded_image_string)).convert("RGB").size == GRID[::-1]
    assert os.listdir(out / "tensorboard")


def test_the_example_grid_rows_are_the_image_its_ground_truth_and_the_prediction(toy_root):
    from incseg_cli import datasets
    from incseg_cli.datasets import open_layout
    from incseg_cli.engine.examplegrid import ExampleGrid
    from incseg_cli.engine.stage import make_eval_loader
    from incseg_cli.tasks import get_task
    from incseg_cli.visual import eval_view

    layout = open_layout("voc", toy_root)
    # a permuted class order: channel k is not label k, so the grid must map through task.order
    task, ids = get_task("voc", "10-10-ov@random-3"), layout.ids("val")
    grid = ExampleGrid(layout, ids, task, 0, "crop", 32)
    assert len(grid.ids) == 4 and (grid.ids[0], grid.ids[-1]) == (ids[0], ids[-1])
    assert grid.grid() is None  # no validation pass yet
    for batch in make_eval_loader(layout, ids, task, 0, "crop", 32, 5, 0):
        # every image predicted as one channel, its position in the val set modulo the classes
        channel = (batch["index"] % task.num_classes(0)).view(-1, 1, 1)
        grid.on_batch(batch, channel.expand(-1, 32, 32).clone())
    arr = grid.grid()
    assert arr.shape == (*GRID, 3) and arr.dtype == np.uint8
    palette = datasets.get("voc").palette
    for row, image_id in enumerate(grid.ids):
        image, mask = eval_view(layout.read_image("val", image_id), layout.read_mask("val", image_id), "crop", 32)
        cells = arr[32 * row : 32 * (row + 1)]
        np.testing.assert_array_equal(cells[:, :32], np.asarray(image.convert("RGB")))
        np.testing.assert_array_equal(cells[:, 32:64], palette[mask])  # void 255 in the palette's colour
        label = task.order[ids.index(image_id) % task.num_classes(0)]
        assert (cells[:, 64:] == palette[label]).all()
    assert grid.grid() is None  # sent once: the next grid needs the next validation pass


def test_example_grid_rows_of_unequal_images_are_padded():
    from incseg_cli.engine.examplegrid import ExampleGrid
    from incseg_cli.tasks import get_task

    class Layout:  # the full protocol keeps each image's own size
        label_space = "voc"
        sizes = {"a": (6, 4), "b": (9, 5)}

        def read_image(self, split, image_id):
            return Image.new("RGB", self.sizes[image_id], (200, 10, 10))

        def read_mask(self, split, image_id):
            w, h = self.sizes[image_id]
            return np.zeros((h, w), dtype=np.uint8)

    grid = ExampleGrid(Layout(), ["a", "b"], get_task("voc", "10-10-ov"), 0, "full", 32)
    grid.on_batch({"index": torch.tensor([0])}, torch.zeros(1, 4, 6, dtype=torch.int64))
    grid.on_batch({"index": torch.tensor([1])}, torch.ones(1, 5, 9, dtype=torch.int64))
    arr = grid.grid()
    assert arr.shape == (4 + 5, 3 * 9, 3)
    assert (arr[:4, 18:] == 0).all() and (arr[4:, :9] == (200, 10, 10)).all()


def _stand_in_wandb(calls: list) -> types.ModuleType:
    """A ``wandb`` module that records what the hook asks of it."""
    module = types.ModuleType("wandb")
    module.__spec__ = importlib.machinery.ModuleSpec("wandb", None)  # so that find_spec finds it

    class Run:
        def log(self, data, step):
            calls.append(("log", data, step))

        def finish(self, exit_code=0):
            calls.append(("finish", exit_code))

    class WandbImage:
        def __init__(self, data):
            self.data = np.array(data)

    def init(**settings):
        calls.append(("init", settings))
        return Run()

    module.init, module.Image = init, WandbImage
    return module


def test_the_wandb_hook_sends_rows_validations_and_the_grid_to_a_resumable_run(cli, toy_root, toy_env, tmp_path,
                                                                              monkeypatch):
    calls: list = []
    monkeypatch.setitem(sys.modules, "wandb", _stand_in_wandb(calls))
    for key, value in toy_env.items():
        monkeypatch.setenv(key, value)
    out = tmp_path / "run"
    r = cli("train-base", "--data", toy_root, "--task", "10-10-ov", *TOY_TRAIN_ARGS, *EPOCHS, "--log-to", "wandb",
            "--out", out)
    assert r.returncode == 0, r.stderr[-2000:]
    (init,) = [c[1] for c in calls if c[0] == "init"]
    # the id follows the run directory: a resumed run continues the same W&B run
    key = hashlib.sha256(str(out.resolve()).encode()).hexdigest()[:16]
    assert init["id"] == f"incseg-{key}" and init["resume"] == "allow"
    assert (init["dir"], init["name"], init["config"]["epochs"]) == (str(out), "run", 2)
    logs = [(name, value, step) for kind, data, step in (c for c in calls if c[0] == "log")
            for name, value in data.items()]
    assert [step for _, _, step in logs] == sorted(step for _, _, step in logs)  # W&B drops a step that goes back
    rows = (out / "losses.csv").read_text().splitlines()[1:]
    assert [s for n, _, s in logs if n == "loss/total"] == [int(line.split(",")[0]) for line in rows]
    assert {n for n, _, _ in logs} >= {"loss/ce", "loss/total", "lr/model", "val/miou_all", "examples"}
    steps = _validated_steps(out)
    assert [s for n, _, s in logs if n == "val/miou_all"] == steps
    assert [v for n, v, _ in logs if n == "val/miou_all"][-1] == pytest.approx(_final_miou(out), rel=1e-5)
    images = [(v, s) for n, v, s in logs if n == "examples"]
    assert [s for _, s in images] == steps
    assert all(v.data.shape == (*GRID, 3) and v.data.dtype == np.uint8 for v, _ in images)
    assert [c for c in calls if c[0] == "finish"] == [("finish", 0)] and calls[-1][0] == "finish"


def test_a_failed_stage_ends_the_wandb_run_once_as_failed(tmp_path, monkeypatch):
    from incseg_cli.engine.tracking import WandbHook

    calls: list = []
    monkeypatch.setitem(sys.modules, "wandb", _stand_in_wandb(calls))
    hook = WandbHook(tmp_path, tmp_path / "losses.csv", {})
    hook.close(ok=False)
    hook.close()
    assert [c for c in calls if c[0] == "finish"] == [("finish", 1)]


def _wandb_records(path: Path):
    """The records of a ``.wandb`` file: wandb's own protobuf ``Record`` in the LevelDB log
    framing its writer uses (wandb 0.31 ships no Python reader of it)."""
    from wandb.proto import wandb_internal_pb2

    data, block, pos, pending = path.read_bytes(), 32768, 7, b""
    assert struct.unpack("<4sHB", data[:7]) == (b":W&B", 0xBEE1, 0)
    while pos + 7 <= len(data):
        left = block - pos % block
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7]) if left >= 7 else (0, 0, 0)
        if kind == 0:  # the zero padding at the end of a block
            pos += left
            continue
        pending += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # a full record, or the last fragment of one
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            pending = b""
            yield record


def test_a_wandb_offline_run_holds_the_series_and_the_example_grid(toy_root, toy_env, tmp_path):
    pytest.importorskip("wandb")
    out, home = tmp_path / "run", tmp_path / "wandb-home"
    env = {**toy_env, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "WANDB_CONSOLE": "off",
           "WANDB_DIR": str(home), "WANDB_CONFIG_DIR": str(home), "WANDB_CACHE_DIR": str(home),
           "WANDB_DATA_DIR": str(home), "WANDB_DISABLE_GIT": "true", "WANDB_API_KEY": "",
           # nothing may leave the machine: an attempt would fail rather than wait
           "HTTPS_PROXY": "http://127.0.0.1:9", "HTTP_PROXY": "http://127.0.0.1:9"}
    (r,) = commands_in_one_process(
        [["cli", ["train-base", "--data", toy_root, "--task", "10-10-ov", *TOY_TRAIN_ARGS, *EPOCHS,
                  "--log-to", "wandb", "--out", out]]], tmp_path / "steps", env)
    assert r.returncode == 0, r.stderr[-2000:]
    (run_dir,) = (out / "wandb").glob("offline-run-*")
    (log,) = run_dir.glob("run-*.wandb")
    records = list(_wandb_records(log))
    kinds = [rec.WhichOneof("record_type") for rec in records]
    (run,) = [rec.run for rec in records if rec.WhichOneof("record_type") == "run"]
    key = hashlib.sha256(str(out.resolve()).encode()).hexdigest()[:16]
    assert run.run_id == f"incseg-{key}" and run.display_name == "run"
    assert {item.key for item in run.config.update} >= {"epochs", "log_to"}
    history = [{item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in rec.history.item}
               for rec in records if rec.WhichOneof("record_type") == "history"]
    rows = (out / "losses.csv").read_text().splitlines()[1:]
    assert [h["_step"] for h in history if "loss/total" in h] == [int(line.split(",")[0]) for line in rows]
    assert all("lr/model" in h for h in history if "loss/total" in h)
    steps = _validated_steps(out)
    assert [h["_step"] for h in history if "val/miou_all" in h] == steps
    assert [h["val/miou_all"] for h in history if "val/miou_all" in h][-1] == pytest.approx(_final_miou(out), rel=1e-5)
    grids = [h for h in history if "examples/path" in h]
    assert [h["_step"] for h in grids] == steps
    for h in grids:
        assert (h["examples/height"], h["examples/width"]) == GRID
        assert Image.open(run_dir / "files" / h["examples/path"]).size == GRID[::-1]
    (exit_,) = [rec.exit for rec in records if rec.WhichOneof("record_type") == "exit"]
    assert exit_.exit_code == 0 and kinds[-1] == "exit"
