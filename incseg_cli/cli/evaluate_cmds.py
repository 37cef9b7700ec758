"""evaluate."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Annotated, Optional

import typer

from incseg_cli.cli import options as o
from incseg_cli.cli.app import app
from incseg_cli.cli.declared import Parsed, declared_command
from incseg_cli.cli.train_cmds import show_metrics
from incseg_cli.console import RunFiles, is_main_process, log, log_file
from incseg_cli.stages.evaluate import EvaluateOptions


def _extra(name: str, annotation: object, default: object) -> inspect.Parameter:
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation)


# Where the metrics go: the command's own, not the library function's (api.evaluate returns them).
EXTRA = [
    _extra("out", Annotated[Optional[Path], typer.Option(help="Also write the metrics JSON to this file (atomically).",
                                                        show_default=False)], None),
    _extra("per_class", Annotated[bool, typer.Option("--per-class", help="Also print the per-class IoU table.")],
           False),
    _extra("json_out", o.JsonOut, False),
]


@declared_command(app, "evaluate", [(None, EvaluateOptions)], extra=EXTRA, recipe=False)
def evaluate(parsed: Parsed) -> None:
    """Evaluate a checkpoint on the validation images of its dataset.

    Reports per-class IoU and mIoU of all seen classes, old classes (earlier steps, no
    background), new classes (this step), background, and base/added (the papers'
    multi-step columns). The task and step come from the checkpoint header; the protocol,
    size and val set from the run's manifest.json unless given (a given value that differs
    from the run's is a warning, recorded in the output under evaluation.differs_from_run).

    **Examples**

    ```
    incseg evaluate runs/voc/15-5/step1-mib --data data/VOC2012 --per-class
    incseg evaluate runs/toy/step1-wilson --data demo/toy --json --out metrics-wilson.json
    incseg evaluate runs/toy/step1-mib --data demo/toy --save-predictions preds --overlay
    ```
    """
    from incseg_cli.stages.evaluate import evaluate as run

    out = parsed.extra["out"]
    options = parsed.build(EvaluateOptions)
    # With --out, what evaluate logs also goes to OUT.log.
    with log_file(RunFiles.of(out, directory=False).log if out is not None else None) as log_path:
        metrics = run(options, side_outputs=[("--out", out, False)])
        show_metrics(metrics, parsed.extra["json_out"], out, parsed.extra["per_class"])
        if out is not None and is_main_process():
            log(f"wrote {out}, {log_path.name}")
