"""A method is one module: its losses, its class and one registry line. A throw-away method
written in a temporary module (nothing else of incseg changed) goes through train-step,
evaluate and report, with its val set and its place in the report's table taken from the class."""

from __future__ import annotations

import json
import textwrap

from helpers import TOY_TRAIN_ARGS, commands_in_one_process

METHOD = '''
"""Half the cross-entropy: a method that exists only for this test."""
import torch
from torch.nn import functional as F

from incseg_cli.methods.registry import register
from incseg_cli.methods.step import StepMethod


def halved_ce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return 0.5 * F.cross_entropy(logits, labels.long(), ignore_index=255)


@register
class Halved(StepMethod):
    name = "halved"
    summary = "half the cross-entropy"
    head_init = "random"
    val_set = "all"

    def losses(self, model, batch, info):
        return {"half_ce": halved_ce(model(batch["image"])["logits"], batch["label"])}
'''

def test_a_method_in_a_module_of_its_own_runs_through_the_commands(base_run, toy_root, toy_env, tmp_path):
    (tmp_path / "halved_method.py").write_text(textwrap.dedent(METHOD))
    out = tmp_path / "step1-halved"
    commands = [
        ["train-step", "--prev", str(base_run), "--method", "halved", "--data", str(toy_root), *TOY_TRAIN_ARGS,
         "--epochs", "1", "--workers", "0", "--out", str(out)],
        ["evaluate", str(out), "--data", str(toy_root), "--workers", "0", "--json"],
        ["report", str(base_run), str(out), "--json"],
    ]
    # the user's module registers the method, then the commands run as a shell script runs them
    steps = [["python", "import halved_method"], *(["cli", argv] for argv in commands)]
    done = commands_in_one_process(steps, tmp_path / "steps", {**toy_env, "PYTHONPATH": str(tmp_path)})
    assert [r.returncode for r in done] == [0, 0, 0, 0], done[-1].stderr[-3000:]

    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["method"] == "halved" and manifest["options"]["val_set"] == "all"  # the class's val set
    assert manifest["options"]["head_init"] == "random"
    assert "half_ce" in (out / "losses.csv").read_text().splitlines()[0]  # its loss, logged by name
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["method"] == "halved" and 0 <= metrics["miou"]["all"] <= 100
    # report: its row after step 0
    rows = json.loads(done[3].stdout)["rows"]
    labels = [row["label"] for row in rows]
    assert labels.index("halved") > labels.index("base"), labels
