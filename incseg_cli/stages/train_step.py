"""train-step: step t >= 1 from the step t-1 run, with any registered method."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch

from incseg_cli import config, presets
from incseg_cli.engine import distributed
from incseg_cli.config import option
from incseg_cli.data.splits import check_table, load_labels, read_label_table
from incseg_cli.engine.checkpoint import Checkpoint, check_task, load_checkpoint, make_header, model_from_checkpoint
from incseg_cli.engine.stage import TrainSettings
from incseg_cli.errors import InputError, UsageError
from incseg_cli.console import log, warn
from incseg_cli.engine.rundir import RESUME, run_of
from incseg_cli.fileio import read_json_object, sha256_file
from incseg_cli.limits import NON_NEGATIVE
from incseg_cli.methods.registry import STEP_METHODS, head_init_help, methods_help
from incseg_cli.methods.step import ImageLabels, StepContext, StepData, StepMethod
from incseg_cli.models.util import freeze
from incseg_cli.replay import MEMORY_FILE, ReplayMemory, memory_of_run
from incseg_cli.stages.common import RunOptions, preset_of, resolve_recipe
from incseg_cli.stages.replay import build_memory, confident_classes
from incseg_cli.stages.training import StageData, StagePlan, run_training
from incseg_cli.tasks import Task, get_task

HEAD_INITS = ("mib", "aux", "random")


@dataclass(kw_only=True)
class StepOptions:
    prev: Path = option(required=True, help="Run directory (or checkpoint.pt) of step t-1: step 0 from train-base, "
                                            "or an earlier train-step/finetune-classifier run.")
    method: str = option(required=True, choices=lambda: list(STEP_METHODS), help=methods_help)
    task: Optional[str] = option(help="Task name; must match --prev's classes. [--prev's task]")
    step: Optional[int] = option(help="Step to train; must be --prev's step + 1 (a guard for scripts). [--prev's step + 1]")
    head_init: Optional[str] = option(choices=HEAD_INITS,
                                      help=lambda: "New head initialisation: mib (copy background, bias − log(n+1)), "
                                                   "aux (copy DKD's auxiliary row) or random. "
                                                   f"[the method's: {head_init_help()}]")
    replay_images: Optional[int] = option(
        limit=NON_NEGATIVE, since_default=True,
        help="Image replay: mix a class-balanced memory of this many training images of earlier steps into the "
             "step's training set (DKD-M's memory; with mib or plop, MiB-M and PLOP-M). The memory is written to "
             "the run (memory.json) and the next step's candidates start from it. 0: off. [dkd-m: voc/coco/toy "
             "100, ade 300; others: 0]")
    replay_seed: int = option(1, since_default=True, help="Seed of the replay memory's selection (DKD's seed 1).")


@dataclass(kw_only=True)
class StepRun(StepOptions, RunOptions, TrainSettings):
    """Every option of train-step but the method's own (``StepMethod.Options``)."""


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


def resolve_options(cls: type[StepMethod], run: Any, options: Any, task: Task, step: int) -> tuple[Any, Any]:
    """The one precedence rule: command line, then the method's defaults (per task and
    step), then the step preset. Returns the resolved run and method options."""
    preset = preset_of(run, task.dataset)
    method_defaults = cls.defaults(task, step, preset).as_dict()
    stage_defaults = {"val_set": cls.val_set_for()}
    # A preset may choose the head initialisation for every method that starts from the
    # background row (the toy preset: random, docs/own-data.md); else the method's own (DKD's
    # copy of its auxiliary row is part of the method).
    if cls.head_init != "mib" or presets.STEP_PRESETS.get(preset, {}).get("head_init") is None:
        stage_defaults["head_init"] = cls.head_init
    run = resolve_recipe(run, task.dataset, presets.STEP_PRESETS, method_defaults, stage_defaults)
    return run, config.validate(config.fill(options, method_defaults))


def image_label_table(given: Path | None, task: Task, step: int, splits_root: Path,
                      train_ids: list[str]) -> ImageLabels:
    """Image-level class ids of every training image of ``step``: ``--image-labels`` if
    given, else the splits' label table (whose old classes the method masks)."""
    if not given:
        return ImageLabels(load_labels(splits_root, task, step), None)
    path = Path(given)
    table = read_label_table(path, task.class_names)  # ids, or class names (tags of one's own data)
    check_table(table, task.dataset, str(path))
    missing = [i for i in train_ids if i not in table]
    if missing:
        raise InputError(
            f"{path}: no labels for {len(missing)} of the {len(train_ids)} training images of step {step} "
            f"(first: {missing[0]})"
        )
    return ImageLabels({i: table[i] for i in train_ids}, str(path))


def prev_preset(prev: Checkpoint) -> str | None:
    """The preset the ``--prev`` run was trained with (its manifest's), if it has a manifest."""
    manifest = prev.path.parent / "manifest.json"
    if prev.path.name != "checkpoint.pt" or not manifest.is_file():
        return None
    preset = read_json_object(manifest, "run manifest").get("options", {}).get("preset")
    return preset if isinstance(preset, str) and preset in presets.STEP_PRESETS else None


