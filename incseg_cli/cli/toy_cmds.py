"""``make-toy-data``: the synthetic VOC-layout dataset that demos and tests run on."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from incseg_cli.cli.app import app
from incseg_cli.console import log


@app.command("make-toy-data")
def make_toy_data(
    out: Path = typer.Argument(..., help="Output directory (VOC layout); written atomically."),
    images: int = typer.Option(3000, "--images", help="Training images (train_aug list)."),
    val_images: int = typer.Option(200, "--val-images", help="Validation images (val list)."),
    size: int = typer.Option(64, "--size", help="Image side in pixels (at least 32)."),
    seed: int = typer.Option(0, "--seed", help="Random seed; same arguments give identical bytes."),
    workers: int = typer.Option(1, "--workers", help="Processes to draw with (does not change the output)."),
    force: bool = typer.Option(False, "--force", help="Replace OUT if it holds anything else."),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON summary on stdout."),
) -> None:
    """Write a synthetic dataset in exactly the PASCAL VOC layout.

    20 classes, each a (shape, texture) pair with random colours, 1-3 objects per image on
    a smooth noisy background, a 2-px void (255) band on every object contour. Rerunning
    with the same parameters does nothing.
    """
    from incseg_cli.data.toy import build_toy_dataset

    summary = build_toy_dataset(
        out, images=images, val_images=val_images, size=size, seed=seed, workers=workers, force=force
    )
    if summary.skipped:
        log(f"{out}: toy dataset up to date ({images} train + {val_images} val, {size} px, seed {seed})")
    else:
        pix = summary.stats["pixels"]
        log(
            f"wrote {images} train + {val_images} val toy images ({size} px, seed {seed}) to {out} "
            f"in {summary.seconds:.1f} s; pixels: {pix['background']:.0%} background, "
            f"{pix['objects']:.0%} objects, {pix['void']:.0%} void"
        )
    if as_json:
        print(json.dumps(summary.to_json(), indent=2))
