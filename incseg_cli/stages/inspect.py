"""inspect: what a file made by incseg holds, and whether it is intact.

Feature banks (HDF5): attributes, classes with counts, and a check that every dataset is
float32 of the declared shape, finite, and intact (HDF5's per-chunk fletcher32 checksums).
Checkpoints (or run directories): the header, checked as every stage checks it, the number
of weights and whether they are finite, and the image replay memory beside it (memory.json). Rotations files: the header and the parameter
tensor. ``last.pt`` resume states: where the run stopped. Checkpoints, rotations and resume
states are checked against the checksum of their payload (``checksum``: ok, absent in a
file of an older incseg, or mismatch, which is a problem). Programs of ``incseg export``
(``.pt2``: a zip archive with ``incseg.json`` among its extra files): the metadata, and the
archive's CRC of every member, read without loading (unpickling) the program. Any other file
is named for what it is (JSON, a bare pickle, not a torch file) with exit 5.
"""

from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from incseg_cli.config import option
from incseg_cli.engine.checkpoint import FORMAT as CHECKPOINT_FORMAT
from incseg_cli.engine.checkpoint import CHECKSUM_KEY, check_header, verify
from incseg_cli.errors import CorruptFileError, InputError
from incseg_cli.bank import check_bank, looks_like_bank
from incseg_cli.replay import MEMORY_FILE, ReplayMemory
from incseg_cli.stages.rotations import FORMAT as ROTATIONS_FORMAT
from incseg_cli.torchfile import load_file


@dataclass(kw_only=True)
class InspectOptions:
    """What ``incseg inspect`` takes."""

    path: Path = option(required=True, argument=True, metavar="PATH",
                        help="A feature bank (.h5), a run directory or checkpoint.pt, a rotations file, a last.pt "
                             "or an exported program (.pt2).")


def _tensor_summary(tensors: dict[str, Any]) -> tuple[int, int, list[str]]:
    """(tensors, elements, names of non-finite floating tensors)."""
    count = elements = 0
    bad = []
    for name, value in tensors.items():
        if not torch.is_tensor(value):
            continue
        count += 1
        elements += value.numel()
        if value.is_floating_point() and not torch.isfinite(value).all():
            bad.append(name)
    return count, elements, bad


def _problem(err: CorruptFileError, path: Path) -> str:
    """The message of ``err`` without its leading ``<path>: ``."""
    text, prefix = str(err), f"{path}: "
    return text[len(prefix):] if text.startswith(prefix) else text


def _checksum(obj: dict[str, Any], path: Path, holder: str | None, what: str, problems: list[str]) -> str:
    """"ok", "absent" (an older file, noted on stderr) or "mismatch" (added to ``problems``)."""
    try:
        return "ok" if verify(obj, path, holder, what) else "absent"
    except CorruptFileError as err:
        problems.append(_problem(err, path))
        return "mismatch"


# Where torch.export.save puts a program's extra files: <archive>/extra/<name>.
PROGRAM_METADATA = "extra/incseg.json"
PROGRAM_FORMAT = "incseg-export"  # stages/export.py's FORMAT (that module loads the model code)
# What the metadata shows, in this order (the palette and the like stay in the file).
PROGRAM_FIELDS = ("format", "version", "dataset", "task", "step", "method", "model", "input", "label_ids",
                  "run_protocol", "source", "incseg_version", "torch_version")


def _program_members(path: Path) -> list[str] | None:
    """The member names of an exported program's archive; None for anything else (a
    checkpoint is a zip archive too, without the metadata)."""
    if not zipfile.is_zipfile(path):
        return None
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError, ValueError):
        return None
    if any(n.endswith("/" + PROGRAM_METADATA) or n == PROGRAM_METADATA for n in names):
        return names
    if any(n.endswith("/archive_format") for n in names) and not any(n.endswith("/data.pkl") for n in names):
        raise CorruptFileError(f"{path}: a torch.export program without incseg's metadata ({PROGRAM_METADATA}); "
                               "not a file incseg wrote")
    return None


