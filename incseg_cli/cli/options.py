"""Option declarations shared by several commands, written once.

Training options default to ``None`` and are filled from ``--preset`` (see presets.py);
the help text gives the paper (voc) and toy values.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from incseg_cli.presets import default_workers

Data = Annotated[Path, typer.Option("--data", help="Dataset root (VOC2012 layout for voc and the toy data).", show_default=False)]
Dataset = Annotated[str, typer.Option(help="Label space of the task: voc, coco or ade.")]
TaskName = Annotated[str, typer.Option("--task", help="Task name, e.g. 15-5, 15-5-ov, 10-10-ov, 19-1, offline; see `incseg list-tasks`.", show_default=False)]
Splits = Annotated[Optional[Path], typer.Option(help="Splits root holding DATASET/TASK/train-T.txt. [default: $INCSEG_SPLITS, ./splits, or the shipped splits]")]
Out = Annotated[Optional[Path], typer.Option(help="Run directory to write. [default: runs/DATASET/TASK/stepT[-METHOD]]")]
Preset = Annotated[Optional[str], typer.Option(help="Defaults for unset options: voc, ade, coco (the papers' recipes) or toy (CPU). [default: the dataset]")]
Force = Annotated[bool, typer.Option("--force", help="Discard an existing run in --out and start over.")]
JsonOut = Annotated[bool, typer.Option("--json", help="Print the metrics as one JSON document on stdout.")]

Backbone = Annotated[Optional[str], typer.Option(help="resnet101, resnet50, resnet34, resnet18 or tiny (a small CPU CNN). [voc: resnet101, toy: tiny]")]
BackboneWeights = Annotated[Optional[str], typer.Option(help="imagenet (torchvision download or cache), none (random init), or a .pth path. [voc: imagenet, toy: none]")]
OutputStride = Annotated[Optional[int], typer.Option(help="Encoder output stride, 16 or 8. [voc: 16, toy: 8]")]
HeadChannels = Annotated[Optional[int], typer.Option(help="ASPP/decoder width = feature size D of banks. [voc: 256, toy: 64]")]
DilateFirstBlock = Annotated[Optional[bool], typer.Option("--dilate-first-block/--torchvision-dilation", help="ResNets: dilate the first block of layer4 (and of layer3 at output stride 8) like the later ones, as the papers' ResNets do, or keep torchvision's form (its first block keeps the previous dilation). Recorded in the checkpoint. [voc/coco/ade: --dilate-first-block, toy: --torchvision-dilation]")]
AlignCorners = Annotated[Optional[bool], typer.Option("--align-corners/--no-align-corners", help="Upsample the logits with align_corners=True, as ALIFE's model does (the alife-voc-* targets pass it); WILSON and MiB use False. Recorded in the checkpoint; every later step keeps its step 0's. [off]")]
Epochs = Annotated[Optional[int], typer.Option(help="Training epochs. [voc: 30, ade: 60, toy: 12]")]
BatchSize = Annotated[Optional[int], typer.Option(help="Global batch size in images (split across processes under torchrun). [voc: 24, toy: 16]")]
Lr = Annotated[Optional[float], typer.Option(help="Base learning rate. [voc: 0.01 SGD, toy: 0.002 Adam]")]
Optimizer = Annotated[Optional[str], typer.Option(help="sgd (momentum 0.9, Nesterov) or adam. [voc: sgd, toy: adam]")]
WeightDecay = Annotated[Optional[float], typer.Option(help="L2 weight decay on every parameter. [voc: 1e-4, toy: 0]")]
Momentum = Annotated[Optional[float], typer.Option(help="SGD momentum. [0.9]")]
LrPower = Annotated[Optional[float], typer.Option(help="Poly schedule power: lr·(1 − it/max_it)^power, per iteration. [0.9]")]
CropSize = Annotated[Optional[int], typer.Option(help="Training crop in pixels (random resized crop). [voc: 512, toy: 64]")]
ScaleMin = Annotated[Optional[float], typer.Option(help="Random resized crop: smallest area fraction. [voc: 0.5, toy: 1.0]")]
ScaleMax = Annotated[Optional[float], typer.Option(help="Random resized crop: largest area fraction. [voc: 2.0, toy: 1.0]")]
Flip = Annotated[bool, typer.Option("--flip/--no-flip", help="Random horizontal flip (p=0.5).")]
EvalProtocol = Annotated[Optional[str], typer.Option(help="crop: resize the shorter side to --eval-size and centre-crop (both papers); full: whole images. [crop]")]
EvalSize = Annotated[Optional[int], typer.Option(help="Evaluation resize/crop size in pixels. [voc: 512, toy: 64]")]
ValSet = Annotated[Optional[str], typer.Option("--val-set", help="Val images of the validation and final evaluation: seen (those with a class of steps 0..t, as MiB, PLOP and ALIFE test) or all (every val image, as WILSON). Recorded in the manifest and metrics.json. [the method's paper: seen; wilson and --loss bce: all]")]
ValInterval = Annotated[Optional[int], typer.Option(help="Validate every N epochs during training, 0 = only at the end. [0]")]
_AUTO_WORKERS = f"the CPUs of this process / torchrun's processes on the node, 1 to 8: {default_workers()} here"
Workers = Annotated[Optional[int], typer.Option(help=f"DataLoader worker processes (per process). [voc/coco/ade: {_AUTO_WORKERS}; toy: 0]")]
EvalWorkers = Annotated[Optional[int], typer.Option("--workers", help=f"DataLoader worker processes (per process). [{_AUTO_WORKERS}]")]
Seed = Annotated[int, typer.Option(help="Seed for weights init, data order and augmentation.")]
Device = Annotated[str, typer.Option(help="auto (CUDA if present), cpu, cuda or cuda:N.")]
Compile = Annotated[bool, typer.Option("--compile", help="Compile the model with torch.compile (opt-in; first iterations are slow while it compiles).")]
Amp = Annotated[str, typer.Option(help="Precision on CUDA. auto: as the method's official code (training: fp16 with GradScaler for WILSON, its --loss bce step 0 included; fp32 for ALIFE, MiB, ft and the rest; evaluation: fp32); bf16: bf16 autocast, the speed option (faster and lighter on GPUs with bf16 tensor cores; not the papers' precision); fp16 (with GradScaler); off (fp32). CPU runs are always fp32.")]

# -- train-step ---------------------------------------------------------------------------------
METHOD_PANEL = "Method options (each used by the methods named in its help)"
Prev = Annotated[Path, typer.Option("--prev", help="Run directory (or checkpoint.pt) of step t-1: step 0 from train-base, or an earlier train-step/finetune-classifier run.", show_default=False)]
Method = Annotated[str, typer.Option("--method", help="ft (fine-tuning), mib, plop, alife (ALIFE step 1) or wilson (image-level labels only).", show_default=False)]
StepOpt = Annotated[Optional[int], typer.Option("--step", help="Step to train; must be the --prev run's step + 1 (a guard for scripts). [default: --prev's step + 1]")]
StepTask = Annotated[Optional[str], typer.Option("--task", help="Task name; must match --prev's classes. [default: --prev's task]")]
StepEpochs = Annotated[Optional[int], typer.Option("--epochs", help="Training epochs. [per method and task: ft/mib voc 30; plop voc 30 (10-1: 10), ade 60; alife voc 15-5: 10, 19-1: 5 (alife.md §6); wilson voc 40, coco 30; toy 6]")]
StepLr = Annotated[Optional[float], typer.Option("--lr", help="Base learning rate (WILSON: of the encoder). [voc/ade/coco: 0.001 SGD, toy: 0.001 Adam]")]
HeadInit = Annotated[Optional[str], typer.Option(help="New head initialisation: mib (copy background, bias − log(n+1)) or random. [mib for mib/plop/alife, random for ft/wilson]", rich_help_panel=METHOD_PANEL)]
LambdaAli = Annotated[Optional[float], typer.Option(help="alife: weight of the adaptive logit regularizer. [per task, alife.md §6: 15-5: 2, 19-1: 1, 15-1: 3,5,2,3,2; other tasks: 1; toy: 0.5]", rich_help_panel=METHOD_PANEL)]
LambdaKd = Annotated[Optional[float], typer.Option(help="alife: KD weight [per task, §6]; mib: calibrated distillation weight [10].", rich_help_panel=METHOD_PANEL)]
Alpha = Annotated[Optional[float], typer.Option(help="wilson: pseudo-label smoothing α (1 = hard labels). [voc: 0.5, coco: 0.9, toy: 0.5]", rich_help_panel=METHOD_PANEL)]
PseudoEpochs = Annotated[Optional[int], typer.Option(help="wilson: warm-up epochs with only L_CLS + L_LOC + L_ENC (localizer and encoder train, the head waits), at constant LR. [voc/coco: 5, toy: 1]", rich_help_panel=METHOD_PANEL)]
Affinity = Annotated[bool, typer.Option("--affinity/--no-affinity", help="wilson: refine the localizer's self-training target with PAMR.", rich_help_panel=METHOD_PANEL)]
ImageLabels = Annotated[Optional[Path], typer.Option(help="wilson: label table (IMAGE_ID TAB class ids) of the step's images. Listing old classes too selects the relaxed setting. [the splits' labels-train.tsv, new classes only]", rich_help_panel=METHOD_PANEL)]
LrHead = Annotated[Optional[float], typer.Option(help="wilson: LR of the ASPP/decoder and classifiers. [10 × --lr]", rich_help_panel=METHOD_PANEL)]
LrLocalizer = Annotated[Optional[float], typer.Option(help="wilson: LR of the localizer, absolute (the official --lr_pseudo). [0.01]", rich_help_panel=METHOD_PANEL)]
LambdaEnc = Annotated[Optional[float], typer.Option(help="wilson: weight of the encoder distillation L_ENC. [1]", rich_help_panel=METHOD_PANEL)]
PodFactor = Annotated[Optional[float], typer.Option(help="plop: Local POD weight of the backbone stages and decoder, scaled by √(C_cur/C_new). [voc/coco/toy: 0.01, ade: 0.001]", rich_help_panel=METHOD_PANEL)]
PodLogitsFactor = Annotated[Optional[float], typer.Option(help="plop: Local POD weight of the logits, scaled by √(C_cur/C_new). [voc/coco/toy: 0.0005, ade: 1e-5]", rich_help_panel=METHOD_PANEL)]
PseudoFloor = Annotated[Optional[float], typer.Option(help="plop: lowest per-class entropy threshold of the old-class pseudo-labels (the official --threshold). [0.001]", rich_help_panel=METHOD_PANEL)]
PseudoMedian = Annotated[Optional[str], typer.Option(help="plop: median of the threshold pre-pass: official (the code's bin walk) or corrected (plop.md §8.1 ablation). [official]", rich_help_panel=METHOD_PANEL)]
