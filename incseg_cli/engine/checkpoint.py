"""Checkpoint files: model weights plus a plain-data header, loadable with weights_only=True.

``checkpoint.pt`` = {"header": {...}, "model": state_dict, "extra": {name: state_dict}}.
The header says what the weights are (dataset, task, classes of every step, step, method,
model spec, parent checkpoint hash) so that every later stage can refuse a wrong input
before any heavy work.

Checksums. torch's zip reader does not check its records' CRCs, so a flipped bit in the
weights loads silently. ``seal`` records ``payload_sha256`` (``CHECKSUM_KEY``) in a file's
header: the sha256 of a canonical walk over *everything* the file holds except that field
(every tensor's dtype, shape and bytes, every key in sorted order, every plain value), so a
change anywhere in the payload is caught by ``verify`` on load. ``checkpoint.pt`` keeps it
in ``header``; ``last.pt`` at its top level, covering the whole resume state (model,
``extra``, optimizer, scheduler, RNG states, history).

The checksum cannot be switched off by the damage it detects. Every sealed file records a
format version (``version``, beside the checksum) of at least ``SEALED_SINCE``; a file
without a checksum loads (with a one-line note) only when that version says it was written
before checksums existed, never when the version is missing its checksum, unreadable, or when
a field is a damaged copy of the checksum's own name. And torch does not check its zip
records' CRC-32 either: ``load_file`` checks those of every record but the tensors' bytes
(the pickle holding the header, the byte order...), so a flipped byte anywhere in a header
is a corrupt file, whatever it turned into.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch

from incseg_cli import datasets
from incseg_cli.version import __version__
from incseg_cli.console import warn
from incseg_cli.errors import CorruptFileError, IncompatibleError, IncsegError
from incseg_cli.fileio import torch_save
from incseg_cli.models.backbones import BACKBONES
from incseg_cli.models.deeplab import IncrementalDeepLab, ModelSpec, SpecError, build_model
from incseg_cli.models.util import unwrap
from incseg_cli.engine.kinds import CHECKPOINT_FORMAT
from incseg_cli.torchfile import load_file
from incseg_cli.tasks import Task, class_ranges, get_task

FORMAT = CHECKPOINT_FORMAT
VERSION = 2  # 2: always sealed (a checksum in the header)


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
        datasets.for_header(self.header)  # a dataset of one's own is described in the header
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
        **datasets.header_entry(task.dataset),  # a custom dataset's description (and tasks)
        **task.order_entry(),  # a named class order's sequence
        **extra,
    }


def save_checkpoint(path: str | Path, header: dict[str, Any], model: torch.nn.Module,
                    extra: dict[str, Any] | None = None) -> None:
    state = {k: v.detach().cpu() for k, v in unwrap(model).state_dict().items()}
    torch_save(seal({"header": dict(header), "model": state, "extra": extra or {}}, "header"), path)


# -- checksums ------------------------------------------------------------------------------
CHECKSUM_KEY = "payload_sha256"
# The format version from which checkpoints, rotations files and last.pt always carry a
# checksum (their formats' version 1 had none, or had one that a damaged header could hide).
SEALED_SINCE = 2
_HEX64 = re.compile(r"[0-9a-f]{64}")


def _feed(digest: Any, value: Any) -> None:
    """Update ``digest`` with a canonical, type-tagged encoding of ``value``. Lists and
    tuples hash alike (weights_only loading turns tuples into lists), dict keys are sorted."""
    if torch.is_tensor(value):
        t = value.detach().cpu().contiguous()
        digest.update(f"T{t.dtype}{tuple(t.shape)};".encode())
        if t.numel():
            digest.update(memoryview(t.reshape(-1).view(torch.uint8).numpy()))
    elif isinstance(value, Mapping):
        digest.update(f"D{len(value)};".encode())
        for key, item in sorted(value.items(), key=lambda kv: (type(kv[0]).__name__, repr(kv[0]))):
            _feed(digest, key)
            _feed(digest, item)
    elif isinstance(value, (list, tuple)):
        digest.update(f"L{len(value)};".encode())
        for item in value:
            _feed(digest, item)
    elif isinstance(value, str):
        data = value.encode("utf-8", "surrogatepass")
        digest.update(f"S{len(data)};".encode() + data)
    elif isinstance(value, bytes):
        digest.update(f"B{len(value)};".encode() + value)
    elif isinstance(value, bool) or value is None:
        digest.update(f"C{value};".encode())
    elif isinstance(value, int):
        digest.update(f"I{value};".encode())
    elif isinstance(value, float):
        digest.update(f"F{value.hex()};".encode())
    else:  # not plain data: weights_only loading would refuse the file anyway
        digest.update(f"R{type(value).__qualname__}:{value!r};".encode())


def payload_sha256(obj: Any) -> str:
    """The sha256 of ``obj``'s canonical encoding (see ``_feed``)."""
    digest = hashlib.sha256()
    _feed(digest, obj)
    return digest.hexdigest()


