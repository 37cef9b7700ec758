"""Small model utilities every layer may use (no imports from the layers above)."""

from __future__ import annotations

from torch import nn


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside DistributedDataParallel and ``torch.compile`` wrappers."""
    while True:
        if hasattr(model, "module"):  # DDP
            model = model.module
        elif hasattr(model, "_orig_mod"):  # compiled
            model = model._orig_mod
        else:
            return model


def freeze(module: nn.Module) -> nn.Module:
    """Eval mode and no gradients: the old model and other fixed references."""
    module.eval()
    for p in module.parameters():
        p.requires_grad_(False)
    return module


def eval_frozen(modules: list[nn.Module]) -> None:
    """BatchNorm on its running statistics and dropout off, inside ``modules`` (ALIFE's
    FREEZE_TYPE "step1", DKD's ``freeze_all_bn``), after ``model.train()``."""
    for root in modules:
        for m in root.modules():
            if isinstance(m, (nn.modules.batchnorm._BatchNorm, nn.Dropout)):
                m.eval()
