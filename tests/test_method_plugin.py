"""A method is one module: its losses, its class and one registry line. A throw-away method
written in a temporary module (nothing else of incseg changed) goes through train-step,
evaluate and report, with its val set and its place in the report's table taken from the class."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

from helpers import TOY_TRAIN_ARGS

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

# Registers the method as a user's module would, then runs each command of argv[1] (JSON)
# through the incseg CLI in this one process; the exit codes go to stdout as JSON.
DRIVER = '''
import json, sys
import halved_method  # the registry line runs here
from incseg_cli.cli import main

codes = []
for argv in json.loads(sys.argv[1]):
    try:
        main(argv)
        codes.append(0)
    except SystemExit as stop:
        codes.append(stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1))
    if codes[-1]:
        break
print("CODES", json.dumps(codes))
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
    env = {**os.environ, **toy_env, "INCSEG_NO_PROGRESS": "1", "PYTHONPATH": str(tmp_path)}
    env.pop("INCSEG_DEBUG", None)
    result = subprocess.run([sys.executable, "-c", DRIVER, json.dumps(commands)], capture_output=True, text=True,
                            env=env, timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    codes = json.loads(result.stdout.rsplit("CODES", 1)[1])
    assert codes == [0, 0, 0], (codes, result.stderr[-3000:])

    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["method"] == "halved" and manifest["options"]["val_set"] == "all"  # the class's val set
    assert manifest["options"]["head_init"] == "random"
    assert "half_ce" in (out / "losses.csv").read_text().splitlines()[0]  # its loss, logged by name
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["method"] == "halved" and 0 <= metrics["miou"]["all"] <= 100
    # report: its row after step 0
    rows = _json_documents(result.stdout)[-1]["rows"]
    labels = [row["label"] for row in rows]
    assert labels.index("halved") > labels.index("base"), labels


def _json_documents(text: str) -> list:
    """The JSON documents printed one after another (evaluate's, then report's)."""
    decoder, docs, at = json.JSONDecoder(), [], 0
    text = text.split("CODES")[0]
    while True:
        at = text.find("{", at)
        if at < 0:
            return docs
        doc, end = decoder.raw_decode(text, at)
        docs.append(doc)
        at = end
