"""finetune-classifier: ALIFE Step 3 (alife.md §1.6, §3.7), the final model of an ALIFE-M stage.

The Step-1 run of stage t (--current) keeps its feature extractor; only its classifier heads
train, on the stage-t images (focal loss on the old model's pseudo-labels, ALI against the
stage t−1 final model --old) and on the whole rotated memory (--bank) at every iteration.
The result is a run directory of step t (method "alife-m") that ``evaluate`` reads and the
next ``train-step --prev`` starts from.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from incseg_cli.engine.checkpoint import load_checkpoint, make_header, model_from_checkpoint
from incseg_cli.engine.stage import TrainingStage, seed_everything
from incseg_cli.fileio import sha256_file
from incseg_cli.memory import check_bank_fits, read_bank
from incseg_cli.methods.alife import ALIFEClassifierFinetune
from incseg_cli.methods.step import StepContext, freeze
from incseg_cli.stages.base import settings_from
from incseg_cli.stages.common import check_step_parent, default_run_dir, training_data
from incseg_cli.stages.step import resolve_options


def finetune_classifier(given: dict[str, Any]) -> dict[str, Any]:
    current, old = load_checkpoint(given["current"]), load_checkpoint(given["old"])
    task, step = current.task, current.step
    old_sha, current_sha = sha256_file(old.path), sha256_file(current.path)
    check_step_parent(current, old, old_sha, "--old")
    bank = read_bank(given["bank"])
    check_bank_fits(bank, dataset=task.dataset, step=step, classes=task.old_classes(step),
                    feature_dim=current.spec.head_channels, sources={current_sha}, model=f"--current {current.path}",
                    purpose=f"stage {step} (every class before it)")
    cls = ALIFEClassifierFinetune
    options = resolve_options(cls, given, task, step)
    settings = settings_from(options)
    layout, root, train_ids, val_ids, inputs = training_data(task, step, options)
    inputs.update({str(current.path): current_sha, str(old.path): old_sha,
                   str(bank.path): sha256_file(bank.path)})
    out = Path(options["out"] or default_run_dir(task, step, cls.name))
    options.update(out=str(out), splits=str(root), task=task.key, step=step)
    stage = TrainingStage(out, options, inputs, options["force"])
    if stage.complete:
        return stage.existing_metrics()
    seed_everything(settings.seed)
    model = model_from_checkpoint(current)
    ctx = StepContext(task=task, step=step, preset=options["preset"], options=options, model=model,
                      old_model=freeze(model_from_checkpoint(old)), layout=layout, splits_root=root,
                      train_ids=train_ids)
    method = cls.from_bank(ctx, bank)
    header = make_header(task, step, cls.name, model.spec, current_sha, parent=str(current.path),
                         old=str(old.path), old_sha256=old_sha, bank=str(bank.path))
    return stage.train(model=model, method=method, task=task, step=step, layout=layout, train_ids=train_ids,
                       val_ids=val_ids, settings=settings, header=header, class_names=layout.class_names)