def _inspect_program(path: Path, names: list[str]) -> dict[str, Any]:
    problems: list[str] = []
    meta: Any = None
    member = next(n for n in names if n.endswith("/" + PROGRAM_METADATA) or n == PROGRAM_METADATA)
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()  # the CRC of every member: a flipped bit or a cut member
            if bad is not None:
                problems.append(f"member {bad} of the archive fails its CRC check (damaged)")
            meta = json.loads(archive.read(member).decode("utf-8"))
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, UnicodeDecodeError, RuntimeError) as err:
        raise CorruptFileError(f"{path}: truncated or corrupt exported program ({type(err).__name__}: "
                               f"{str(err)[:120]})") from None
    if not isinstance(meta, dict) or meta.get("format") != PROGRAM_FORMAT:
        problems.append(f"{PROGRAM_METADATA} is not incseg's export metadata (format "
                        f"{meta.get('format') if isinstance(meta, dict) else type(meta).__name__!r})")
        meta = meta if isinstance(meta, dict) else {}
    if not any(n.endswith("/models/model.json") for n in names):
        problems.append("the archive holds no program (models/model.json)")
    header = {k: meta[k] for k in PROGRAM_FIELDS if k in meta}
    classes = meta.get("classes")
    if isinstance(classes, dict):
        header["classes"] = len(classes)
    return {"path": str(path), "size_bytes": path.stat().st_size, "kind": "program", "header": header,
            "members": len(names), "problems": problems}


def inspect_path(path: str | Path) -> dict[str, Any]:
    """A JSON-friendly report; ``problems`` lists whatever is wrong (empty when intact)."""
    path = Path(path)
    if path.is_dir():
        path = path / "checkpoint.pt"
    if not path.is_file():
        raise InputError(f"{path}: not found")
    if looks_like_bank(path):
        report = check_bank(path)
        return {"kind": "bank", **report, "size_bytes": path.stat().st_size}
    members = _program_members(path)
    if members is not None:
        return _inspect_program(path, members)
    obj = load_file(path, "incseg file")
    header = obj.get("header") if isinstance(obj, dict) else None
    fmt = header.get("format") if isinstance(header, dict) else None
    out: dict[str, Any] = {"path": str(path), "size_bytes": path.stat().st_size}
    if fmt == CHECKPOINT_FORMAT:
        model = obj.get("model") if isinstance(obj.get("model"), dict) else {}
        count, elements, bad = _tensor_summary(model)
        extra = obj.get("extra") if isinstance(obj.get("extra"), dict) else {}
        problems: list[str] = []
        checksum = _checksum(obj, path, "header", "checkpoint", problems)
        try:
            check_header(path, header)
        except CorruptFileError as err:
            problems.append(_problem(err, path))
        if bad:
            problems.append(f"weights {', '.join(bad[:3])} hold NaN or Inf")
        if not model:
            problems.append("no model weights")
        shown = {k: v for k, v in header.items() if k != CHECKSUM_KEY}
        out.update(kind="checkpoint", header=shown, checksum=checksum, tensors=count, parameters=elements,
                   extra=sorted(map(str, extra)), problems=problems)
        memory = path.parent / MEMORY_FILE
        if memory.is_file():  # the image replay memory the run trained with
            try:
                summary = ReplayMemory.read(memory).summary()
                out["replay"] = {k: v for k, v in summary.items() if k not in ("ids", "bytes")}
            except (CorruptFileError, InputError) as err:
                problems.append(str(err))
        return out
    if fmt == ROTATIONS_FORMAT:
        params = obj.get("params")
        problems = []
        out["checksum"] = _checksum(obj, path, "header", "rotations file", problems)
        if not torch.is_tensor(params):
            problems.append("no params tensor")
        elif not torch.isfinite(params).all():
            problems.append("params hold NaN or Inf")
        shown = {k: v for k, v in header.items() if k not in ("history", CHECKSUM_KEY)}
        out.update(kind="rotations", header=shown, params_shape=list(params.shape) if torch.is_tensor(params) else None,
                   epochs=len(header["history"]) if isinstance(header.get("history"), list) else None,
                   problems=problems)
        return out
    if isinstance(obj, dict) and {"fingerprint", "model", "optimizer", "epoch"} <= set(obj):
        problems = []
        checksum = _checksum(obj, path, None, "resume state", problems)
        model = obj["model"] if isinstance(obj["model"], dict) else {}
        count, elements, bad = _tensor_summary(model)
        if bad:
            problems.append(f"weights {', '.join(bad[:3])} hold NaN or Inf")
        position = {}
        for key in ("epoch", "batch", "iteration"):
            value = obj.get(key)
            if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
                position[key] = value
            else:
                problems.append(f"{key} is {value!r}, not a count")
        out.update(kind="resume-state", **position, fingerprint=str(obj["fingerprint"]), checksum=checksum,
                   tensors=count, parameters=elements, problems=problems)
        return out
    raise CorruptFileError(f"{path}: not a file incseg writes (no checkpoint, rotations or bank header)")
