"""predict and export: using a finished run."""

from __future__ import annotations

import inspect
import json
from typing import Annotated

import typer

from incseg_cli.cli.app import app
from incseg_cli.cli.declared import Parsed, declared_command
from incseg_cli.console import is_main_process
from incseg_cli.stages.export import ExportOptions
from incseg_cli.stages.predict import PredictOptions


def _json_out(what: str) -> inspect.Parameter:
    return inspect.Parameter("json_out", inspect.Parameter.KEYWORD_ONLY, default=False, annotation=Annotated[
        bool, typer.Option("--json", metavar="", help=f"Print {what} as one JSON document on stdout.")])


@declared_command(app, "predict", [(None, PredictOptions)], extra=[_json_out("predict.json's record")], recipe=False)
def predict(parsed: Parsed) -> None:
    """Masks of a finished run for your own images: DIR/NAME.png per image.

    Each mask holds the label ids of the run's classes at the image's own size, as a
    palette PNG in the dataset's palette. The image is resized as evaluate resizes it (the
    run's --eval-protocol and --eval-size unless given; under crop, pixels outside the
    centre crop are 255, void; --eval-protocol full predicts every pixel). Also writes
    DIR/areas.csv and DIR/areas.json (each image's pixels and fraction per class) and
    DIR/predict.json (the run, the resize policy, the precision). JPEG, PNG, grayscale,
    RGBA and 16-bit images of any size are read. A rerun skips images whose mask is
    written (Ctrl-C loses nothing); DIR holding masks of another run or settings is
    refused unless --force. On the val images, with --amp off on CUDA, the masks equal
    evaluate --save-predictions'. docs/api.md.

    **Examples**

    ```
    incseg predict runs/voc/15-5/step1-mib photos/ --out masks/
    incseg predict runs/toy/step0 demo/toy/JPEGImages --out runs/toy/masks --overlay --eval-protocol full
    incseg predict runs/voc/15-5/step1-mib list.txt one.jpg --out masks/ --device cuda --batch-size 32
    ```
    """
    from incseg_cli.stages.predict import predict as run

    record = run(parsed.build(PredictOptions))
    if parsed.extra["json_out"] and is_main_process():
        print(json.dumps(record))


@declared_command(app, "export", [(None, ExportOptions)], extra=[_json_out("the program's metadata (incseg.json)")], recipe=False)
def export(parsed: Parsed) -> None:
    """A finished run as a torch.export program (.pt2) a service loads without incseg.

    The program takes uint8 RGB images [N, 3, H, W] (0..255; any N, H and W >= 16),
    normalises them inside, and returns (labels, logits): uint8 label ids [N, H, W] and
    float32 scores [N, C, H, W]. It predicts the pixels it is given (evaluate's full
    protocol). Class names, label ids, palette, normalisation and the run's own resize
    policy are in the file's incseg.json (torch.export.load(FILE, extra_files=...)).
    docs/api.md.

    **Examples**

    ```
    incseg export runs/voc/15-5/step1-mib --out models/voc-15-5-mib.pt2
    incseg export runs/toy/step0 --out runs/toy/step0.pt2 --force
    ```
    """
    from incseg_cli.stages.export import export_run

    meta = export_run(parsed.build(ExportOptions))
    if parsed.extra["json_out"] and is_main_process():
        print(json.dumps(meta))
