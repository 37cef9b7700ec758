"""finetune-classifier: ALIFE Step 3 (ALIFE's ``run_step3.py``), the final model of an ALIFE-M stage.

The Step-1 run of stage t (--current) keeps its feature extractor; only its classifier heads
train, on the stage-t images (focal loss on the old model's pseudo-labels, ALI against the
stage t−1 final model --prev) and on the whole rotated memory (--bank) at every iteration.
The result is a run directory of step t (method "alife-m") that ``evaluate`` reads and the
next ``train-step --prev`` starts from.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from incseg_cli import config
from incseg_cli.config import option
from incseg_cli.engine.checkpoint import load_checkpoint, make_header, model_from_checkpoint
from incseg_cli.engine.stage import TrainSettings
from incseg_cli.fileio import sha256_file
from incseg_cli.bank import check_bank_fits, read_bank
from incseg_cli.methods.alife import ALIFEClassifierFinetune, ALIFEFinetuneOptions
from incseg_cli.methods.step import StepContext
from incseg_cli.models.util import freeze
from incseg_cli.stages.common import RunOptions, check_step_parent
from incseg_cli.stages.train_step import resolve_options
from incseg_cli.stages.training import StageData, StagePlan, run_training


@dataclass(kw_only=True)
class FinetuneOptions:
    current: Path = option(required=True, help="Step-1 run of stage t: its features are kept, its heads fine-tuned.")
    prev: Path = option(required=True, aliases=("--old",),
                        help="Final model of stage t-1 (the one --current was trained from): pseudo-labels and ALI.")
    bank: Path = option(required=True, help="Rotated bank of every class before stage t (fit-rotations --out-bank).")


@dataclass(kw_only=True)
class FinetuneRun(FinetuneOptions, RunOptions, TrainSettings):
    """Every option of finetune-classifier but ALIFE's weights (``ALIFEFinetuneOptions``)."""


def finetune_classifier(run: FinetuneRun, options: ALIFEFinetuneOptions | None = None) -> dict[str, Any]:
    current, old = load_checkpoint(run.current), load_checkpoint(run.prev)
    task, step = current.task, current.step
    old_sha, current_sha = sha256_file(old.path), sha256_file(current.path)
    check_step_parent(current, old, old_sha, "--prev")
    bank = read_bank(run.bank)
    check_bank_fits(bank, dataset=task.dataset, step=step, classes=task.old_classes(step),
                    feature_dim=current.spec.head_channels, sources={current_sha}, model=f"--current {current.path}",
                    purpose=f"stage {step} (every class before it)")
    cls = ALIFEClassifierFinetune
    options = options or ALIFEFinetuneOptions()
    given = config.given(run, options)
    run, options = resolve_options(cls, run, options, task, step)
    run = dataclasses.replace(run, current=current.path, prev=old.path)  # the files, however spelled

    def build(data: StageData, run: FinetuneRun, options: ALIFEFinetuneOptions) -> tuple[Any, Any, dict[str, Any]]:
        model = model_from_checkpoint(current)
        ctx = StepContext(task=task, step=step, preset=run.preset, run=run, splits_root=data.splits_root,
                          train_ids=data.train_ids, options=options, model=model,
                          old_model=freeze(model_from_checkpoint(old)), layout=data.layout,
                          extra={"memory": bank.stacked()})
        method = cls.from_context(ctx)
        header = make_header(task, step, cls.name, model.spec, current_sha, parent=str(current.path),
                             old=str(old.path), old_sha256=old_sha, bank=str(bank.path))
        return model, method, header

    return run_training(StagePlan(
        run=run, task=task, step=step, method_name=cls.name, method_options=options,
        inputs={str(current.path): current_sha, str(old.path): old_sha, str(bank.path): sha256_file(bank.path)},
        build=build, given=given))
