"""The methods incseg knows, by name. Adding a method is one line here (or one ``register``
call from a module of one's own, before the command runs)."""

from __future__ import annotations

from incseg_cli.errors import UsageError
from incseg_cli.methods.alife import ALIFEClassifierFinetune, ALIFEStep1
from incseg_cli.methods.base import Method
from incseg_cli.methods.dkd import DKD, DKDM
from incseg_cli.methods.ft import FineTuning
from incseg_cli.methods.mib import MiB
from incseg_cli.methods.plop import PLOP
from incseg_cli.methods.step import StepMethod
from incseg_cli.methods.supervised import Supervised
from incseg_cli.methods.wilson import Wilson

# What ``train-step --method`` trains, in the order ``--help`` and report tables list them.
STEP_METHODS: dict[str, type[StepMethod]] = {
    "ft": FineTuning,
    "mib": MiB,
    "plop": PLOP,
    "alife": ALIFEStep1,
    "wilson": Wilson,
    "dkd": DKD,
    "dkd-m": DKDM,
}
# Every method a run's manifest may name: step 0 first, the step methods, ALIFE's Step 3,
# joint training (train-base on a one-step task: the ceiling) last.
JOINT = "joint"
_OTHER_RUNS: dict[str, type[Method]] = {"base": Supervised, "alife-m": ALIFEClassifierFinetune, JOINT: Supervised}


def register(cls: type[StepMethod]) -> type[StepMethod]:
    """Add a step method under ``cls.name`` (usable as a class decorator)."""
    if not cls.name or cls.name in STEP_METHODS or cls.name in _OTHER_RUNS:
        raise UsageError(f"method name {cls.name!r} is empty or taken")
    STEP_METHODS[cls.name] = cls
    return cls


def report_order() -> list[str]:
    """Method names in the order report tables list runs: step 0, each step method followed by
    the stages that continue it (ALIFE-M after ALIFE), the joint ceiling last."""
    order = ["base"]
    for name in STEP_METHODS:
        order += [name, *(n for n, cls in _OTHER_RUNS.items() if getattr(cls, "continues", None) == name)]
    return [*order, JOINT]


def method_of(name: str) -> type[Method] | None:
    """The class behind a run's method name (None for a name incseg does not know)."""
    return STEP_METHODS.get(name) or _OTHER_RUNS.get(name)


def default_val_set(name: str, loss: str | None = None) -> str:
    """The val set of the method's reference code (``seen`` for a method incseg does not
    know, as in the MiB code base most methods build on)."""
    cls = method_of(name)
    return "seen" if cls is None or name == JOINT else cls.val_set_for(loss)


def methods_help() -> str:
    """``--method``'s help, from the registry."""
    return "; ".join(f"{name} ({cls.summary})" if cls.summary else name for name, cls in STEP_METHODS.items()) + \
        ". One page each under docs/methods/."


def head_init_help() -> str:
    """Each step method's own new-head initialisation, for ``--head-init``'s help."""
    by_init: dict[str, list[str]] = {}
    for name, cls in STEP_METHODS.items():
        by_init.setdefault(cls.head_init, []).append(name)
    return ", ".join(f"{init} for {'/'.join(names)}" for init, names in by_init.items())
