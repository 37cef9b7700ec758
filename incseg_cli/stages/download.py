"""``incseg download``: datasets and backbone weights into a root, verified, unpacked, converted.

Under ``--root DIR``: the archives in ``DIR/downloads/``, VOC 2012 with SBD's
SegmentationClassAug in ``DIR/VOCdevkit/VOC2012``, ADE20K in ``DIR/ADEChallengeData2016``, COCO
in ``DIR/coco``, InPlace-ABN's weights in ``DIR/weights`` (where ``--backbone-weights iabn``
looks, from the directory above ``DIR``), torchvision's in torch's checkpoint cache (where
``--backbone-weights imagenet`` looks). ``DIR/incseg-downloads.json`` records each file's
SHA-256 (checked again on every later download into the root, the only check a file without
a published checksum gets) and what has been extracted and built, so a rerun skips what is
complete and resumes what is not. Each dataset ends with ``check-data`` on its result.
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from incseg_cli.config import option, validate
from incseg_cli.console import log, warn
from incseg_cli.data.check import check_data, failure_message
from incseg_cli.downloads import archives, transfer
from incseg_cli.downloads.cocostuff import build_annotations
from incseg_cli.downloads.sbd import SBD_DIR, build_train_aug
from incseg_cli.downloads.sources import SOURCES, Archive, Source, mirror_from_env, resolve_names
from incseg_cli.engine.lock import OutputLock
from incseg_cli.errors import InputError, OutputError, UsageError
from incseg_cli.fileio import output_errors, read_json_object, write_json
from incseg_cli.presets import pool_workers_option, workers_or_default

RECORD = "incseg-downloads.json"
ARCHIVE_DIR = "downloads"
IABN_DIR = "weights"
IABN_WEIGHTS_ENV = "INCSEG_WEIGHTS"  # models/iabn.py WEIGHTS_DIR_ENV (which imports torch)
STUFF_MAPS_DIR = "stuffthingmaps_trainval2017"
# Kept free beyond what the downloads and their extraction need (logs, temporary copies).
DISK_MARGIN = 1.10
GB = 1e9


def _hub_checkpoints() -> Path:
    """torch's checkpoint cache, where torchvision's ``get_state_dict`` reads its weights."""
    home = os.environ.get("TORCH_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "torch")
    return Path(home).expanduser() / "hub" / "checkpoints"


def archive_path(root: Path, source: Source, archive: Archive) -> Path:
    if source.name == "weights":
        return (_hub_checkpoints() if archive.filename.startswith("resnet101-") else root / IABN_DIR) / archive.filename
    return root / ARCHIVE_DIR / archive.filename


class Record:
    """``incseg-downloads.json`` of a root: files (SHA-256, size, where from) and sources done."""

    def __init__(self, root: Path) -> None:
        self.path = root / RECORD
        data = read_json_object(self.path, "download record") if self.path.is_file() else {}
        self.files: dict[str, dict[str, Any]] = dict(data.get("files", {}))
        self.done: dict[str, dict[str, Any]] = dict(data.get("done", {}))

    def save(self) -> None:
        write_json(self.path, {"files": self.files, "done": self.done})

    def sha256(self, filename: str) -> str | None:
        return self.files.get(filename, {}).get("sha256")

    def verified(self, path: Path) -> bool:
        """``path`` is the file recorded and unchanged since (size and mtime): no rehash."""
        entry = self.files.get(path.name)
        if entry is None or not path.is_file():
            return False
        st = path.stat()
        return entry.get("size") == st.st_size and entry.get("mtime_ns") == st.st_mtime_ns

    def note_file(self, path: Path, url: str, archive: Archive, digest: transfer.Digest) -> None:
        st = path.stat()
        first = self.files.get(path.name, {}).get("first_downloaded", time.strftime("%Y-%m-%dT%H:%M:%S"))
        self.files[path.name] = {"sha256": digest.sha256, "size": st.st_size, "mtime_ns": st.st_mtime_ns,
                                 "published": archive.checksum, "url": url, "first_downloaded": first}
        self.save()


def _content_length(url: str) -> int | None:
    """The size the server announces (HEAD), or None when it says nothing."""
    import requests

    try:
        with requests.head(url, allow_redirects=True, timeout=30) as response:
            if response.status_code < 400 and response.headers.get("Content-Length"):
                return int(response.headers["Content-Length"])
    except (requests.exceptions.RequestException, ValueError):
        pass
    return None


def _check_disk(root: Path, needs: list[tuple[Path, int]]) -> None:
    """Refuse before downloading when a disk lacks room for what is still to come."""
    by_disk: dict[int, tuple[Path, int]] = {}
    for where, size in needs:
        probe = where
        while not probe.exists() and probe.parent != probe:
            probe = probe.parent
        dev = probe.stat().st_dev
        by_disk[dev] = (probe, by_disk.get(dev, (probe, 0))[1] + size)
    for probe, size in by_disk.values():
        free = shutil.disk_usage(probe).free
        if size * DISK_MARGIN > free:
            raise OutputError(f"{probe}: {free / GB:.1f} GB free, the downloads and their extraction need about "
                              f"{size * DISK_MARGIN / GB:.1f} GB; free some space or choose another --root")


def _plan(root: Path, sources: list[Source], record: Record, mirror: str | None) -> list[tuple[Path, int]]:
    """(where, bytes) still to be written: the rest of each archive, and its extraction."""
    needs = []
    for source in sources:
        if _complete(root, source, record):
            continue
        for archive in source.archives:
            dest = archive_path(root, source, archive)
            size = archive.size
            if not dest.is_file():
                announced = _content_length(archive.url_from(mirror))
                size = announced if announced is not None else archive.size
                part = dest.with_name(dest.name + transfer.PART_SUFFIX)
                have = part.stat().st_size if part.is_file() else 0
                needs.append((dest.parent, max(size - have, 0)))
            if archive.unpacked:
                needs.append((root, int(archive.unpacked * size / archive.size)))
    return needs


def _complete(root: Path, source: Source, record: Record) -> bool:
    done = record.done.get(source.name)
    if done is None:
        return False
    if any(done.get("archives", {}).get(a.filename) != record.sha256(a.filename) for a in source.archives):
        return False
    if source.dataset_dir is not None:
        return (root / source.dataset_dir).is_dir()
    return all(archive_path(root, source, a).is_file() for a in source.archives)


def _fetch(root: Path, source: Source, archive: Archive, record: Record, mirror: str | None) -> Path:
    dest = archive_path(root, source, archive)
    url = archive.url_from(mirror)
    if dest.is_file():
        if record.verified(dest):
            log(f"{dest}: present and verified")
            return dest
        digest = transfer.file_digest(dest, archive.checksum)
        why = transfer.mismatch(digest, archive.checksum, record.sha256(archive.filename))
        if why is None:
            record.note_file(dest, record.files.get(dest.name, {}).get("url", url), archive, digest)
            log(f"{dest}: present, checksum verified")
            return dest
        warn(f"{dest}: not the expected file ({why}); downloading it again")
        with output_errors(dest):
            dest.unlink()
    log(f"downloading {url} -> {dest}" + ("" if archive.checksum else
                                           " (no published checksum: its SHA-256 is recorded on first download)"))
    digest = transfer.download(url, dest, archive.checksum, record.sha256(archive.filename), archive.size)
    record.note_file(dest, url, archive, digest)
    return dest


def _build(root: Path, source: Source, paths: dict[str, Path], workers: int) -> None:
    """What the dataset readers need from the source's archives."""
    if source.name in ("voc", "ade"):
        for archive in source.archives:
            archives.extract(paths[archive.filename], root, archive.members)
    elif source.name == "sbd":
        (archive,) = source.archives
        archives.extract(paths[archive.filename], root, archive.members)
        build_train_aug(root / "VOCdevkit" / "VOC2012", root / SBD_DIR, workers)
        shutil.rmtree(root / SBD_DIR.parent, ignore_errors=True)  # the .mat files, now PNGs
    elif source.name == "coco":
        coco = root / "coco"
        for name in ("train2017.zip", "val2017.zip"):
            archives.extract(paths[name], coco / "images")
        maps = coco / STUFF_MAPS_DIR
        archives.extract(paths["stuffthingmaps_trainval2017.zip"], maps)
        build_annotations(maps, coco, workers)
        shutil.rmtree(maps, ignore_errors=True)