def seal(obj: dict[str, Any], holder: str | None = None) -> dict[str, Any]:
    """Record the checksum of ``obj`` in ``obj[holder]`` (a header dict) or, with no
    ``holder``, at ``obj``'s top level, beside a format ``version`` (``SEALED_SINCE`` when
    the content names none): a file that says it is sealed can never pass for an unsealed
    one. Returns ``obj``."""
    target = obj[holder] if holder else obj
    target.pop(CHECKSUM_KEY, None)
    target.setdefault("version", SEALED_SINCE)
    target[CHECKSUM_KEY] = payload_sha256(obj)
    return obj


def verify(obj: dict[str, Any], path: Path, holder: str | None = None, what: str = "checkpoint",
           advice: str = "use an intact copy or rerun the stage that wrote it") -> bool:
    """Check the checksum ``seal`` recorded; returns False (after a one-line note) for a
    file written before checksums existed, raises CorruptFileError (ending with ``advice``)
    when the content changed."""
    target = obj.get(holder) if holder else obj
    if not isinstance(target, dict):
        return False  # not this kind of file at all: the caller's format check says so
    if CHECKSUM_KEY not in target:
        _check_unsealed(target, path, what)
        warn(f"{path}: {what} written without a checksum (by an older incseg); its content cannot be verified")
        return False
    stored = target.pop(CHECKSUM_KEY)
    try:
        actual = payload_sha256(obj)
    finally:
        target[CHECKSUM_KEY] = stored
    if stored != actual:
        raise CorruptFileError(
            f"{path}: checksum mismatch, the {what} changed after it was written (damaged on disk or in a copy, "
            f"or edited); {advice}"
        )
    return True


def _check_unsealed(target: dict[str, Any], path: Path, what: str) -> None:
    """A header without a checksum is accepted only as one of a format from before
    checksums: its version (absent in the oldest ``last.pt``) must say so, and no field may
    be the checksum field with its name damaged (one flipped bit in a file sealed by a
    version-1 format)."""
    version = target.get("version")
    damaged = f"{path}: damaged {what} header"
    if version is not None and (not isinstance(version, int) or isinstance(version, bool)):
        raise CorruptFileError(f"{damaged} (version {version!r}) and no checksum to check it by")
    if version is not None and version >= SEALED_SINCE:
        raise CorruptFileError(f"{damaged}: format {version} always carries a checksum ({CHECKSUM_KEY}) and it is "
                               "missing; use an intact copy or rerun the stage that wrote it")
    for key, value in target.items():
        if (isinstance(key, str) and key != CHECKSUM_KEY and len(key) == len(CHECKSUM_KEY)
                and sum(a != b for a, b in zip(key, CHECKSUM_KEY)) <= 2
                and isinstance(value, str) and _HEX64.fullmatch(value)):
            raise CorruptFileError(f"{damaged}: a field {key!r} holds a checksum where {CHECKSUM_KEY!r} should be "
                                   "(the header changed after it was written); use an intact copy or rerun the stage "
                                   "that wrote it")


