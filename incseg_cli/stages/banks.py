"""What extract-features and fit-rotations share: the options of a pass over a step's
training images (resolved by ``stages/common.resolve_recipe``, as every stage's), and the
stage policy around feature banks that ``bank.py`` (the HDF5 format only) does not hold:
one process only, which checkpoints share a feature space, and a bank as an output of the
shared runner (``engine/outputs.py``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional

from incseg_cli.config import option
from incseg_cli.engine.crops import CropOptions
from incseg_cli.engine.device import TF32_CHOICES, TF32_HELP
from incseg_cli.engine.distributed import world_from_env
from incseg_cli.engine.kinds import BANK
from incseg_cli.engine.outputs import FileOutput, Found
from incseg_cli.errors import UsageError
from incseg_cli.bank import recorded_fingerprint
from incseg_cli.stages.common import DataOptions


@dataclass(kw_only=True)
class _Runtime:
    workers: Optional[int] = option(
        help="DataLoader worker processes (auto on voc/coco/ade: this process's CPUs, 1 to 8).",
        preset=True, volatile=True)
    device: str = option("auto", help="auto (CUDA if present), cpu, cuda or cuda:N.", volatile=True)
    amp: str = option("auto", choices=("auto", "bf16", "fp16", "off"),
                      help="Precision of the models' forward passes on CUDA: auto and off are fp32 (as the "
                           "official code), bf16 or fp16 autocast trade exactness for speed. CPU runs are fp32.")
    tf32: str = option("off", choices=TF32_CHOICES, help=TF32_HELP, since_default=True)
    force: bool = option(False, volatile=True, recorded=False,
                         help="Replace existing outputs (and a stale resume state) and start over.")


@dataclass(kw_only=True)
class StepImages(_Runtime, CropOptions, DataOptions):
    """Where the step's training images are, how crops are drawn from them, and where the
    pass runs (in that order in ``--help``: a dataclass lists its bases' fields last base
    first). ``None``: the preset's value."""


def single_process(command: str) -> None:
    """Extraction and rotation fitting run in one process: under torchrun every rank would
    write the same files (and fit its own rotations on its shard of the images)."""
    if world_from_env().distributed:
        raise UsageError(f"{command} runs on one device; start it without torchrun (use --device cuda:N)")


def feature_sources(sha256: str, header: Mapping[str, Any]) -> set[str]:
    """Checkpoints whose decoder features equal those of the checkpoint with this sha256 and
    header: itself and, for an ALIFE-M Step-3 run (which trains only the classifier), its parent."""
    same = {sha256}
    if header.get("method") == "alife-m" and header.get("parent_sha256"):
        same.add(header["parent_sha256"])
    return same


def read_bank_output(path: Path) -> Found:
    """What a bank output path holds, for the runner's decision."""
    recorded_as = recorded_fingerprint(path)
    what = "a feature bank" if recorded_as is not None else "a file that is not an intact incseg feature bank"
    return Found(path, exists=True, fingerprint=recorded_as, what=what)


def bank_output(option_name: str, path: Path) -> FileOutput:
    return FileOutput(option_name, Path(path), read_bank_output, BANK)


def recorded(options: Mapping[str, Any]) -> str:
    """The recorded options as a bank attribute (JSON text: HDF5 attributes are flat)."""
    return json.dumps(dict(options), sort_keys=True)
