"""The legal range of every numeric option, in one table.

Commands check the values they were given before any work (``check_options``), and
``TrainSettings.validate`` checks the resolved training settings against the same table, so
that a value out of range is one ``UsageError`` line naming the option, never a default
silently taking its place nor an exception deep inside torch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping

from incseg_cli.errors import UsageError

# Beyond this an int option overflows C code (DataLoader, torch generators) long before it
# means anything.
INT_MAX = 2**31 - 1
SEED_MAX = 2**32 - 1  # numpy's seeds are 32-bit; a larger seed would only alias a smaller one


@dataclass(frozen=True)
class Limit:
    low: float | None = None  # inclusive unless ``open_low``
    high: float | None = None  # inclusive
    open_low: bool = False
    why: str = ""  # said after the range when the reason is not obvious
    choices: tuple[int, ...] = ()  # the only legal values, when there are few

    def problem(self, value: Any) -> str | None:
        """What is wrong with ``value``, or None when it is in range."""
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return None  # not a numeric option value (flags, paths, names)
        if isinstance(value, float) and not math.isfinite(value):
            return f"must be a finite number, got {value}"
        if self.choices:
            names = ", ".join(map(str, self.choices[:-1])) + f" or {self.choices[-1]}"
            return None if value in self.choices else f"must be {names}, got {value}"
        low_ok = self.low is None or (value > self.low if self.open_low else value >= self.low)
        high = self.high if self.high is not None else (INT_MAX if isinstance(value, int) else None)
        if low_ok and (high is None or value <= high):
            return None
        if self.low is not None and self.high is not None:
            text = f"must be in {_num(self.low)}..{_num(self.high)}"
        elif not low_ok:
            text = f"must be {'>' if self.open_low else '>='} {_num(self.low)}"
        else:
            text = f"must be <= {_num(high)}"
        return f"{text}{f' ({self.why})' if self.why else ''}, got {value}"


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


POSITIVE = Limit(0, open_low=True)
NON_NEGATIVE = Limit(0)
AT_LEAST_1 = Limit(1)
FRACTION = Limit(0, 1)

# Option name (the parameter name, ``--eval-size`` is ``eval_size``) -> legal range, for the
# options many stages share; an option of one method or stage has its range on its field
# (``config.option(limit=...)``).
LIMITS: dict[str, Limit] = {
    # training settings
    "epochs": AT_LEAST_1,
    "batch_size": AT_LEAST_1,
    "lr": POSITIVE,
    "weight_decay": NON_NEGATIVE,
    "momentum": Limit(0, open_low=True, why="SGD uses Nesterov momentum"),
    "lr_power": NON_NEGATIVE,
    "crop_size": Limit(16),
    "scale_min": POSITIVE,
    "scale_max": POSITIVE,
    "eval_size": Limit(16),
    "val_interval": Limit(0, why="0 validates only at the end"),
    "workers": NON_NEGATIVE,
    "seed": Limit(0, SEED_MAX),
    # model
    "head_channels": AT_LEAST_1,
    "output_stride": Limit(choices=(8, 16)),
}


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def check_options(values: Mapping[str, Any]) -> None:
    """Refuse the first value of ``values`` outside its range in ``LIMITS`` (unset options,
    ``None``, and names without a limit pass)."""
    for name, value in values.items():
        limit = LIMITS.get(name)
        if limit is None or value is None:
            continue
        problem = limit.problem(value)
        if problem is not None:
            raise UsageError(f"{flag(name)} {problem}")
