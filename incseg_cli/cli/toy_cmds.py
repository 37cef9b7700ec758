"""``make-toy-data``: the synthetic dataset that demos and tests run on."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal, Optional

import typer

from incseg_cli.cli.app import app
from incseg_cli.cli.data_cmds import positional_or_option
from incseg_cli.console import log


@app.command("make-toy-data")
def make_toy_data(
    positional: Optional[Path] = typer.Argument(None, hidden=True, show_default=False),
    out: Optional[Path] = typer.Option(None, "--out", show_default=False,
                                       help="Output directory; written atomically. [required]"),
    fmt: Literal["voc", "custom"] = typer.Option(
        "voc", "--format",
        help="voc: exactly the PASCAL VOC layout; custom: a dataset of your own (images/, masks/, "
             "incseg-dataset.json naming dataset toy, docs/own-data.md)."),
    images: int = typer.Option(3000, "--images", help="Training images (train_aug list)."),
    val_images: int = typer.Option(200, "--val-images", help="Validation images (val list)."),
    size: int = typer.Option(64, "--size", help="Image side in pixels (at least 32)."),
    seed: int = typer.Option(0, "--seed", help="Random seed; same arguments give identical bytes."),
    workers: Optional[int] = typer.Option(
        None, "--workers", show_default=False,
        help="Processes to draw with (does not change the output). [default: the CPUs of this process, at most 8]"),
    force: bool = typer.Option(False, "--force", help="Replace OUT if it holds anything else."),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON summary on stdout."),
) -> None:
    """Write a synthetic dataset, in exactly the PASCAL VOC layout or as a dataset of your own.

    20 classes, each a (shape, texture) pair with random colours, 1-3 objects per image on a smooth noisy background, a 2-px void (255) band on every object contour. Rerunning with the same parameters does nothing.

    **Examples**

    ```
    incseg make-toy-data --out data/toy --images 3000 --val-images 200
    incseg make-toy-data --out data/toy-custom --format custom --images 300 --size 48
    ```
    """
    from incseg_cli.cli.data_cmds import resolve_workers
    from incseg_cli.data.toy import build_toy_dataset

    out = positional_or_option(positional, out, "out", "make-toy-data")
    summary = build_toy_dataset(
        out, images=images, val_images=val_images, size=size, seed=seed, workers=resolve_workers(workers),
        force=force, fmt=fmt,
    )
    if summary.skipped:
        log(f"{out}: toy dataset up to date ({images} train + {val_images} val, {size} px, seed {seed})")
    else:
        pix = summary.stats["pixels"]
        log(
            f"wrote {images} train + {val_images} val toy images ({size} px, seed {seed}, {fmt} layout) to {out} "
            f"in {summary.seconds:.1f} s; pixels: {pix['background']:.0%} background, "
            f"{pix['objects']:.0%} objects, {pix['void']:.0%} void"
        )
    if as_json:
        print(json.dumps(summary.to_json(), indent=2))
