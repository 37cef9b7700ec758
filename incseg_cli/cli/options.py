"""Plain Typer option declarations of the commands not built from declared options
(``evaluate``); every training and bank stage declares its options in its own module."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal, Optional

import typer

from incseg_cli.engine.device import TF32_HELP
from incseg_cli.presets import default_workers

Data = Annotated[Path, typer.Option(
    "--data", help="Dataset root: VOC, COCO or ADE20K (docs/gpu-box.md), or your own "
                   "(docs/own-data.md).", show_default=False)]
JsonOut = Annotated[bool, typer.Option("--json", metavar="", help="Print the metrics as one JSON document on stdout.")]
_AUTO_WORKERS = f"the CPUs of this process / torchrun's processes on the node, 1 to 8: {default_workers()} here"
EvalWorkers = Annotated[Optional[int], typer.Option("--workers", help=f"DataLoader worker processes (per process). [{_AUTO_WORKERS}]")]
Device = Annotated[str, typer.Option(help="auto (CUDA if present), cpu, cuda or cuda:N.")]
Amp = Annotated[Literal["auto", "bf16", "fp16", "off"], typer.Option(help="Precision on CUDA. auto: fp32 for evaluation (training: the method's official precision); bf16: the speed option; fp16; off (fp32). CPU runs are always fp32.")]
Tf32 = Annotated[Literal["off", "on"], typer.Option("--tf32", help=TF32_HELP)]
