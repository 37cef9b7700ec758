"""incseg: class-incremental semantic segmentation (WILSON, ALIFE and baselines) as CLI stages.

The Python API (``incseg_cli.api``: ``load_model``, ``evaluate``, ``Model``, the training
stages and their typed options) is importable from here too; it is loaded on first use, so that ``import incseg_cli`` stays cheap.
"""

from incseg_cli.version import __version__

_API = ("Model", "load_model", "evaluate", "train_base", "train_step", "method_options", "extract_features",
        "fit_rotations", "rotate_bank", "finetune_classifier", "BaseRun", "StepRun", "FinetuneRun",
        "ExtractFeaturesOptions", "FitRotationsOptions", "RotateBankOptions")
__all__ = ["__version__", *_API]


def __getattr__(name: str):
    if name in _API:
        from incseg_cli import api

        return getattr(api, name)
    raise AttributeError(f"module 'incseg_cli' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_API])
