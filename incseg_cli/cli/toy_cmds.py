"""``make-toy-data``: the synthetic dataset that demos and tests run on."""

from __future__ import annotations

import json

from incseg_cli.cli.app import app
from incseg_cli.cli.declared import Parsed, declared_command
from incseg_cli.cli.options import json_option
from incseg_cli.console import log
from incseg_cli.data.toy import ToyDataOptions, make_toy_data


@declared_command(app, "make-toy-data", [(None, ToyDataOptions)], extra=[json_option("a JSON summary")],
                  recipe=False)
def make_toy_data_cmd(parsed: Parsed) -> None:
    """Write a synthetic dataset, in exactly the PASCAL VOC layout or as a dataset of your own.

    20 classes, each a (shape, texture) pair with random colours, 1-3 objects per image on a smooth noisy background, a 2-px void (255) band on every object contour. Rerunning with the same parameters does nothing.

    **Examples**

    ```
    incseg make-toy-data --out data/toy --images 3000 --val-images 200
    incseg make-toy-data --out data/toy-custom --format custom --images 300 --size 48
    ```
    """
    o = parsed.build(ToyDataOptions)
    summary = make_toy_data(o)
    out, images, val_images, size, seed = o.out, o.images, o.val_images, o.size, o.seed
    if summary.skipped:
        log(f"{out}: toy dataset up to date ({images} train + {val_images} val, {size} px, seed {seed})")
    else:
        pix = summary.stats["pixels"]
        log(
            f"wrote {images} train + {val_images} val toy images ({size} px, seed {seed}, {o.format} layout) to {out} "
            f"in {summary.seconds:.1f} s; pixels: {pix['background']:.0%} background, "
            f"{pix['objects']:.0%} objects, {pix['void']:.0%} void"
        )
    if parsed.extra["json_out"]:
        print(json.dumps(summary.to_json(), indent=2))
