"""train-step: one incremental step with any method."""

from __future__ import annotations

from incseg_cli import config, presets
from incseg_cli.cli.app import app
from incseg_cli.cli.declared import Parsed, declared_command
from incseg_cli.cli.train_cmds import JSON_OUT, TRAINING_PANEL, show_metrics
from incseg_cli.engine.stage import TrainSettings
from incseg_cli.methods.registry import STEP_METHODS
from incseg_cli.stages.common import RunOptions
from incseg_cli.stages.train_step import StepOptions, StepRun, method_class

METHOD_PANEL = "Method options (each used only by the methods named in its help)"
METHOD_OPTIONS = [(name, cls.Options, METHOD_PANEL) for name, cls in STEP_METHODS.items()]


def method_option_names() -> set[str]:
    return {f.name for _, options, _ in METHOD_OPTIONS for f in config.declared(options)}


def refuse_other_methods(parsed: Parsed) -> None:
    """Options of a method other than --method, from the command line, --set or --config."""
    cls = method_class(parsed.build(StepRun).method)
    parsed.refuse_others((f.name for f in config.declared(cls.Options)), method_option_names(),
                         f"--method {cls.name}")


@declared_command(app, "train-step", [(None, StepOptions), (None, RunOptions), (None, TrainSettings, TRAINING_PANEL),
                                      *METHOD_OPTIONS],
                  extra=[JSON_OUT], tables=presets.STEP_PRESETS, check=refuse_other_methods)
def train_step(parsed: Parsed) -> None:
    """Step t >= 1: learn the classes of the next step from the step t-1 run (--prev).

    The step t-1 model becomes the frozen old model and the start of the new one, which
    gets one more classifier head. Methods differ only in their losses (docs/methods/).
    Writes a run directory like train-base's; rerunning resumes or skips, --force starts
    over. The dataset and task come from --prev. Options of another method are refused.

    **Examples**

    ```
    incseg train-step --prev runs/voc/15-5/step0 --data data/VOC2012 --method mib
    incseg train-step --prev runs/toy/step0 --data demo/toy --method wilson --preset toy
    incseg train-step --prev runs/toy/step0 --data demo/toy --method plop --preset toy --out runs/toy/step1-plop
    incseg train-step --config runs/toy/step1-mib/manifest.json --set lambda_kd=5 --out runs/toy/step1-mib-kd5
    ```
    """
    from incseg_cli.stages.train_step import train_step as run

    cls = method_class(parsed.build(StepRun).method)
    show_metrics(run(parsed.build(StepRun), parsed.build(cls.Options)), parsed.extra["json_out"])
