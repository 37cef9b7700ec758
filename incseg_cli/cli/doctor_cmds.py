"""doctor: is this box ready for the papers' recipes, and what fixes it if not."""

from __future__ import annotations

import json

from incseg_cli.cli.app import app
from incseg_cli.cli.declared import Parsed, declared_command
from incseg_cli.cli.options import json_option
from incseg_cli.errors import InputError
from incseg_cli.stages.doctor import DoctorOptions


@declared_command(app, "doctor", [(None, DoctorOptions)], extra=[json_option("one JSON document")], recipe=False)
def doctor_cmd(parsed: Parsed) -> None:
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
    from incseg_cli.stages.doctor import doctor, failure_message, format_report

    report = doctor(parsed.build(DoctorOptions))
    print(json.dumps(report, indent=2) if parsed.extra["json_out"] else format_report(report))
    if not report["ready"]:
        raise InputError(failure_message(report))
