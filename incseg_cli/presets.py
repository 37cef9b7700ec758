"""Default hyper-parameters per dataset, and the toy preset for CPU runs.

Every training option defaults to ``None`` on the command line and is filled from the
preset (``--preset``, default: the dataset's own); the resolved values go to the manifest.
The VOC/ADE values are the papers' (both use the same step-0 recipe: ALIFE's ``base.yml``
configs, WILSON's ``run.sh``); the toy values are settings measured on the toy data on a CPU.
"""

from __future__ import annotations

import os
from typing import Any

from incseg_cli import datasets
from incseg_cli.config import option
from incseg_cli.errors import InputError
from incseg_cli.limits import AT_LEAST_1


def workers_or_default(workers: int | None) -> int:
    """``--workers`` as given, or the one default of every command (``default_workers``)."""
    return default_workers() if workers is None else workers


def pool_workers_option(what: str) -> Any:
    """``--workers`` of a command that works in a process pool (reading masks, drawing
    images): at least one process, by default ``default_workers()``; never changes a result."""
    return option(volatile=True, limit=AT_LEAST_1,
                  help=f"Processes that {what}. [default: the CPUs of this process, at most 8]")


def default_workers() -> int:
    """DataLoader workers per process when ``--workers`` is not given: the CPUs this process
    may run on, shared among the processes torchrun starts on the node (LOCAL_WORLD_SIZE),
    at least 1 and at most 8 (beyond 8 a 512 px loader outruns one GPU; more only costs
    memory). The resolved number goes to the manifest; it never changes a result."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    local = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1))
    return max(1, min(8, cpus // local))


_PAPER = {
    "backbone": "resnet101",
    "backbone_weights": "imagenet",
    "output_stride": 16,
    "head_channels": 256,
    "dilate_first_block": True,  # layer4 dilated 2 in every block, as the papers' ResNets
    "align_corners": False,  # logits upsampling at step 0 (ALIFE's recipe: --align-corners)
    "epochs": 30,
    "batch_size": 24,
    "lr": 0.01,
    "optimizer": "sgd",
    "weight_decay": 1e-4,
    "momentum": 0.9,
    "lr_power": 0.9,
    "crop_size": 512,
    "scale_min": 0.5,
    "scale_max": 2.0,
    "eval_protocol": "crop",
    "eval_size": 512,
    "val_interval": 0,
    "workers": default_workers(),
}

def _dataset_presets(step: bool) -> dict[str, dict[str, Any]]:
    """One preset per built-in dataset: the papers' recipe with the dataset's own changes
    (its module's ``recipe`` / ``step_recipe``)."""
    out = {}
    for name in datasets.builtin_names():
        info = datasets.get(name)
        out[name] = {**_PAPER, **info.recipe, **(info.step_recipe if step else {})}
    return out


BASE_PRESETS: dict[str, dict[str, Any]] = {
    **_dataset_presets(step=False),
    "toy": {
        **_PAPER,
        "backbone": "tiny",
        "backbone_weights": "none",
        "output_stride": 8,
        "head_channels": 64,
        "dilate_first_block": False,  # torchvision's form (no effect on the tiny CNN)
        "epochs": 12,
        "batch_size": 16,
        "lr": 2e-3,
        "optimizer": "adam",
        "weight_decay": 0.0,
        "crop_size": 64,
        "scale_min": 1.0,
        "scale_max": 1.0,
        "eval_size": 64,
        # The main process decodes the 64 px toy crops faster than workers start, and on a
        # CPU run the workers would take cores from the model.
        "workers": 0,
    },
}


def default_preset(dataset: str) -> str:
    """The preset of ``dataset`` when --preset is not given: a built-in dataset's own, the
    one a dataset of one's own names in its description (``voc``, the papers' recipe, if
    none)."""
    info = datasets.get(dataset)
    if info.preset not in BASE_PRESETS:
        raise InputError(f"dataset {dataset!r}: its {datasets.DESCRIPTION_FILE} names preset {info.preset!r}, which is "
                         f"not one of {', '.join(BASE_PRESETS)}")
    return info.preset


# train-step: the model comes from the previous step; steps t >= 1 run at one tenth of the
# base rate in both papers (ALIFE step 1 and WILSON's body: 1e-3). Methods override what
# they set differently (epochs per task, loss weights) in their ``defaults``.
_MODEL_KEYS = {"backbone", "backbone_weights", "output_stride", "head_channels", "dilate_first_block", "align_corners"}
STEP_PRESETS: dict[str, dict[str, Any]] = {
    name: {k: v for k, v in values.items() if k not in _MODEL_KEYS}
    for name, values in {**_dataset_presets(step=True), "toy": BASE_PRESETS["toy"]}.items()
}
# Measured on the toy data: Adam 1e-3 for 6 epochs at step 1 (1e-4 broke MiB's new classes).
# New heads start random, not as copies of the background row (MiB's initialisation, which MiB,
# PLOP and ALIFE use on VOC): a small encoder trained from scratch on the old classes maps the
# new objects to the background's features, and with every new class starting at the
# background's probability the background pixels' gradient cancels the new pixels'
# (docs/own-data.md: measured there, new mIoU 0 against 44-83 with random heads).
STEP_PRESETS["toy"].update(lr=1e-3, epochs=6, head_init="random")
