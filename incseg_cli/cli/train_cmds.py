"""train-base."""

from __future__ import annotations

import inspect
import json
from pathlib import Path

from incseg_cli import presets
from incseg_cli.cli import options as o
from incseg_cli.cli.app import app
from incseg_cli.cli.declared import Parsed, declared_command
from incseg_cli.console import is_main_process, stderr
from incseg_cli.fileio import write_json
from incseg_cli.engine.stage import TrainSettings
from incseg_cli.reporting import class_table, summary_table
from incseg_cli.stages.train_base import BaseOptions, BaseRun, ModelOptions
from incseg_cli.stages.common import RunOptions


def show_metrics(metrics: dict, as_json: bool, out: Path | None = None, per_class: bool = False) -> None:
    """Rich table on stderr, JSON on stdout with ``--json``, JSON file with ``--out`` (rank 0 only)."""
    if not is_main_process():
        return
    stderr.print(summary_table(metrics))
    if per_class:
        stderr.print(class_table(metrics))
    if out is not None:
        write_json(out, metrics)
    if as_json:
        print(json.dumps(metrics))


TRAINING_PANEL = "Training (unset: the method's, then the preset's)"
MODEL_PANEL = "Model (step 0; later steps inherit it)"
JSON_OUT = inspect.Parameter("json_out", inspect.Parameter.KEYWORD_ONLY, default=False, annotation=o.JsonOut)


@declared_command(app, "train-base", [(None, BaseOptions), (None, RunOptions), (None, ModelOptions, MODEL_PANEL),
                                      (None, TrainSettings, TRAINING_PANEL)],
                  extra=[JSON_OUT], tables=presets.BASE_PRESETS)
def train_base(parsed: Parsed) -> None:
    """Step 0: train the base classes of TASK with full pixel labels.

    Writes OUT/checkpoint.pt, manifest.json and metrics.json. Rerunning the same command
    resumes from OUT/last.pt, or skips a complete run; --force starts over. On the
    'offline' task this is joint training, the upper bound. `--config OUT/manifest.json`
    re-runs a recorded recipe.

    **Examples**

    ```
    incseg train-base --data data/VOC2012 --task 15-5 --out runs/voc/15-5/step0
    incseg train-base --data demo/toy --task 10-10-ov --preset toy --out runs/toy/step0
    incseg train-base --config runs/toy/step0/manifest.json --set seed=1 --out runs/toy/step0-seed1
    ```
    """
    from incseg_cli.stages.train_base import train_base as run

    show_metrics(run(parsed.build(BaseRun)), parsed.extra["json_out"])
