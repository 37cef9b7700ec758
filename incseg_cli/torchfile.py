"""Reading a file written by ``torch.save`` without trusting it.

``load_file`` is the one loader of every torch file incseg reads (checkpoints, ``last.pt``,
rotations, backbone weights): it says what a file is before torch unpickles anything,
checks the CRC-32 of the records torch does not, loads with ``weights_only=True`` and turns
every failure into one line. Below ``engine.checkpoint`` and ``models``, which both use it.
"""

from __future__ import annotations

import warnings
import zipfile
from pathlib import Path
from typing import Any

import torch

from incseg_cli.errors import CorruptFileError, InputError


# What a file starts with says what it is, before torch is asked to unpickle anything.
ZIP_MAGIC = b"PK\x03\x04"  # torch.save's format since 1.6
LEGACY_MAGIC = b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19"  # older torch.save
HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"


def _not_torch(path: Path, head: bytes) -> str | None:
    """Why the file that starts with ``head`` is not a torch file, or None if it may be one."""
    if head.startswith(ZIP_MAGIC) or head.startswith(LEGACY_MAGIC):
        return None
    if not head:
        return "empty file, not a torch file"
    if head.startswith(b"PK"):
        return "a zip archive that torch.save did not write (truncated or corrupt), not a torch file"
    if head.startswith(HDF5_MAGIC) or head.startswith(b"incseg-feature"):
        return "an HDF5 file (a feature bank? `incseg inspect` shows it), not a torch file"
    if head.lstrip()[:1] in (b"{", b"["):
        import json

        try:
            json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            pass
        else:
            return "a JSON document (manifest.json or metrics.json are plain JSON; read them with any JSON tool), not a torch file"
    if head.startswith(b"\x80"):
        return ("a bare Python pickle, not a torch file: incseg reads only files written by torch.save "
                "(unpickling it could run code)")
    return "not a torch file (neither torch.save's zip format nor its legacy format)"


def load_file(path: str | Path, what: str = "checkpoint") -> Any:
    """``torch.load`` with weights_only=True, turning every failure into one clear line."""
    path = Path(path)
    if path.is_dir():
        path = path / "checkpoint.pt"
    if not path.is_file():
        raise InputError(f"{path}: {what} not found")
    try:
        with open(path, "rb") as fh:
            head = fh.read(len(LEGACY_MAGIC))
    except OSError as err:
        raise InputError(f"{path}: cannot read ({type(err).__name__}: {_first_line(err)})") from None
    reason = _not_torch(path, head)
    if reason is not None:
        raise CorruptFileError(f"{path}: {reason}")
    if head.startswith(ZIP_MAGIC):
        _check_records(path)
    try:
        # torch warns (e.g. about pickle protocols) before it fails: the error line says it all.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # zip, pickle, OS and unpickler errors all mean "cannot use it"
        text = str(err).lower()
        if "unsupported global" in text or "was not an allowed global" in text:
            raise CorruptFileError(
                f"{path}: refuses to load, it needs unpickling of arbitrary objects "
                "(only plain-data checkpoints are accepted, a file from elsewhere could run code)"
            ) from None
        raise CorruptFileError(
            f"{path}: truncated, corrupt or not a torch file ({type(err).__name__}: {_detail(err)})"
        ) from None


def _check_records(path: Path) -> None:
    """The CRC-32 of every record of a torch zip file but the tensors' bytes (which the
    payload checksum covers, and which may be gigabytes): the pickle that holds the header
    and the structure, the byte order, the versions. torch itself checks none."""
    errors = (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, ValueError, NotImplementedError,
              RuntimeError)
    try:
        archive = zipfile.ZipFile(path)
    except errors:
        return  # no readable directory of records (truncated...): torch.load says what is wrong
    with archive:
        for info in archive.infolist():
            if "/data/" in info.filename:
                continue
            try:
                with archive.open(info) as record:
                    while record.read(1 << 20):
                        pass
            except errors as err:
                text = str(err).replace(f"{path}", "").strip() or type(err).__name__
                raise CorruptFileError(f"{path}: damaged torch file, its record {info.filename} failed its check "
                                       f"({text[:160]}); use an intact copy or rerun the stage that wrote it") from None


def _detail(err: Exception) -> str:
    """The informative line of torch's error: for the weights-only unpickler that is the
    ``WeightsUnpickler error`` line, not its advice to load with weights_only=False."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    for i, line in enumerate(lines):
        if line.startswith("WeightsUnpickler error"):
            rest = line.split(":", 1)[1].strip() or (lines[i + 1] if i + 1 < len(lines) else "")
            return rest[:200]
    return _first_line(err)


def _first_line(err: Exception) -> str:
    lines = str(err).strip().splitlines()
    return lines[0][:200] if lines else ""
