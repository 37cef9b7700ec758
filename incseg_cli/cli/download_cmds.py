"""download: the papers' datasets and backbone weights, verified and in the layouts incseg reads."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from incseg_cli.cli.app import app
from incseg_cli.errors import InputError, UsageError


@app.command("download")
def download(
    names: Annotated[list[str], typer.Argument(metavar="NAME...", show_default=False, help="What to fetch: voc, sbd (needs voc; builds SegmentationClassAug), ade, coco, weights, or all.")],
    root: Annotated[Path, typer.Option("--root", help="Where the datasets go (VOCdevkit/VOC2012, ADEChallengeData2016, coco; archives in downloads/, InPlace-ABN weights in weights/).")] = Path("data"),
    mirror: Annotated[Optional[str], typer.Option("--mirror", metavar="URL", show_default=False, help="Fetch every file from this base URL instead (an internal mirror holding the same file names); also $INCSEG_MIRROR.")] = None,
    workers: Annotated[int, typer.Option("--workers", min=1, help="Processes converting masks (SBD, COCO-Stuff).")] = 2,
    keep_archives: Annotated[bool, typer.Option("--keep-archives/--delete-archives", help="Keep each dataset archive after it is extracted (a rerun then re-verifies instead of downloading again).")] = True,
    json_out: Annotated[bool, typer.Option("--json", help="Print one JSON document on stdout.")] = False,
) -> None:
    """Download the datasets and backbone weights of the papers, check every file against its
    checksum, unpack them safely and convert them to the layouts `--dataset voc|ade|coco` read.

    voc is PASCAL VOC 2012 trainval; sbd adds SBD's masks as SegmentationClassAug with the
    10,582-id train_aug.txt; ade is ADEChallengeData2016; coco is COCO 2017 with COCO-Stuff's
    pixel maps converted to thing ids; weights are torchvision's ResNet-101 (into torch's
    checkpoint cache) and InPlace-ABN's (into ROOT/weights). A file with a published checksum
    (VOC, SBD, ADE, COCO images, torchvision) is checked against it; the others against the
    SHA-256 recorded at their first download into ROOT (incseg-downloads.json). A mismatch is
    exit 5 and the file is removed. An interrupted download resumes (HTTP Range) when rerun;
    a rerun skips what is complete. Ends with check-data on each dataset. docs/gpu-box.md.

    **Examples**

    ```
    incseg download voc sbd weights --root data
    incseg download ade --root /scratch/data --mirror http://mirror.internal/datasets
    ```
    """
    from incseg_cli.stages.download import download as run_download

    if not names:
        raise UsageError("name what to download: voc, sbd, ade, coco, weights or all")
    report = run_download(names, root, mirror=mirror, workers=workers, keep_archives=keep_archives)
    if json_out:
        print(json.dumps(report, indent=2))
    if not report["ready"]:
        bad = [n for n, s in report["sources"].items() if s.get("check_data", {}).get("usable") is False]
        raise InputError(f"{', '.join(bad)}: downloaded but check-data finds the result unusable (see above)")
