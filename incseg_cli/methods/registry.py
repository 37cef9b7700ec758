"""The methods ``train-step`` knows, by name. Adding a method is one line here."""

from __future__ import annotations

from incseg_cli.methods.alife import ALIFEStep1
from incseg_cli.methods.ft import FineTuning
from incseg_cli.methods.mib import MiB
from incseg_cli.methods.plop import PLOP
from incseg_cli.methods.step import StepMethod
from incseg_cli.methods.wilson import Wilson

STEP_METHODS: dict[str, type[StepMethod]] = {
    "ft": FineTuning,
    "alife": ALIFEStep1,
    "mib": MiB,
    "plop": PLOP,
    "wilson": Wilson,
}