def _weights_hint(root: Path) -> None:
    """``--backbone-weights iabn`` looks in $INCSEG_WEIGHTS and ./data/weights (models/iabn.py):
    say how to make it see ROOT/weights when it would not."""
    folder = (root / IABN_DIR).resolve()
    seen = [Path(p).resolve() for p in (os.environ.get(IABN_WEIGHTS_ENV), Path("data") / IABN_DIR) if p]
    if folder not in seen:
        log(f"--backbone-weights iabn looks in ${IABN_WEIGHTS_ENV} and ./data/{IABN_DIR}: "
            f"export {IABN_WEIGHTS_ENV}={folder} (or pass --backbone-weights {folder / 'resnet101_iabn_sync.pth.tar'})")


def _check(root: Path, source: Source, workers: int) -> dict[str, Any] | None:
    if source.dataset is None:
        return None

    report = check_data(root / source.dataset_dir, source.dataset, workers=workers)
    if report["usable"]:
        counts = ", ".join(f"{split} {s['ids']:,} images" for split, s in report["splits"].items() if s.get("ids"))
        log(f"check-data: usable {source.dataset} root {report['root']} ({counts})")
    else:
        warn(f"check-data: {failure_message(report)}")
    for warning in report["warnings"]:
        warn(f"check-data: {warning}")
    return report


