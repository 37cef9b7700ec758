"""download: the papers' datasets and backbone weights, verified and in the layouts incseg reads."""

from __future__ import annotations

import json

from incseg_cli.cli.app import app
from incseg_cli.cli.declared import Parsed, declared_command
from incseg_cli.cli.options import json_option
from incseg_cli.errors import InputError
from incseg_cli.stages.download import DownloadOptions, download_sources


@declared_command(app, "download", [(None, DownloadOptions)], extra=[json_option("one JSON document")],
                  recipe=False)
def download_cmd(parsed: Parsed) -> None:
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
    report = download_sources(parsed.build(DownloadOptions))
    if parsed.extra["json_out"]:
        print(json.dumps(report, indent=2))
    if not report["ready"]:
        bad = [n for n, s in report["sources"].items() if s.get("check_data", {}).get("usable") is False]
        raise InputError(f"{', '.join(bad)}: downloaded but check-data finds the result unusable (see above)")
