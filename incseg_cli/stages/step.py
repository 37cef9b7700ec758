"""train-step: step t >= 1 from the step t-1 run, with any registered method."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from incseg_cli import presets
from incseg_cli.data.valsets import check_val_set, default_val_set
from incseg_cli.engine.checkpoint import Checkpoint, check_task, load_checkpoint, make_header, model_from_checkpoint
from incseg_cli.engine.stage import TrainingStage, seed_everything
from incseg_cli.errors import UsageError
from incseg_cli.fileio import sha256_file
from incseg_cli.methods.registry import STEP_METHODS
from incseg_cli.methods.step import StepContext, StepMethod, check_method_options, freeze
from incseg_cli.stages.base import settings_from
from incseg_cli.stages.common import default_run_dir, training_data
from incseg_cli.tasks import Task, get_task


def method_class(name: str) -> type[StepMethod]:
    if name not in STEP_METHODS:
        raise UsageError(f"unknown method {name!r}; known: {', '.join(STEP_METHODS)}")
    return STEP_METHODS[name]


def resolve_step(prev: Checkpoint, task_name: str | None, step: int | None) -> tuple[Task, int]:
    """The task and step a ``--prev`` checkpoint leads to, refusing contradictions."""
    task = get_task(prev.header["dataset"], task_name or prev.header["task"])
    expected = prev.step + 1
    if step is not None and step < 1:
        raise UsageError(f"--step {step}: train-step learns steps >= 1 (step 0 is trained by train-base)")
    if step is not None and step != expected:
        raise UsageError(
            f"--step {step} does not follow {prev.path}, which is step {prev.step}; "
            f"give the step {step - 1} run as --prev (or drop --step)"
        )
    if expected >= task.num_steps:
        raise UsageError(
            f"{prev.path} is the last step ({prev.step}) of {task.dataset}/{task.key}; there is no step {expected}"
        )
    check_task(prev, task, prev.step)
    return task, expected


def resolve_options(cls: type[StepMethod], given: dict[str, Any], task: Task, step: int) -> dict[str, Any]:
    """Command line, then the method's own defaults, then the step preset."""
    preset = given.get("preset") or task.dataset
    options = dict(given, preset=preset)
    for key, value in cls.defaults(task, step, preset).items():
        if options.get(key) is None:
            options[key] = value
    options = presets.resolve(preset, options, presets.STEP_PRESETS)
    if options.get("head_init") is None:
        options["head_init"] = cls.head_init
    options["val_set"] = check_val_set(options.get("val_set") or default_val_set(cls.name))
    return options


def train_step(given: dict[str, Any]) -> dict[str, Any]:
    prev = load_checkpoint(given["prev"])
    task, step = resolve_step(prev, given.get("task"), given.get("step"))
    cls = method_class(given["method"])
    check_method_options(cls, given)
    options = resolve_options(cls, given, task, step)
    settings = settings_from(options)
    layout, root, train_ids, val_ids, inputs = training_data(task, step, options, train_masks=cls.reads_masks)
    options.update(cls.prepare(options, task, step, root, train_ids))
    parent_sha = sha256_file(prev.path)
    inputs[str(prev.path)] = parent_sha
    out = Path(options["out"] or default_run_dir(task, step, cls.name))
    options.update(out=str(out), splits=str(root), task=task.key, step=step, prev=str(prev.path))
    stage = TrainingStage(out, options, inputs, options["force"])
    if stage.complete:
        return stage.existing_metrics()
    seed_everything(settings.seed)
    old_model = freeze(model_from_checkpoint(prev))
    model = model_from_checkpoint(prev)
    model.add_step(len(task.new_classes(step)), init=options["head_init"])
    ctx = StepContext(task=task, step=step, preset=options["preset"], options=options, model=model,
                      old_model=old_model, layout=layout, splits_root=root, train_ids=train_ids)
    method = cls.from_context(ctx)
    header = make_header(task, step, method.name, model.spec, parent_sha, parent=str(prev.path))
    return stage.train(model=model, method=method, task=task, step=step, layout=layout, train_ids=train_ids,
                       val_ids=val_ids, settings=settings, header=header, class_names=layout.class_names)