def save_sealed(obj: dict[str, Any], path: str | Path, holder: str | None = None) -> None:
    """``torch_save`` (atomic) of ``obj`` with its checksum recorded (see ``seal``)."""
    torch_save(seal(obj, holder), path)


def load_sealed(path: str | Path, what: str, holder: str | None = None, advice: str | None = None) -> dict[str, Any]:
    """``load_file`` of a dict written by ``save_sealed``, its checksum verified."""
    path = Path(path)
    obj = load_file(path, what)
    if not isinstance(obj, dict):
        raise CorruptFileError(f"{path}: not an incseg {what} (holds a {type(obj).__name__}, not a dict)")
    verify(obj, path, holder, what, *([advice] if advice else []))
    _strip_checksum(obj, holder)
    return obj


def _strip_checksum(obj: dict[str, Any], holder: str | None) -> None:
    """The checksum describes the file, not its content: callers see the content alone."""
    target = obj.get(holder) if holder else obj
    if isinstance(target, dict):
        target.pop(CHECKSUM_KEY, None)


def load_checkpoint(path: str | Path) -> Checkpoint:
    path = Path(path)
    if path.is_dir():
        path = path / "checkpoint.pt"
    obj = load_file(path)
    header = obj.get("header") if isinstance(obj, dict) else None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise CorruptFileError(f"{path}: not an incseg checkpoint (no {FORMAT} header)")
    verify(obj, path, "header")
    _strip_checksum(obj, "header")
    version = header.get("version", 0)
    if not isinstance(version, int) or isinstance(version, bool):
        raise CorruptFileError(f"{path}: damaged checkpoint header (version {version!r})")
    if version > VERSION:
        raise IncompatibleError(f"{path}: checkpoint format {header['version']} is newer than this incseg")
    if not isinstance(obj.get("model"), dict):
        raise CorruptFileError(f"{path}: checkpoint has no model weights")
    check_header(path, header)
    return Checkpoint(path, header, obj["model"], obj.get("extra") or {})


def check_header(path: Path, header: dict[str, Any]) -> None:
    """Every field later stages rely on is there and of the right type (a damaged or
    hand-edited header must fail here, not deep inside a stage)."""
    def bad(what: str) -> CorruptFileError:
        return CorruptFileError(f"{path}: damaged checkpoint header ({what})")

    for key, kind in (("dataset", str), ("task", str), ("step", int), ("method", str), ("steps", list),
                      ("model", dict)):
        if not isinstance(header.get(key), kind):
            raise bad(f"{key} missing or not {kind.__name__}")
    if isinstance(header["step"], bool) or header["step"] < 0:
        raise bad(f"step {header['step']!r} is not a step number")
    steps = header["steps"]
    if not all(isinstance(s, list) and s and all(isinstance(c, int) and not isinstance(c, bool) for c in s)
               for s in steps):
        raise bad("steps must be lists of class ids")
    if len(steps) != header["step"] + 1:
        raise bad(f"step {header['step']} but {len(steps)} class lists")
    try:
        datasets.for_header(header)  # registers a dataset of one's own from its description
    except IncompatibleError:
        raise
    except IncsegError as err:
        raise bad(f"dataset: {err}") from None
    try:
        spec = ModelSpec.from_dict(header["model"])
        task = get_task(header["dataset"], header["task"])
    except SpecError as err:
        raise bad(f"model {err}") from None
    except (KeyError, TypeError, ValueError, IncsegError) as err:
        raise bad(f"{type(err).__name__}: {err}") from None
    if spec.backbone not in BACKBONES:
        raise bad(f"unknown backbone {spec.backbone!r}")
    if spec.backbone == "tiny" and spec.output_stride != 8:
        raise bad(f"the tiny backbone has output stride 8, not {spec.output_stride}")
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
