"""The InPlace-ABN ImageNet ResNets (``resnet101_iabn_sync.pth.tar``) in incseg's encoder.

WILSON, MiB and PLOP start from InPlace-ABN's ImageNet ResNet-101 (docs/differences.md),
trained by ``mapillary/inplace_abn`` ``scripts/train_imagenet.py``
(``{"state_dict": model.state_dict(), ...}`` of a DistributedDataParallel model, so every key
starts with ``module.``) and hosted in PLOP's GitHub release v1.0 (``IABN_URL``). Facts taken
from the official code (fcdl94/MiB and arthurdouillard/CVPR2021_PLOP, which share the files;
the mapping below is written here, not copied):

* ``models/resnet.py``, ``ResNet.__init__``: ``mod1`` = ``conv1`` (7×7/2) + ``bn1`` (+ ``pool1``,
  max-pool 3/2); ``mod2``..``mod5`` hold ``block1``..``blockN`` (``net_resnet101``: structure
  3, 4, 23, 3, bottleneck); ``classifier.fc`` is ImageNet's classifier, which
  ``segmentation_module.make_model`` deletes before ``body.load_state_dict`` (strict).
* ``modules/residual.py``, ``ResidualBlock``: ``convs`` = ``conv1``, ``bn1``, ``conv2`` (3×3,
  carries the stride and the dilation), ``bn2``, ``conv3``, ``bn3`` (a basic block: ``conv1``,
  ``bn1``, ``conv2``, ``bn2``); ``proj_conv`` + ``proj_bn`` on the shortcut when the stride or
  the width changes. ``bn3`` (basic: ``bn2``) and ``proj_bn`` get ``activation = "identity"``;
  ``forward`` adds the shortcut, then applies ``bn1``'s activation (leaky ReLU).
* ``inplace_abn``'s ``ABN.forward``: ``batch_norm`` then the activation (``leaky_relu`` with
  ``activation_param`` 0.01 in ``make_model``); its parameters and buffers are BatchNorm's
  ``weight``, ``bias``, ``running_mean``, ``running_var`` and, since its state-dict version 2,
  ``num_batches_tracked`` (``ABN._load_from_state_dict`` sets a missing one to 0).

That is torchvision's ResNet v1.5 with LeakyReLU 0.01 in place of each ReLU, layer for layer,
so ``to_encoder_state`` renames every tensor and ``ResNetEncoder.set_activation`` swaps the
activations:

=================================================  ===================================
InPlace-ABN key (``module.`` stripped)              incseg encoder key
=================================================  ===================================
``mod1.conv1.weight``                               ``conv1.weight``
``mod1.bn1.{BN}``                                   ``bn1.{BN}``
``mod{m}.block{b}.convs.conv{i}.weight``            ``layer{m-1}.{b-1}.conv{i}.weight``
``mod{m}.block{b}.convs.bn{i}.{BN}``                ``layer{m-1}.{b-1}.bn{i}.{BN}``
``mod{m}.block{b}.proj_conv.weight``                ``layer{m-1}.{b-1}.downsample.0.weight``
``mod{m}.block{b}.proj_bn.{BN}``                    ``layer{m-1}.{b-1}.downsample.1.{BN}``
``classifier.fc.{weight,bias}``                     dropped (ImageNet's classifier)
=================================================  ===================================

``{BN}``: ``weight``, ``bias``, ``running_mean``, ``running_var``, ``num_batches_tracked``;
m = 2..5, b >= 1, i = 1..3. Any other key refuses the file.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import torch

from incseg_cli.errors import CorruptFileError, IncompatibleError, InputError

IABN_FILE = "resnet101_iabn_sync.pth.tar"
IABN_URL = "https://github.com/arthurdouillard/CVPR2021_PLOP/releases/download/v1.0/" + IABN_FILE
# ``--backbone-weights iabn`` looks for IABN_FILE in these folders, in this order.
WEIGHTS_DIR_ENV = "INCSEG_WEIGHTS"
DATA_WEIGHTS_DIR = Path("data") / "weights"

_BN = r"(weight|bias|running_mean|running_var|num_batches_tracked)"
_RULES = [
    (re.compile(r"mod1\.conv1\.weight"), lambda m: "conv1.weight"),
    (re.compile(rf"mod1\.bn1\.{_BN}"), lambda m: f"bn1.{m[1]}"),
    (re.compile(r"mod([2-5])\.block([1-9]\d*)\.convs\.(conv[1-3])\.weight"),
     lambda m: f"layer{int(m[1]) - 1}.{int(m[2]) - 1}.{m[3]}.weight"),
    (re.compile(rf"mod([2-5])\.block([1-9]\d*)\.convs\.(bn[1-3])\.{_BN}"),
     lambda m: f"layer{int(m[1]) - 1}.{int(m[2]) - 1}.{m[3]}.{m[4]}"),
    (re.compile(r"mod([2-5])\.block([1-9]\d*)\.proj_conv\.weight"),
     lambda m: f"layer{int(m[1]) - 1}.{int(m[2]) - 1}.downsample.0.weight"),
    (re.compile(rf"mod([2-5])\.block([1-9]\d*)\.proj_bn\.{_BN}"),
     lambda m: f"layer{int(m[1]) - 1}.{int(m[2]) - 1}.downsample.1.{m[3]}"),
]
DROPPED = ("classifier.fc.weight", "classifier.fc.bias")
_BACK = [
    (re.compile(r"conv1\.weight"), lambda m: "mod1.conv1.weight"),
    (re.compile(rf"bn1\.{_BN}"), lambda m: f"mod1.bn1.{m[1]}"),
    (re.compile(r"layer(\d)\.(\d+)\.(conv\d|bn\d)\.(\w+)"),
     lambda m: f"mod{int(m[1]) + 1}.block{int(m[2]) + 1}.convs.{m[3]}.{m[4]}"),
    (re.compile(r"layer(\d)\.(\d+)\.downsample\.0\.weight"),
     lambda m: f"mod{int(m[1]) + 1}.block{int(m[2]) + 1}.proj_conv.weight"),
    (re.compile(r"layer(\d)\.(\d+)\.downsample\.1\.(\w+)"),
     lambda m: f"mod{int(m[1]) + 1}.block{int(m[2]) + 1}.proj_bn.{m[3]}"),
]
# models/resnet.py ``_NETS``: (bottleneck, blocks per mod2..mod5) -> the torchvision name
STRUCTURES = {
    (True, (3, 4, 23, 3)): "resnet101",
    (True, (3, 4, 6, 3)): "resnet50",
    (False, (3, 4, 6, 3)): "resnet34",
    (False, (2, 2, 2, 2)): "resnet18",
}
_LAYOUT = re.compile(r"mod[1-5]\.")


def is_iabn_layout(state: dict[str, torch.Tensor]) -> bool:
    """Whether a state dict (``module.`` already stripped) is in InPlace-ABN's ResNet layout."""
    return any(_LAYOUT.match(k) for k in state)


