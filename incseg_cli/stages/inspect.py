"""inspect: what a file made by incseg holds, and whether it is intact.

Feature banks (HDF5): attributes, classes with counts, and a check that every dataset is
float32 of the declared shape and finite. Checkpoints (or run directories): the header,
the number of weights and whether they are finite. Rotations files: the header and the
parameter tensor. ``last.pt`` resume states: where the run stopped.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from incseg_cli.engine.checkpoint import FORMAT as CHECKPOINT_FORMAT
from incseg_cli.engine.checkpoint import load_file
from incseg_cli.errors import CorruptFileError, InputError
from incseg_cli.memory import check_bank
from incseg_cli.stages.rotations import FORMAT as ROTATIONS_FORMAT


def _is_hdf5(path: Path) -> bool:
    import h5py

    return h5py.is_hdf5(str(path))


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


def inspect_path(path: str | Path) -> dict[str, Any]:
    """A JSON-friendly report; ``problems`` lists whatever is wrong (empty when intact)."""
    path = Path(path)
    if path.is_dir():
        path = path / "checkpoint.pt"
    if not path.is_file():
        raise InputError(f"{path}: not found")
    if _is_hdf5(path):
        report = check_bank(path)
        return {"kind": "bank", **report, "size_bytes": path.stat().st_size}
    obj = load_file(path, "incseg file")
    header = obj.get("header") if isinstance(obj, dict) else None
    fmt = header.get("format") if isinstance(header, dict) else None
    out: dict[str, Any] = {"path": str(path), "size_bytes": path.stat().st_size}
    if fmt == CHECKPOINT_FORMAT:
        model = obj.get("model") if isinstance(obj.get("model"), dict) else {}
        count, elements, bad = _tensor_summary(model)
        extra = obj.get("extra") or {}
        out.update(kind="checkpoint", header=header, tensors=count, parameters=elements, extra=sorted(extra),
                   problems=[f"weights {', '.join(bad[:3])} hold NaN or Inf"] if bad else [])
        if not model:
            out["problems"].append("no model weights")
        return out
    if fmt == ROTATIONS_FORMAT:
        params = obj.get("params")
        problems = []
        if not torch.is_tensor(params):
            problems.append("no params tensor")
        elif not torch.isfinite(params).all():
            problems.append("params hold NaN or Inf")
        shown = {k: v for k, v in header.items() if k != "history"}
        out.update(kind="rotations", header=shown, params_shape=list(params.shape) if torch.is_tensor(params) else None,
                   epochs=len(header.get("history", [])), problems=problems)
        return out
    if isinstance(obj, dict) and {"fingerprint", "model", "optimizer", "epoch"} <= set(obj):
        count, elements, bad = _tensor_summary(obj["model"])
        out.update(kind="resume-state", epoch=int(obj["epoch"]), batch=int(obj["batch"]),
                   iteration=int(obj["iteration"]), fingerprint=obj["fingerprint"], tensors=count,
                   parameters=elements, problems=[f"weights {', '.join(bad[:3])} hold NaN or Inf"] if bad else [])
        return out
    raise CorruptFileError(f"{path}: not a file incseg writes (no checkpoint, rotations or bank header)")
