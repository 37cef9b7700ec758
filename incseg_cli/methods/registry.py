"""The methods ``train-step`` knows, by name. Adding a method is one line here."""

from __future__ import annotations

from incseg_cli.methods.ft import FineTuning
from incseg_cli.methods.step import StepMethod

STEP_METHODS: dict[str, type[StepMethod]] = {
    "ft": FineTuning,
}
