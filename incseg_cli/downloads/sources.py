"""Where each download comes from, what it must hash to, and where it ends up.

Checksums are the ones their publishers (or the libraries that have always fetched them)
give: torchvision's ``datasets/voc.py`` and ``datasets/sbd.py`` for the VOC tar and SBD tgz
(MD5), the COCO 2017 zips' MD5 as COCO's download scripts list them, the SHA-1 that GluonCV's
``scripts/datasets/ade20k.py`` checks for ADEChallengeData2016.zip, and torch hub's rule for
torchvision's weights (the file name carries the first 8 hex digits of its SHA-256). COCO-Stuff's
``stuffthingmaps_trainval2017.zip`` and InPlace-ABN's ``resnet101_iabn_sync.pth.tar`` have no
published checksum: the SHA-256 of their first download is recorded in the root
(``incseg-downloads.json``), and every later copy into that root is checked against it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from incseg_cli.errors import UsageError

MIRROR_ENV = "INCSEG_MIRROR"


@dataclass(frozen=True)
class Archive:
    """One file to fetch. ``checksum`` is ``"md5:<hex>"``, ``"sha1:<hex>"``, ``"sha256:<hex>"``
    or ``"sha256-prefix:<hex>"`` (torch hub's rule); None: none published (trust on first use).
    ``size`` is its size in bytes, rounded up, and ``unpacked`` what its extraction adds (0: not
    extracted): estimates for the disk check where the server gives no Content-Length."""

    filename: str
    url: str
    checksum: str | None
    size: int
    unpacked: int = 0
    members: tuple[str, ...] = ()  # extract only entries under these prefixes (all when empty)

    def url_from(self, mirror: str | None) -> str:
        """The URL to fetch: the publisher's, or the file of the same name on ``mirror``."""
        return f"{mirror.rstrip('/')}/{self.filename}" if mirror else self.url


@dataclass(frozen=True)
class Source:
    """A name ``incseg download`` accepts: its files and what is built from them."""

    name: str
    description: str
    archives: tuple[Archive, ...]
    needs: tuple[str, ...] = ()  # sources that must be in the root first
    dataset: str | None = None  # the dataset check-data checks at the end
    dataset_dir: str | None = None  # that dataset's root under --root
    notes: tuple[str, ...] = field(default=())


MB = 1_000_000

VOC = Source(
    name="voc",
    description="PASCAL VOC 2012 trainval (images, SegmentationClass, lists)",
    archives=(Archive("VOCtrainval_11-May-2012.tar",
                      "http://host.robots.ox.ac.uk/pascal/VOC/voc2012/VOCtrainval_11-May-2012.tar",
                      "md5:6cd6e144f989b92b3379bac3b3de84fd", size=2_000 * MB, unpacked=2_000 * MB),),
    dataset="voc",
    dataset_dir="VOCdevkit/VOC2012",
)
SBD = Source(
    name="sbd",
    description="SBD (Hariharan et al. 2011), converted to VOC's SegmentationClassAug and train_aug.txt",
    archives=(Archive("benchmark.tgz",
                      "https://www2.eecs.berkeley.edu/Research/Projects/CS/vision/grouping/semantic_contours/benchmark.tgz",
                      "md5:82b4d87ceb2ed10f6038a1cba92111cb", size=1_420 * MB, unpacked=200 * MB,
                      # the class masks and SBD's own lists; not the 11,355 images VOC already has
                      members=("benchmark_RELEASE/dataset/cls/", "benchmark_RELEASE/dataset/train.txt",
                               "benchmark_RELEASE/dataset/val.txt")),),
    needs=("voc",),
    dataset="voc",
    dataset_dir="VOCdevkit/VOC2012",
)
ADE = Source(
    name="ade",
    description="ADE20K SceneParsing (ADEChallengeData2016)",
    archives=(Archive("ADEChallengeData2016.zip",
                      "http://data.csail.mit.edu/places/ADEchallenge/ADEChallengeData2016.zip",
                      "sha1:219e1696abb36c8ba3a3afe7fb2f4b4606a897c7", size=925 * MB, unpacked=1_000 * MB),),
    dataset="ade",
    dataset_dir="ADEChallengeData2016",
)
COCO = Source(
    name="coco",
    description="COCO 2017 images with COCO-Stuff's pixel maps, converted to thing ids (0 = background)",
    archives=(
        Archive("train2017.zip", "http://images.cocodataset.org/zips/train2017.zip",
                "md5:cced6f7f71b7629ddf16f17bbcfab6b2", size=19_340 * MB, unpacked=19_400 * MB),
        Archive("val2017.zip", "http://images.cocodataset.org/zips/val2017.zip",
                "md5:442b8da7639aecaf257c1dceb8ba8c80", size=816 * MB, unpacked=820 * MB),
        Archive("stuffthingmaps_trainval2017.zip",
                "http://calvin.inf.ed.ac.uk/wp-content/uploads/data/cocostuffdataset/stuffthingmaps_trainval2017.zip",
                None, size=660 * MB, unpacked=1_200 * MB),
    ),
    dataset="coco",
    dataset_dir="coco",
)
WEIGHTS = Source(
    name="weights",
    description="ImageNet ResNet-101 backbones: torchvision's (ALIFE) and InPlace-ABN's (WILSON, MiB, PLOP)",
    archives=(
        Archive("resnet101-63fe2227.pth", "https://download.pytorch.org/models/resnet101-63fe2227.pth",
                "sha256-prefix:63fe2227", size=179 * MB),
        Archive("resnet101_iabn_sync.pth.tar",
                "https://github.com/arthurdouillard/CVPR2021_PLOP/releases/download/v1.0/resnet101_iabn_sync.pth.tar",
                None, size=179 * MB),
    ),
)

SOURCES: dict[str, Source] = {s.name: s for s in (VOC, SBD, ADE, COCO, WEIGHTS)}
ALL = "all"


def resolve_names(names: list[str]) -> list[Source]:
    """The sources named (``all``: every one), each once, in the order their needs require."""
    wanted: list[str] = []
    for name in names:
        key = name.lower()
        if key == ALL:
            wanted.extend(SOURCES)
        elif key in SOURCES:
            wanted.append(key)
        else:
            raise UsageError(f"unknown download {name!r}; known: {', '.join(SOURCES)}, {ALL}")
    if not wanted:
        raise UsageError(f"name what to download: {', '.join(SOURCES)} or {ALL}")
    order = list(SOURCES)
    return [SOURCES[n] for n in sorted(dict.fromkeys(wanted), key=order.index)]


def mirror_from_env(mirror: str | None) -> str | None:
    return mirror or os.environ.get(MIRROR_ENV) or None