def inherit_preset(run: Any, prev: Checkpoint) -> Any:
    """No ``--preset``: the one ``--prev`` was trained with (a step-0 run trained with the toy
    recipe continues with it, not with the dataset's voc). A different one is a warning."""
    before = prev_preset(prev)
    if before is None:
        return run
    if run.preset is None:
        log(f"--preset {before}, as {prev.path.parent} was trained")
        return dataclasses.replace(run, preset=before)
    if run.preset != before:
        warn(f"--preset {run.preset} differs from the {before} preset {prev.path.parent} was trained with: the step "
             f"runs {run.preset}'s recipe on a model from {before}'s (recorded in manifest.json as options.preset)")
    return run


def method_options_of(method: str, **values: Any) -> Any:
    """The options dataclass of ``method`` with ``values`` set (converted to their declared
    types and range-checked); an option of another method is refused."""
    return config.build_checked(method_class(method).Options, values, f"--method {method}")


def train_step(run: StepRun, options: Any = None) -> dict[str, Any]:
    """Train step ``--prev``'s step + 1 with ``run.method``; ``options`` are the method's
    (an instance of its ``Options``; None: every default)."""
    prev = load_checkpoint(run.prev)
    task, step = resolve_step(prev, run.task, run.step)
    cls = method_class(run.method)
    if options is None:
        options = cls.Options()
    if not isinstance(options, cls.Options):
        raise UsageError(f"--method {cls.name} takes {cls.Options.__name__}, not {type(options).__name__}")
    given = config.given(run, options)
    run = inherit_preset(run, prev)
    run, options = resolve_options(cls, run, options, task, step)
    # the checkpoint file, however --prev was spelled: a rerun naming it otherwise still skips
    run = dataclasses.replace(run, task=task.key, step=step, prev=prev.path)
    parent_sha = sha256_file(prev.path)

    loaded: dict[str, ImageLabels] = {}

    def image_labels(data: StageData, options: Any) -> ImageLabels | None:
        if not cls.needs_image_labels:
            return None
        if "table" not in loaded:
            loaded["table"] = image_label_table(getattr(options, "image_labels", None), task, step,
                                                data.splits_root, data.train_ids)
        return loaded["table"]

    def step_data(data: StageData, options: Any) -> StepData:
        return StepData(task=task, step=step, preset=run.preset, run=run, splits_root=data.splits_root,
                        train_ids=data.train_ids, image_labels=image_labels(data, options))

    def prepare(data: StageData, options: Any) -> Any:
        return config.validate(cls.prepare(options, step_data(data, options)))

    def build(data: StageData, run: StepRun, options: Any) -> tuple[Any, StepMethod, dict[str, Any]]:
        old_model = freeze(model_from_checkpoint(prev))
        model = model_from_checkpoint(prev)
        model.add_step(len(task.new_classes(step)), init=run.head_init)
        base = step_data(data, options)
        ctx = StepContext(**{f.name: getattr(base, f.name) for f in dataclasses.fields(StepData)},
                          options=options, model=model, old_model=old_model, layout=data.layout)
        method = cls.from_context(ctx)
        return model, method, make_header(task, step, method.name, model.spec, parent_sha, parent=str(prev.path))

    replay_size = run.replay_images or 0
    if replay_size and (not cls.reads_masks or cls.needs_image_labels):
        raise UsageError(f"--replay-images: {cls.name} learns from image-level labels of the step's own images; "
                         "replay works with methods that read masks (ft, mib, plop, dkd, alife)")
    inputs = {str(prev.path): parent_sha}
    prev_run = run_of(prev.path)
    prev_memory = prev_run / MEMORY_FILE if prev_run is not None else None
    if replay_size and step >= 2 and prev_memory is not None and prev_memory.is_file():
        inputs[str(prev_memory)] = sha256_file(prev_memory)  # another memory, other candidates

    def replay(data: StageData, stage: Any) -> ReplayMemory | None:
        if not replay_size:
            return None
        own = memory_of_run(stage.run.path) if stage.state == RESUME else None
        if own is not None and (own.step, own.size, own.seed) == (step, replay_size, run.replay_seed):
            log(f"replay memory: {len(own.ids)} images, read back from {stage.run.path / MEMORY_FILE}")
            return own

        def labeller(ids: list[str]) -> dict[str, list[int]]:
            old = freeze(model_from_checkpoint(prev)).to(stage.device)
            return confident_classes(old, data.layout, ids, task, step - 1, stage.device, run.eval_size,
                                     max(1, run.batch_size), run.workers or 0)

        def select() -> ReplayMemory:
            # the old model's pass must not move the RNG the training draws from
            with torch.random.fork_rng(devices=[]):
                return build_memory(task, step, replay_size, run.replay_seed, data.splits_root, prev_run, labeller)

        return distributed.on_main(select)

    return run_training(StagePlan(run=run, task=task, step=step, method_name=cls.name, method_options=options,
                                  inputs=inputs, train_masks=cls.reads_masks, prepare=prepare, build=build,
                                  given=given, replay=replay))
