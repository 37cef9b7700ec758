"""doctor: is this box ready for the papers' recipes, and what fixes it if not."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from incseg_cli.cli.app import app
from incseg_cli.errors import InputError, UsageError
from incseg_cli.stages.doctor import MIN_FREE_GB


@app.command("doctor")
def doctor(
    data_root: Annotated[Path, typer.Option("--data-root", help="Where the datasets are (VOCdevkit/VOC2012, ADEChallengeData2016, coco) and where `incseg download` puts them.")] = Path("data"),
    runs_root: Annotated[Path, typer.Option("--runs-root", help="Where the runs will be written; its disk needs --min-free-gb free.")] = Path("runs"),
    min_free_gb: Annotated[float, typer.Option("--min-free-gb", metavar="<GB>", help="Free disk the runs root needs (a few paper chains' checkpoints, banks and predictions).")] = MIN_FREE_GB,
    json_out: Annotated[bool, typer.Option("--json", help="Print one JSON document on stdout.")] = False,
) -> None:
    """The first command on a new box: can it run the papers' recipes, and if not, what is
    missing and which command fixes each thing.

    Shows python, torch, CUDA, cuDNN and NCCL versions; each GPU's name, compute capability,
    memory, bf16 and TF32 support; free disk at the data and runs roots; the datasets under
    the data root with check-data's quick summary; and which backbone weights are present
    (torchvision's resnet101-63fe2227.pth and InPlace-ABN's resnet101_iabn_sync.pth.tar) where
    --backbone-weights imagenet and iabn look for them. Changes nothing.

    Exit 0 when ready: a CUDA GPU this torch build runs, at least one usable dataset, both
    weight files where training finds them and --min-free-gb free at the runs root. Otherwise exit 3 and one line on stderr; stdout
    lists each missing thing with its fix. docs/gpu-box.md#incseg-doctor.

    **Examples**

    ```
    incseg doctor
    incseg doctor --data-root /scratch/data --runs-root /scratch/runs --json | jq .missing
    ```
    """
    from incseg_cli.stages.doctor import check_roots, diagnose, failure_message, format_report

    if min_free_gb < 0:
        raise UsageError(f"--min-free-gb must be 0 or more, got {min_free_gb:g}")
    check_roots(data_root, runs_root)  # before torch's import: a wrong path answers at once
    report = diagnose(data_root, runs_root, min_free_gb=min_free_gb)
    print(json.dumps(report, indent=2) if json_out else format_report(report))
    if not report["ready"]:
        raise InputError(failure_message(report))