def check_root(root: Path) -> None:
    if root.exists() and not root.is_dir():
        raise UsageError(f"--root {root}: not a directory")


@dataclass(kw_only=True)
class DownloadOptions:
    """What ``incseg download`` takes."""

    names: list[str] = option(required=True, argument=True, metavar="NAME...",
                              help="What to fetch: voc, sbd (needs voc; builds SegmentationClassAug), ade, coco, "
                                   "weights, or all.")
    root: Path = option(Path("data"), help="Where the datasets go (VOCdevkit/VOC2012, ADEChallengeData2016, coco; "
                                           "archives in downloads/, InPlace-ABN weights in weights/).")
    mirror: Optional[str] = option(metavar="URL", help="Fetch every file from this base URL instead (an internal "
                                                       "mirror holding the same file names); also $INCSEG_MIRROR.")
    workers: Optional[int] = pool_workers_option("convert masks (SBD, COCO-Stuff)")
    keep_archives: bool = option(True, flag="--keep-archives/--delete-archives",
                                 help="Keep each dataset archive after it is extracted (a rerun then re-verifies "
                                      "instead of downloading again).")


def download_sources(options: DownloadOptions) -> dict[str, Any]:
    """``incseg download``: ``download`` with the command's options."""
    o = validate(options)
    if not o.names:
        raise UsageError("name what to download: voc, sbd, ade, coco, weights or all")
    return download(o.names, o.root, mirror=o.mirror, workers=workers_or_default(o.workers),
                    keep_archives=o.keep_archives)


def download(names: list[str], root: Path, mirror: str | None = None, workers: int = 2,
             keep_archives: bool = True) -> dict[str, Any]:
    """Fetch, verify, unpack and convert the named sources into ``root``; check-data on each
    dataset. Returns a report: per source its files, whether it was skipped, check-data's result."""
    sources = resolve_names(names)
    check_root(root)
    mirror = mirror_from_env(mirror)
    if mirror is not None and not mirror.startswith(("http://", "https://", "file://")):
        raise UsageError(f"--mirror {mirror}: expected an http://, https:// or file:// URL")
    with output_errors(root):
        root.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {"root": str(root), "mirror": mirror, "sources": {}, "ready": True}
    with OutputLock(root / RECORD).acquire(clean=False):
        record = Record(root)
        for source in sources:
            requested = {s.name for s in sources}  # resolve_names puts a need before its user
            missing = [n for n in source.needs if n not in requested and not _complete(root, SOURCES[n], record)]
            if missing:
                raise InputError(f"{source.name} needs {' and '.join(missing)} in {root} first: "
                                 f"incseg download {' '.join(missing)} {source.name} --root {root}")
        _check_disk(root, _plan(root, sources, record, mirror))
        for source in sources:
            entry: dict[str, Any] = {"description": source.description}
            if _complete(root, source, record):
                log(f"{source.name}: already complete in {root}, skipping")
                entry["skipped"] = True
            else:
                paths = {a.filename: _fetch(root, source, a, record, mirror) for a in source.archives}
                _build(root, source, paths, workers)
                record.done[source.name] = {"archives": {a.filename: record.sha256(a.filename) for a in source.archives},
                                            "at": time.strftime("%Y-%m-%dT%H:%M:%S")}
                record.save()
                if not keep_archives and source.dataset_dir is not None:
                    for path in paths.values():
                        path.unlink(missing_ok=True)
                entry["skipped"] = False
            entry["files"] = {a.filename: {"path": str(archive_path(root, source, a)),
                                           "sha256": record.sha256(a.filename), "published": a.checksum}
                              for a in source.archives}
            if source.name == "weights":
                _weights_hint(root)
            checked = _check(root, source, workers)
            if checked is not None:
                entry["check_data"] = {"usable": checked["usable"], "errors": checked["errors"],
                                       "warnings": checked["warnings"], "root": checked["root"]}
                report["ready"] &= checked["usable"]
            report["sources"][source.name] = entry
    return report
