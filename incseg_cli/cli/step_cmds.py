"""train-step: one incremental step with any method."""

from __future__ import annotations

from incseg_cli.cli import options as o
from incseg_cli.cli.app import app
from incseg_cli.cli.train_cmds import collect_options, show_metrics


@app.command("train-step")
def train_step(
    prev: o.Prev,
    data: o.Data,
    method: o.Method,
    task: o.StepTask = None,
    step: o.StepOpt = None,
    splits: o.Splits = None,
    out: o.Out = None,
    preset: o.Preset = None,
    epochs: o.StepEpochs = None,
    batch_size: o.BatchSize = None,
    lr: o.StepLr = None,
    optimizer: o.Optimizer = None,
    weight_decay: o.WeightDecay = None,
    momentum: o.Momentum = None,
    lr_power: o.LrPower = None,
    crop_size: o.CropSize = None,
    scale_min: o.ScaleMin = None,
    scale_max: o.ScaleMax = None,
    hflip: o.Flip = True,
    eval_protocol: o.EvalProtocol = None,
    eval_size: o.EvalSize = None,
    val_set: o.ValSet = None,
    val_interval: o.ValInterval = None,
    workers: o.Workers = None,
    seed: o.Seed = 0,
    device: o.Device = "auto",
    amp: o.Amp = "auto",
    compile: o.Compile = False,
    head_init: o.HeadInit = None,
    lambda_ali: o.LambdaAli = None,
    lambda_kd: o.LambdaKd = None,
    alpha: o.Alpha = None,
    pseudo_epochs: o.PseudoEpochs = None,
    affinity: o.Affinity = True,
    image_labels: o.ImageLabels = None,
    lr_head: o.LrHead = None,
    lr_localizer: o.LrLocalizer = None,
    lambda_enc: o.LambdaEnc = None,
    pod_factor: o.PodFactor = None,
    pod_logits_factor: o.PodLogitsFactor = None,
    pseudo_floor: o.PseudoFloor = None,
    pseudo_median: o.PseudoMedian = None,
    force: o.Force = False,
    json_out: o.JsonOut = False,
) -> None:
    """Step t >= 1: learn the classes of the next step from the step t-1 run (--prev).

    The step t-1 model becomes the frozen old model and the start of the new one, which
    gets one more classifier head. Methods differ only in their losses. Writes a run
    directory like train-base's; rerunning resumes or skips, --force starts over.
    The dataset and task come from --prev.
    """
    from incseg_cli.stages.step import train_step as run

    metrics = run(collect_options(locals()))
    show_metrics(metrics, json_out)
