"""--log-to: TensorBoard events readable by tensorboard's own reader; a missing tracker refused."""

from __future__ import annotations

import importlib.util
import os

import pytest

from helpers import TOY_TRAIN_ARGS, commands_in_one_process


def test_a_missing_tracker_is_one_line_before_any_work(cli, toy_root, tmp_path, monkeypatch):
    if importlib.util.find_spec("wandb") is not None:
        pytest.skip("wandb is installed here")
    r = cli("train-base", "--data", toy_root, "--task", "10-10-ov", *TOY_TRAIN_ARGS, "--log-to", "wandb",
            "--out", tmp_path / "run")
    assert r.returncode == 2 and "--log-to wandb needs the wandb package: pip install wandb" in r.stderr
    assert not (tmp_path / "run").exists()


@pytest.mark.skipif(importlib.util.find_spec("tensorboard") is None, reason="the tensorboard extra is not installed")
def test_tensorboard_events_hold_every_loss_row_and_the_validation(toy_root, toy_env, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    (r,) = commands_in_one_process(
        [["cli", ["train-base", "--data", toy_root, "--task", "10-10-ov", *TOY_TRAIN_ARGS, "--epochs", "2",
                  "--val-interval", "1", "--log-to", "tensorboard", "--out", out]]], tmp_path / "steps", toy_env)
    assert r.returncode == 0, r.stderr[-2000:]
    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"loss/ce", "loss/total", "lr/model", "val/miou_all"} <= tags
    rows = (out / "losses.csv").read_text().splitlines()[1:]
    losses = events.Scalars("loss/total")
    assert [e.step for e in losses] == [int(line.split(",")[0]) for line in rows]
    assert losses[-1].value == pytest.approx(float(rows[-1].split(",")[-1]), rel=1e-6)
    assert len(events.Scalars("val/miou_all")) == 1  # after epoch 1; the last epoch's is the final evaluation
    assert os.listdir(out / "tensorboard")
