"""The one template of the training stages (train-base, train-step, finetune-classifier).

A stage resolves its typed options, then hands ``run_training`` what differs: its task and
step, the option objects to record, extra input hashes, a ``prepare`` run after the data is
read (method checks and derived values, before anything is written) and a ``build`` run only
when there is training to do (models, method, checkpoint header).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from incseg_cli import config
from incseg_cli.datasets.layout import DatasetLayout
from incseg_cli.engine.stage import TrainingStage, seed_everything
from incseg_cli.fileio import sha256_file
from incseg_cli.replay import ReplayMemory
from incseg_cli.stages.common import default_run_dir, training_data
from incseg_cli.tasks import Task


@dataclass
class StageData:
    """What a training stage read: the dataset, the step's ids, the splits root."""

    layout: DatasetLayout
    splits_root: Path
    train_ids: list[str]
    val_ids: list[str]


@dataclass
class StagePlan:
    run: Any  # resolved options: RunOptions + TrainSettings (+ the stage's own)
    task: Task
    step: int
    method_name: str  # names the default run directory
    method_options: Any = None  # the method's resolved options, recorded with ``run``
    inputs: dict[str, str] = field(default_factory=dict)  # extra input files -> sha256
    train_masks: bool = True
    # (data, method options) -> method options with derived values; may refuse (UsageError)
    prepare: Callable[[StageData, Any], Any] | None = None
    # (data, run, method options) -> (model, method, checkpoint header)
    build: Callable[[StageData, Any, Any], tuple[Any, Any, dict[str, Any]]] | None = None
    given: set[str] = field(default_factory=set)  # options the user set (``config.given``)
    # (data, stage) -> the image replay memory mixed into the training set, or None
    replay: Callable[[StageData, TrainingStage], ReplayMemory | None] | None = None


def file_inputs(*objs: Any) -> dict[str, str]:
    """``{path: sha256}`` of every file named by a path option of ``objs`` (a changed table
    must not pass for the same run)."""
    out: dict[str, str] = {}
    for obj in objs:
        if obj is None:
            continue
        types = config.field_types(obj)
        for f in config.declared(obj):
            value = getattr(obj, f.name)
            is_path = config.base_type(types[f.name]) is Path and value is not None
            if is_path and Path(value).is_file() and f.name not in ("data", "splits", "out"):
                out[str(value)] = sha256_file(value)
    return out


def run_training(plan: StagePlan) -> dict[str, Any]:
    """Read and check the data, decide skip/resume/fresh, build, train, evaluate, write."""
    run, task, step = plan.run, plan.task, plan.step
    run.validate()
    layout, root, train_ids, val_ids, inputs = training_data(task, step, run, train_masks=plan.train_masks)
    data = StageData(layout, root, train_ids, val_ids)
    options = plan.method_options
    if plan.prepare is not None:
        options = plan.prepare(data, options)
    inputs.update(plan.inputs)
    inputs.update(file_inputs(options))
    out = Path(run.out or default_run_dir(task, step, plan.method_name))
    run = dataclasses.replace(run, out=out, splits=root)
    stage = TrainingStage(out, (run, options), inputs, run.force, given=plan.given)
    if stage.complete:
        return stage.existing_metrics()
    seed_everything(run.seed)
    model, method, header = plan.build(data, run, options)
    memory = plan.replay(data, stage) if plan.replay is not None else None
    if memory is not None:  # appended, as DKD's ConcatDataset: an image may be in both
        train_ids = train_ids + memory.ids
    return stage.train(model=model, method=method, task=task, step=step, layout=layout, train_ids=train_ids,
                       val_ids=val_ids, settings=run, header=header, class_names=layout.class_names, replay=memory)
