"""train-base: step 0, fully supervised (and joint training on the ``offline`` task)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from incseg_cli.console import log
from incseg_cli.data.valsets import check_val_set, default_val_set
from incseg_cli.engine.checkpoint import make_header
from incseg_cli.engine.stage import TrainingStage, TrainSettings, seed_everything
from incseg_cli.fileio import sha256_file
from incseg_cli.methods.supervised import Supervised
from incseg_cli.models.deeplab import ModelSpec, build_model, load_backbone_weights
from incseg_cli.stages.common import default_run_dir, training_data
from incseg_cli.tasks import get_task

SETTINGS_FIELDS = set(TrainSettings.__dataclass_fields__)


def settings_from(options: dict[str, Any]) -> TrainSettings:
    settings = TrainSettings(**{k: options[k] for k in SETTINGS_FIELDS if k in options})
    settings.validate()
    return settings


def train_base(options: dict[str, Any]) -> dict[str, Any]:
    """Train step 0 of ``options['task']``; returns the metrics of the finished run.

    ``options`` holds every resolved option of the command (see ``cli/train_cmds.py``)."""
    task = get_task(options["dataset"], options["task"])
    settings = settings_from(options)
    method = Supervised(options["loss"])
    method_name = "joint" if task.num_steps == 1 else "base"
    val_set = options.get("val_set") or default_val_set(method_name, options["loss"])
    options = {**options, "val_set": check_val_set(val_set)}
    layout, root, train_ids, val_ids, inputs = training_data(task, 0, options)
    weights = options["backbone_weights"]
    if weights not in ("imagenet", "none"):
        inputs[str(weights)] = sha256_file(weights) if Path(weights).is_file() else "missing"
    out = Path(options["out"] or default_run_dir(task, 0, "base"))
    options = {**options, "out": str(out), "splits": str(root)}
    spec = ModelSpec.for_backbone(options["backbone"], task.head_sizes(0), options["output_stride"],
                                  options["head_channels"], options.get("dilate_first_block", False),
                                  options.get("align_corners", False))
    # Opening the stage touches nothing; --out is made only by stage.train, once the model
    # and its weights below have loaded.
    stage = TrainingStage(out, options, inputs, options["force"])
    if stage.complete:
        return stage.existing_metrics()
    seed_everything(settings.seed)
    model = build_model(spec)
    source = load_backbone_weights(model, weights)
    if weights == "none" and options["backbone"] != "tiny":
        log(f"WARNING: the {spec.backbone} backbone starts from random weights (--backbone-weights none); "
            "the papers' numbers need ImageNet weights")
    method.name = method_name
    header = make_header(task, 0, method_name, spec, None, backbone_weights=source)
    return stage.train(model=model, method=method, task=task, step=0, layout=layout, train_ids=train_ids,
                       val_ids=val_ids, settings=settings, header=header, class_names=layout.class_names)
