"""Checkpoint files: model weights plus a plain-data header, loadable with weights_only=True.

``checkpoint.pt`` = {"header": {...}, "model": state_dict, "extra": {name: state_dict}}.
The header says what the weights are (dataset, task, classes of every step, step, method,
model spec, parent checkpoint hash) so that every later stage can refuse a wrong input
before any heavy work.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from incseg_cli import __version__
from incseg_cli.errors import CorruptFileError, IncompatibleError, IncsegError, InputError
from incseg_cli.fileio import torch_save
from incseg_cli.models.backbones import BACKBONES
from incseg_cli.models.deeplab import IncrementalDeepLab, ModelSpec, build_model
from incseg_cli.tasks import Task, class_ranges, get_task

FORMAT = "incseg-checkpoint"
VERSION = 1


@dataclass
class Checkpoint:
    path: Path
    header: dict[str, Any]
    model: dict[str, torch.Tensor]
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def step(self) -> int:
        return int(self.header["step"])

    @property
    def spec(self) -> ModelSpec:
        return ModelSpec.from_dict(self.header["model"])

    @property
    def task(self) -> Task:
        return get_task(self.header["dataset"], self.header["task"])

    def describe(self) -> str:
        h = self.header
        return f"{h['dataset']}/{h['task']} step {h['step']} ({h['method']})"


def make_header(task: Task, step: int, method: str, spec: ModelSpec, parent_sha256: str | None,
                **extra: Any) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "version": VERSION,
        "incseg_version": __version__,
        "dataset": task.dataset,
        "task": task.key,
        "steps": [list(s) for s in task.steps[: step + 1]],
        "step": step,
        "method": method,
        "backbone": spec.backbone,
        "output_stride": spec.output_stride,
        "model": spec.to_dict(),
        "parent_sha256": parent_sha256,
        **extra,
    }


def save_checkpoint(path: str | Path, header: dict[str, Any], model: torch.nn.Module,
                    extra: dict[str, Any] | None = None) -> None:
    state = {k: v.detach().cpu() for k, v in unwrap(model).state_dict().items()}
    torch_save({"header": header, "model": state, "extra": extra or {}}, path)


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The module inside DistributedDataParallel / torch.compile wrappers."""
    while True:
        if hasattr(model, "module"):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


def load_file(path: str | Path, what: str = "checkpoint") -> Any:
    """``torch.load`` with weights_only=True, turning every failure into one clear line."""
    path = Path(path)
    if path.is_dir():
        path = path / "checkpoint.pt"
    if not path.is_file():
        raise InputError(f"{path}: {what} not found")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # zip, pickle, OS and unpickler errors all mean "cannot use it"
        text = str(err).lower()
        if "weights only" in text or "weights_only" in text or "unsupported global" in text:
            raise CorruptFileError(
                f"{path}: refuses to load, it needs unpickling of arbitrary objects "
                "(only plain-data checkpoints are accepted, a file from elsewhere could run code)"
            ) from None
        raise CorruptFileError(
            f"{path}: truncated, corrupt or not a torch file ({type(err).__name__}: {_first_line(err)})"
        ) from None


def _first_line(err: Exception) -> str:
    lines = str(err).strip().splitlines()
    return lines[0][:200] if lines else ""


def load_checkpoint(path: str | Path) -> Checkpoint:
    path = Path(path)
    if path.is_dir():
        path = path / "checkpoint.pt"
    obj = load_file(path)
    header = obj.get("header") if isinstance(obj, dict) else None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise CorruptFileError(f"{path}: not an incseg checkpoint (no {FORMAT} header)")
    if int(header.get("version", 0)) > VERSION:
        raise IncompatibleError(f"{path}: checkpoint format {header['version']} is newer than this incseg")
    if not isinstance(obj.get("model"), dict):
        raise CorruptFileError(f"{path}: checkpoint has no model weights")
    _check_header(path, header)
    return Checkpoint(path, header, obj["model"], obj.get("extra") or {})


def _check_header(path: Path, header: dict[str, Any]) -> None:
    """Every field later stages rely on is there and of the right type (a damaged or
    hand-edited header must fail here, not deep inside a stage)."""
    def bad(what: str) -> CorruptFileError:
        return CorruptFileError(f"{path}: damaged checkpoint header ({what})")

    for key, kind in (("dataset", str), ("task", str), ("step", int), ("method", str), ("steps", list),
                      ("model", dict)):
        if not isinstance(header.get(key), kind):
            raise bad(f"{key} missing or not {kind.__name__}")
    steps = header["steps"]
    if not all(isinstance(s, list) and s and all(isinstance(c, int) for c in s) for s in steps):
        raise bad("steps must be lists of class ids")
    if len(steps) != header["step"] + 1:
        raise bad(f"step {header['step']} but {len(steps)} class lists")
    try:
        spec = ModelSpec.from_dict(header["model"])
        task = get_task(header["dataset"], header["task"])
    except (KeyError, TypeError, ValueError, IncsegError) as err:
        raise bad(f"{type(err).__name__}: {err}") from None
    if spec.backbone not in BACKBONES:
        raise bad(f"unknown backbone {spec.backbone!r}")
    if spec.head_sizes != [len(s) for s in steps]:
        raise bad("head sizes do not match the class lists")
    if header["step"] >= task.num_steps:
        raise bad(f"step {header['step']} is beyond task {task.key}")


def check_task(ckpt: Checkpoint, task: Task, step: int) -> None:
    """Refuse weights whose classes are not those of ``task`` up to ``step``."""
    h = ckpt.header
    if h["dataset"] != task.dataset:
        raise IncompatibleError(f"{ckpt.path}: trained on {h['dataset']}, task {task.key} is on {task.dataset}")
    if step >= task.num_steps:
        raise IncompatibleError(
            f"{ckpt.path}: is step {h['step']}, but task {task.dataset}/{task.key} has no step {step}"
        )
    expected = [list(s) for s in task.steps[: step + 1]]
    if [list(s) for s in h["steps"]] != expected or int(h["step"]) != step:
        raise IncompatibleError(
            f"{ckpt.path}: holds {ckpt.describe()} with classes {_summary(h['steps'])}; "
            f"expected {task.dataset}/{task.key} step {step} with classes {_summary(expected)}"
        )


def _summary(steps: list[list[int]]) -> str:
    return " | ".join(class_ranges(list(s)) for s in steps)


def model_from_checkpoint(ckpt: Checkpoint) -> IncrementalDeepLab:
    model = build_model(ckpt.spec)
    try:
        model.load_state_dict(ckpt.model, strict=True)
    except RuntimeError as err:
        first = str(err).splitlines()[0] if str(err) else "state dict mismatch"
        raise CorruptFileError(f"{ckpt.path}: weights do not match the header's model ({first})") from None
    return model
