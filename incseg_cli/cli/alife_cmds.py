"""ALIFE-M stages: extract-features, fit-rotations, rotate-bank and finetune-classifier (Step 3).

Their options are declared once, in the stage modules (``ExtractFeaturesOptions``,
``FitRotationsOptions``, ``RotateBankOptions``); the commands only parse them and call the
stage.
"""

from __future__ import annotations

import inspect as pyinspect
import json
from typing import Annotated, Any

import typer

from incseg_cli import presets
from incseg_cli.cli.app import app
from incseg_cli.cli.declared import Parsed, declared_command
from incseg_cli.cli.train_cmds import JSON_OUT, TRAINING_PANEL, show_metrics
from incseg_cli.engine.stage import TrainSettings
from incseg_cli.methods.alife import ALIFEClassifierFinetune
from incseg_cli.stages.common import RunOptions
from incseg_cli.stages.finetune import FinetuneOptions, FinetuneRun
from incseg_cli.stages.features import ExtractFeaturesOptions
from incseg_cli.stages.rotations import FitRotationsOptions, RotateBankOptions

JSON_SUMMARY = pyinspect.Parameter(
    "json_out", pyinspect.Parameter.KEYWORD_ONLY, default=False,
    annotation=Annotated[bool, typer.Option("--json", metavar="", help="Print a summary as one JSON document on stdout.")])


def _print(summary: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(summary))


@declared_command(app, "extract-features", [(None, ExtractFeaturesOptions)], extra=[JSON_SUMMARY],
                  tables=presets.BASE_PRESETS)
def extract_features(parsed: Parsed) -> None:
    """ALIFE Step 2-1: the feature memory of the classes --prev's step learned.

    S vectors per class, each the decoder features of --prev averaged over the class region
    of an augmented training crop of that step (regions under 0.5% of the crop rejected).
    Writes an HDF5 bank (readable with h5ls/h5py); rerunning with the same inputs skips
    (options that do not change the bank, such as --workers or --device, may differ).
    Runs as one process on one device (not under torchrun). docs/methods/alife.md.

    **Examples**

    ```
    incseg extract-features --prev runs/voc/15-5-ov/step0 --data data/VOC2012 --out banks/15-5-step0.h5

    incseg extract-features --prev runs/voc/15-1-ov/step1-alife-m --append banks/step1-rotated.h5 --data data/VOC2012 --out banks/step1.h5

    incseg extract-features --prev runs/toy/step0 --data demo/toy --preset toy --samples 100 --out runs/toy/bank.h5
    ```
    """
    from incseg_cli.stages.features import extract_features as run

    _print(run(parsed.build(ExtractFeaturesOptions)), parsed.extra["json_out"])


@declared_command(app, "fit-rotations", [(None, FitRotationsOptions)], extra=[JSON_SUMMARY],
                  tables=presets.BASE_PRESETS)
def fit_rotations(parsed: Parsed) -> None:
    """ALIFE Step 2-2: one Cayley rotation per bank class, from --prev's to --current's features.

    Trains with λ_ROT·L_FID + (1 − λ_ROT)·L_REG on the stage-t training images, then writes
    the rotations (--out) and a new bank with every vector rotated (--out-bank). Ctrl-C
    writes OUT_STEM.last.pt; rerunning the same command resumes, or skips when done. Runs
    as one process on one device (not under torchrun). docs/methods/alife.md.

    **Examples**

    ```
    incseg fit-rotations --bank banks/15-5-step0.h5 --prev runs/voc/15-5-ov/step0 --current runs/voc/15-5-ov/step1-alife --data data/VOC2012 --out banks/rot1.pt --out-bank banks/15-5-step0-rotated.h5

    incseg fit-rotations --bank runs/toy/bank.h5 --prev runs/toy/step0 --current runs/toy/step1-alife --data demo/toy --preset toy --out runs/toy/rot.pt --out-bank runs/toy/bank-rotated.h5
    ```
    """
    from incseg_cli.stages.rotations import fit_rotations as run

    _print(run(parsed.build(FitRotationsOptions)), parsed.extra["json_out"])


@declared_command(app, "rotate-bank", [(None, RotateBankOptions)], extra=[JSON_SUMMARY])
def rotate_bank(parsed: Parsed) -> None:
    """Apply a rotations file to a bank (fit-rotations already writes its rotated bank).

    The bank must hold the classes of the rotations, in the feature space they map from.

    **Examples**

    ```
    incseg rotate-bank --rotations banks/rot1.pt --bank banks/15-5-step0.h5 --out banks/15-5-step0-rotated.h5
    ```
    """
    from incseg_cli.stages.rotations import rotate_bank as run

    _print(run(parsed.build(RotateBankOptions)), parsed.extra["json_out"])


@declared_command(app, "finetune-classifier",
                  [(None, FinetuneOptions), (None, RunOptions), (None, TrainSettings, TRAINING_PANEL),
                   (None, ALIFEClassifierFinetune.Options, "ALIFE options")],
                  extra=[JSON_OUT], tables=presets.STEP_PRESETS)
def finetune_classifier(parsed: Parsed) -> None:
    """ALIFE Step 3: fine-tune only the classifier heads of --current with replay.

    Focal loss on the stage-t images (the old model's prediction on unlabelled pixels),
    λ_ALI·ALI against --prev, and λ_MEM·cross-entropy over the whole rotated memory at every
    iteration. Writes a run directory of step t (method alife-m) that evaluate and the next
    train-step --prev accept (docs/methods/alife.md). Unset: 1 epoch at lr 0.001.

    **Examples**

    ```
    incseg finetune-classifier --current runs/voc/15-5/step1-alife --prev runs/voc/15-5/step0 \\
        --bank banks/rotated-1.h5 --data data/VOC2012
    ```
    """
    from incseg_cli.stages.finetune import finetune_classifier as run

    show_metrics(run(parsed.build(FinetuneRun), parsed.build(ALIFEClassifierFinetune.Options)),
                 parsed.extra["json_out"])
