"""train-base: step 0, fully supervised (and joint training on the ``offline`` task)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from incseg_cli import config, datasets, presets
from incseg_cli.datasets import orders
from incseg_cli.config import option
from incseg_cli.console import log
from incseg_cli.methods.registry import JOINT, default_val_set
from incseg_cli.engine.checkpoint import make_header
from incseg_cli.engine.stage import TrainSettings
from incseg_cli.fileio import sha256_file
from incseg_cli.limits import POSITIVE
from incseg_cli.methods.dkd import DKD_DEFAULT_POS_WEIGHT, DKD_POS_WEIGHT
from incseg_cli.methods.supervised import LOSSES, Supervised
from incseg_cli.models import iabn
from incseg_cli.models.backbones import BACKBONES
from incseg_cli.models.deeplab import ModelSpec, build_model, load_backbone_weights
from incseg_cli.stages.common import RunOptions, preset_of, resolve_recipe
from incseg_cli.stages.training import StageData, StagePlan, run_training
from incseg_cli.tasks import get_task, with_order


@dataclass(kw_only=True)
class ModelOptions:
    """The network of step 0; later steps inherit it from their checkpoint."""

    backbone: Optional[str] = option(help="The encoder; tiny is a small CPU CNN.", choices=lambda: list(BACKBONES),
                                     preset=True)
    backbone_weights: Optional[str] = option(
        help="imagenet (torchvision download or cache), none (random init), iabn (InPlace-ABN's "
             "resnet101_iabn_sync.pth.tar of WILSON, MiB and PLOP: LeakyReLU encoder; docs/reproducing.md), or a .pth path.",
        preset=True)
    output_stride: Optional[int] = option(help="Encoder output stride, 16 or 8.", preset=True)
    head_channels: Optional[int] = option(help="ASPP/decoder width = feature size D of banks.", preset=True)
    dilate_first_block: Optional[bool] = option(
        flag="--dilate-first-block/--torchvision-dilation", preset=True,
        help="ResNets: dilate the first block of layer4 (and of layer3 at output stride 8) like the later ones, as "
             "the papers' ResNets do, or keep torchvision's form. Recorded in the checkpoint.")
    align_corners: Optional[bool] = option(
        preset=True, help="Upsample the logits with align_corners=True, as ALIFE's model does (the alife-voc-* "
                          "targets pass it); WILSON and MiB use False. Every later step keeps its step 0's.")


@dataclass(kw_only=True)
class BaseOptions:
    task: str = option(required=True, help="Task name, e.g. 15-5, 15-5-ov, 10-10-ov, 19-1, offline; see `incseg list-tasks`.")
    dataset: Optional[str] = option(
        help="voc, coco, ade, or the name of a dataset of your own (docs/own-data.md). "
             "[the dataset --data describes (incseg-dataset.json), else voc]", metavar="[voc|coco|ade|NAME]")
    loss: str = option("ce", choices=lambda: list(LOSSES),
                       help="ce (ALIFE, MiB, PLOP), bce (WILSON's --bce: one-hot BCE, 255 as background) or dkd "
                            "(DKD's per-class sigmoid BCE with an auxiliary classifier; the model then predicts "
                            "with the sigmoid rule, docs/methods/dkd.md).")
    class_order: Optional[str] = option(
        metavar="ORDER", since_default=True,
        help="Learn the classes in another order: random:SEED (a seeded permutation of the classes before the "
             "task's split), a published order (PLOP's and MiB's: `incseg list-tasks --orders`) or a file ORDER.json "
             f"({orders.FILE_FORM}). The split files are those of TASK@NAME (prepare-splits --class-order); "
             "later steps follow --prev's. [the papers' order]")
    pos_weight: Optional[float] = option(limit=POSITIVE, help="--loss dkd: the BCE's weight of positive pixels. "
                                                              "[ade: 35, else 2]")


@dataclass(kw_only=True)
class BaseRun(BaseOptions, RunOptions, ModelOptions, TrainSettings):
    """Every option of train-base, resolved by ``resolve_base``."""


def resolve_base(run: BaseRun) -> BaseRun:
    """Command line, then the preset (``--preset``, default: the dataset's)."""
    dataset = datasets.resolve(run.dataset, run.data)
    run = dataclasses.replace(run, dataset=dataset, task=with_order(dataset, run.task, run.class_order))
    run = resolve_recipe(run, run.dataset, presets.BASE_PRESETS, Supervised.recipe(run.loss, preset_of(run, run.dataset)))
    # ``iabn`` names a file: the manifest and the input checks see its path
    run = dataclasses.replace(run, backbone_weights=iabn.resolve(run.backbone_weights))
    method_name = JOINT if get_task(run.dataset, run.task).num_steps == 1 else "base"
    return dataclasses.replace(run, val_set=run.val_set or default_val_set(method_name, run.loss))


def train_base(run: BaseRun) -> dict[str, Any]:
    """Train step 0 of ``run.task``; returns the metrics of the finished run."""
    given = config.given(run)
    run = resolve_base(run)
    task = get_task(run.dataset, run.task)
    pos_weight = run.pos_weight
    if run.loss == "dkd" and pos_weight is None:
        pos_weight = DKD_POS_WEIGHT.get(run.dataset, DKD_DEFAULT_POS_WEIGHT)
        run = dataclasses.replace(run, pos_weight=pos_weight)
    method = Supervised(run.loss, pos_weight)
    method.name = JOINT if task.num_steps == 1 else "base"
    weights = run.backbone_weights
    inputs: dict[str, str] = {}
    if weights not in ("imagenet", "none"):
        inputs[str(weights)] = sha256_file(weights) if Path(weights).is_file() else "missing"
    spec = ModelSpec.for_backbone(run.backbone, task.head_sizes(0), run.output_stride, run.head_channels,
                                  bool(run.dilate_first_block), bool(run.align_corners), method.decision)

    def build(data: StageData, run: BaseRun, _: None) -> tuple[Any, Supervised, dict[str, Any]]:
        model = build_model(spec)
        source = load_backbone_weights(model, weights)
        method.prepare_model(model)
        if weights == "none" and run.backbone != "tiny":
            log(f"WARNING: the {spec.backbone} backbone starts from random weights (--backbone-weights none); "
                "the papers' numbers need ImageNet weights")
        # model.spec: the weights set its activation (InPlace-ABN's file: LeakyReLU)
        return model, method, make_header(task, 0, method.name, model.spec, None, backbone_weights=source)

    return run_training(StagePlan(run=run, task=task, step=0, method_name="base", inputs=inputs, build=build,
                                  given=given))