def iabn_to_incseg_key(key: str) -> str | None:
    """The encoder key of an InPlace-ABN key, or None if no rule maps it."""
    for pattern, target in _RULES:
        m = pattern.fullmatch(key)
        if m:
            return target(m)
    return None


def incseg_to_iabn_key(key: str) -> str:
    """The InPlace-ABN name of an encoder key (for messages; the inverse of the table)."""
    for pattern, target in _BACK:
        m = pattern.fullmatch(key)
        if m:
            return target(m)
    return key


def structure(state: dict[str, torch.Tensor]) -> str | None:
    """The ResNet an InPlace-ABN state dict holds (``resnet101``...), None if no known one."""
    blocks = [0, 0, 0, 0]
    for key in state:
        m = re.match(r"mod([2-5])\.block([1-9]\d*)\.", key)
        if m:
            blocks[int(m[1]) - 2] = max(blocks[int(m[1]) - 2], int(m[2]))
    bottleneck = any(".convs.conv3." in k for k in state)
    return STRUCTURES.get((bottleneck, tuple(blocks)))


def _example(keys: list[str]) -> str:
    return ", ".join(keys[:2]) + (f" (+{len(keys) - 2} more)" if len(keys) > 2 else "")


def to_encoder_state(state: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], backbone: str,
                     source: str) -> dict[str, torch.Tensor]:
    """``state`` (InPlace-ABN layout) renamed to the encoder's keys, every tensor mapped.

    Refuses, in one line: a key no rule maps, a tensor the encoder needs that is missing, a
    mapped tensor the encoder has no place for or whose shape differs (CorruptFileError: the
    file claims the layout and breaks it), and an intact checkpoint of another depth than
    ``backbone`` (IncompatibleError)."""
    unknown = [k for k in state if k not in DROPPED and iabn_to_incseg_key(k) is None]
    if unknown:
        raise CorruptFileError(f"{source}: InPlace-ABN checkpoint with {len(unknown)} key(s) that no ResNet "
                               f"layer has: {_example(unknown)}")
    found = structure(state)
    if found is not None and found != backbone:
        raise IncompatibleError(f"{source}: holds InPlace-ABN's {found}, the model's backbone is {backbone} "
                                f"(pass --backbone {found})")
    mapped = {iabn_to_incseg_key(k): v for k, v in state.items() if k not in DROPPED}
    for key in expected:
        # ABN._load_from_state_dict: a checkpoint from before num_batches_tracked has none (0)
        if key.endswith(".num_batches_tracked") and key not in mapped \
                and key.replace("num_batches_tracked", "running_mean") in mapped:
            mapped[key] = torch.tensor(0, dtype=torch.long)
    missing = [incseg_to_iabn_key(k) for k in expected if k not in mapped]
    extra = [incseg_to_iabn_key(k) for k in mapped if k not in expected]
    wrong = [incseg_to_iabn_key(k) for k in expected if k in mapped and mapped[k].shape != expected[k].shape]
    if missing or extra or wrong:
        problems = [f"{len(keys)} {what}: {_example(keys)}" for keys, what in
                    ((missing, "missing"), (extra, "unexpected"), (wrong, "of another shape")) if keys]
        raise CorruptFileError(f"{source}: damaged InPlace-ABN {backbone} checkpoint, tensors "
                               + "; ".join(problems))
    return mapped


def search_dirs() -> list[Path]:
    """Where ``--backbone-weights iabn`` looks for IABN_FILE: $INCSEG_WEIGHTS, ./data/weights,
    then torch's checkpoint cache ($TORCH_HOME/hub/checkpoints, ~/.cache/torch/... by default)."""
    dirs = [Path(os.environ[WEIGHTS_DIR_ENV])] if os.environ.get(WEIGHTS_DIR_ENV) else []
    return dirs + [DATA_WEIGHTS_DIR, Path(torch.hub.get_dir()) / "checkpoints"]


def find_weights() -> Path | None:
    for folder in search_dirs():
        if (folder / IABN_FILE).is_file():
            return folder / IABN_FILE
    return None


def resolve(weights: str) -> str:
    """``--backbone-weights``: ``iabn`` becomes the path of the InPlace-ABN file; any other value
    is returned as it is."""
    if weights != "iabn":
        return weights
    found = find_weights()
    if found is None:
        raise InputError(f"--backbone-weights iabn: {IABN_FILE} is in none of "
                         f"{', '.join(str(d) for d in search_dirs())}; download it from {IABN_URL} "
                         "into one of them, or pass its path")
    return str(found)
