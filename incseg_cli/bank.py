"""ALIFE's feature memory as an HDF5 bank (layout below; docs/files.md, Feature banks).

```
(user block, 512 bytes) "incseg-feature-bank sha256=<hex of every byte after the block>"
/                     attrs: format, version, feature_dim, step, dataset, task, classes,
                             source_checkpoint_sha256, space ("step <t> features")
/classes/<id>/features  float32 [S, D], chunked, gzip + shuffle + fletcher32
/classes/<id>           attrs: name, count, source ("extracted" | "rotated"), step (learned)
```

Integrity. The HDF5 user block (bytes HDF5 leaves to the application; h5py, h5dump and
HDFView skip it) holds the sha256 of the rest of the file, checked before HDF5 parses
anything: a damaged bank is refused naming the file, and HDF5 never walks damaged metadata
(which can make it loop or crash). For other readers, every dataset also carries HDF5's
per-chunk fletcher32 checksum and the metadata uses HDF5 1.10's checksummed object format.
A bank written before these existed (no user block) loads with a one-line note.

Banks are immutable: ``BankWriter`` fills a temporary file beside the target and renames it
when every class is in, so a crash or Ctrl-C never leaves a half-written bank, and classes
are written one at a time (extraction holds one class in memory, not the whole bank).
``read_bank`` reads everything into memory once and validates it; no h5py handle outlives
the call (none crosses a DataLoader worker).
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from incseg_cli.console import warn
from incseg_cli.errors import CorruptFileError, IncompatibleError, InputError
from incseg_cli.fileio import atomic_path
from incseg_cli.tasks import class_ranges

FORMAT = "incseg-feature-bank"
VERSION = 1
SOURCES = ("extracted", "rotated")
ROOT_KEYS = ("format", "version", "feature_dim", "step", "dataset", "task", "classes",
             "source_checkpoint_sha256", "space")
# The oldest HDF5 object format with checksummed metadata (readable by HDF5 >= 1.10).
LIBVER = ("v110", "latest")
HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
USERBLOCK = 512  # the smallest user block HDF5 allows
CHECKSUM_LINE = re.compile(rb"incseg-feature-bank sha256=([0-9a-f]{64})\n\x00*")


def space_name(step: int) -> str:
    """The feature space a bank lives in: that of the model of ``step``."""
    return f"step {step} features"


@dataclass
class ClassEntry:
    label: int
    features: np.ndarray  # float32 [S, D]
    name: str
    source: str
    step: int  # the step that learned the class

    @property
    def count(self) -> int:
        return int(self.features.shape[0])


@dataclass
class FeatureBank:
    attrs: dict[str, Any]
    classes: dict[int, ClassEntry] = field(default_factory=dict)
    path: Path | None = None

    @property
    def labels(self) -> list[int]:
        return list(self.classes)

    @property
    def feature_dim(self) -> int:
        return int(self.attrs["feature_dim"])

    @property
    def step(self) -> int:
        return int(self.attrs["step"])

    @property
    def source_sha256(self) -> str:
        return str(self.attrs["source_checkpoint_sha256"])

    def stacked(self) -> tuple[torch.Tensor, torch.Tensor]:
        """All vectors ``[N, D]`` in class order, and the class label of each row ``[N]``."""
        if not self.classes:
            return torch.zeros(0, self.feature_dim), torch.zeros(0, dtype=torch.int64)
        feats = torch.from_numpy(np.concatenate([e.features for e in self.classes.values()]))
        labels = torch.cat([torch.full((e.count,), e.label, dtype=torch.int64) for e in self.classes.values()])
        return feats, labels

def _h5py():
    import h5py

    return h5py


class BankWriter:
    """``with BankWriter(path, attrs) as w: w.add(...)``; the bank appears at ``path`` only
    when the block ends without an exception. ``attrs`` holds every root attribute except
    ``format``, ``version`` and ``classes``, which the writer sets."""

    def __init__(self, path: str | os.PathLike, attrs: dict[str, Any], chunk_rows: int = 256) -> None:
        missing = [k for k in ROOT_KEYS if k not in ("format", "version", "classes") and k not in attrs]
        if missing:
            raise ValueError(f"bank attributes missing: {missing}")
        self.path = Path(path)
        self.attrs = dict(attrs)
        self.chunk_rows = chunk_rows
        self.labels: list[int] = []
        self._atomic = None
        self._file = None

    def __enter__(self) -> "BankWriter":
        self._atomic = atomic_path(self.path)
        tmp = self._atomic.__enter__()
        self._tmp = tmp
        self._file = _h5py().File(tmp, "w", libver=LIBVER, userblock_size=USERBLOCK)
        self._file.create_group("classes")
        return self

    def add(self, label: int, features: np.ndarray | torch.Tensor, name: str, source: str, step: int) -> None:
        if torch.is_tensor(features):
            features = features.detach().cpu().numpy()
        features = np.ascontiguousarray(features, dtype=np.float32)
        dim = int(self.attrs["feature_dim"])
        if features.ndim != 2 or features.shape[1] != dim or features.shape[0] == 0:
            raise ValueError(f"class {label}: features of shape {features.shape}, expected [S > 0, {dim}]")
        if not np.isfinite(features).all():
            raise ValueError(f"class {label}: features hold NaN or Inf")
        if label in self.labels:
            raise ValueError(f"class {label} written twice")
        if source not in SOURCES:
            raise ValueError(f"unknown source {source!r}")
        group = self._file["classes"].create_group(str(int(label)))
        group.create_dataset("features", data=features, chunks=(min(self.chunk_rows, len(features)), dim),
                             compression="gzip", compression_opts=4, shuffle=True, fletcher32=True)
        group.attrs.update(name=name, count=len(features), source=source, step=int(step))
        self.labels.append(int(label))

    def __exit__(self, exc_type, exc, tb) -> bool:
        try:
            if exc_type is None:
                root = self._file.attrs
                root.update({k: v for k, v in self.attrs.items() if v is not None})
                root["format"] = FORMAT
                root["version"] = VERSION
                root["classes"] = np.asarray(self.labels, dtype=np.int64)
            self._file.close()
            if exc_type is None:
                write_checksum(self._tmp)
        finally:
            # on error the atomic context removes the temporary file
            self._atomic.__exit__(exc_type, exc, tb)
        return False


def _plain(value: Any) -> Any:
    """h5py attribute values as JSON-friendly Python values."""
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, np.ndarray):
        return [_plain(v) for v in value.tolist()]
    if isinstance(value, np.generic):
        return value.item()
    return value


def _file_sha256(path: Path) -> str:
    """sha256 of every byte after the user block."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        fh.seek(USERBLOCK)
        while block := fh.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def write_checksum(path: str | os.PathLike) -> None:
    """Record the checksum of ``path`` (written with a ``USERBLOCK``-byte user block) in
    that block: the bank writer's last step, and the way to accept a deliberate edit."""
    line = f"{FORMAT} sha256={_file_sha256(path)}\n".encode()
    with open(path, "r+b") as fh:
        fh.write(line.ljust(USERBLOCK, b"\x00"))


def looks_like_bank(path: str | os.PathLike) -> bool:
    """Whether ``path`` starts like an HDF5 file, with or without incseg's user block (a
    damaged one included, so that it is reported as a damaged bank)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(USERBLOCK + len(HDF5_MAGIC))
    except OSError:
        return False
    return head.startswith(HDF5_MAGIC) or head.startswith(FORMAT.encode()) or head[USERBLOCK:] == HDF5_MAGIC


def _verify_file(path: Path) -> bool:
    """Check the user block's checksum before HDF5 reads the file; False for a file without
    one (a bank of an older incseg, or some other HDF5 file)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(USERBLOCK + len(HDF5_MAGIC))
    except OSError as err:
        raise InputError(f"{path}: cannot read ({type(err).__name__}: {err.strerror})") from None
    if head.startswith(HDF5_MAGIC):
        return False
    if head[USERBLOCK:] != HDF5_MAGIC:
        raise CorruptFileError(f"{path}: not an HDF5 file (truncated, or not a feature bank)")
    match = CHECKSUM_LINE.fullmatch(head[:USERBLOCK])
    if match is None:
        raise CorruptFileError(f"{path}: damaged feature bank (its checksum block is not intact)")
    if match.group(1).decode() != _file_sha256(path):
        raise CorruptFileError(f"{path}: checksum mismatch, the bank changed after it was written (damaged on disk "
                               "or in a copy, or edited); use an intact copy or rerun the stage that wrote it")
    return True


def _open(path: Path):
    if not path.is_file():
        raise InputError(f"{path}: feature bank not found")
    h5py = _h5py()
    if not h5py.is_hdf5(str(path)):
        raise CorruptFileError(f"{path}: not an HDF5 file (truncated, or not a feature bank)")
    try:
        return h5py.File(path, "r")
    except OSError as err:
        raise CorruptFileError(f"{path}: cannot open as HDF5 ({str(err).splitlines()[0][:160]})") from None


def check_bank(path: str | os.PathLike) -> dict[str, Any]:
    """A report of everything a bank declares and every problem found, without raising for
    the problems (``inspect`` prints it): ``{"attrs", "classes": [...], "problems": [...]}``."""
    return _scan(Path(path), {})


def _whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _scan(path: Path, data_out: dict[int, np.ndarray]) -> dict[str, Any]:
    """``check_bank``, also keeping every class's vectors in ``data_out`` (one read)."""
    if not path.is_file():
        raise InputError(f"{path}: feature bank not found")
    checksum = "ok" if _verify_file(path) else "absent"
    with _open(path) as f:
        try:
            return {**_scan_open(path, f, data_out, checksum), "checksum": checksum}
        except (OSError, RuntimeError, KeyError, ValueError, TypeError, AttributeError, IndexError) as err:
            # h5py's errors on damaged metadata (bad heap, wrong signature, address overflow...)
            detail = " ".join(str(err).split())[:160]
            raise CorruptFileError(f"{path}: damaged feature bank ({type(err).__name__}: {detail})") from None


def _scan_open(path: Path, f: Any, data_out: dict[int, np.ndarray], checksum: str) -> dict[str, Any]:
    """The checks of ``_scan`` on the open file ``f``; every object and attribute is checked
    for its kind and type before use, so a damaged or hand-made bank is a problem, not a crash."""
    h5py = _h5py()
    problems: list[str] = []
    classes: list[dict[str, Any]] = []
    attrs = {k: _plain(v) for k, v in f.attrs.items()}
    if attrs.get("format") != FORMAT:
        raise CorruptFileError(f"{path}: HDF5 file without the {FORMAT} header (format={attrs.get('format')!r})")
    if checksum == "absent":
        warn(f"{path}: feature bank written without checksums (by an older incseg); its content cannot be verified")
    missing = [k for k in ROOT_KEYS if k not in attrs]
    if missing:
        problems.append(f"root attributes missing: {', '.join(missing)}")
    for key in ("version", "feature_dim", "step"):
        if key in attrs and not (_whole(attrs[key]) and attrs[key] >= 0):
            problems.append(f"root attribute {key} is {attrs[key]!r}, not a count")
    dim = attrs.get("feature_dim")
    raw_classes = attrs.get("classes", [])
    if not isinstance(raw_classes, list) or not all(_whole(c) for c in raw_classes):
        problems.append(f"root attribute classes is {raw_classes!r}, not a list of class ids")
        raw_classes = []
    declared = [int(c) for c in raw_classes]
    group = f.get("classes")
    if group is not None and not isinstance(group, h5py.Group):
        problems.append(f"/classes is a {type(group).__name__}, not a group")
        group = None
    stored = sorted(int(k) if k.isdigit() else -1 for k in group.keys()) if group is not None else []
    if sorted(declared) != stored:
        problems.append(f"root 'classes' lists {declared} but the file holds groups {stored}")
    for label in declared:
        entry: dict[str, Any] = {"label": label}
        key = f"classes/{label}/features"
        if group is None or str(label) not in group or key not in f:
            problems.append(f"/{key} is missing")
            classes.append(entry)
            continue
        ds = f[key]
        if not isinstance(ds, h5py.Dataset) or not isinstance(f[f"classes/{label}"], h5py.Group):
            problems.append(f"/{key} is a {type(ds).__name__}, not a dataset")
            classes.append(entry)
            continue
        cattrs = {k: _plain(v) for k, v in f[f"classes/{label}"].attrs.items()}
        entry.update(name=cattrs.get("name"), count=cattrs.get("count"), source=cattrs.get("source"),
                     step=cattrs.get("step"), shape=list(ds.shape), dtype=str(ds.dtype),
                     compression=ds.compression, fletcher32=bool(ds.fletcher32))
        if not _whole(cattrs.get("step")) or not isinstance(cattrs.get("name"), str):
            problems.append(f"/classes/{label}: attributes step {cattrs.get('step')!r} and name "
                            f"{cattrs.get('name')!r} must be a step number and a name")
        if ds.dtype != np.float32 or ds.ndim != 2 or ds.shape[1] != dim:
            problems.append(f"/{key}: {ds.dtype} {list(ds.shape)}, declared float32 [count, {dim}]")
        elif ds.shape[0] != cattrs.get("count"):
            problems.append(f"/{key}: {ds.shape[0]} rows, but its count attribute says {cattrs.get('count')}")
        else:
            try:
                data = ds[()]
            except OSError as err:  # a truncated chunk, or one whose fletcher32 checksum fails
                problems.append(f"/{key}: damaged data, unreadable ({' '.join(str(err).split())[:120]})")
                data = None
            if data is not None and not np.isfinite(data).all():
                problems.append(f"/{key}: {int((~np.isfinite(data)).sum())} values are NaN or Inf")
            elif data is not None:
                data_out[label] = data
        if cattrs.get("source") not in SOURCES:
            problems.append(f"/classes/{label}: source {cattrs.get('source')!r} is not one of {SOURCES}")
        classes.append(entry)
    return {"path": str(path), "attrs": attrs, "classes": classes, "problems": problems}


def read_bank(path: str | os.PathLike) -> FeatureBank:
    """The whole bank in memory; any problem ``check_bank`` finds is a CorruptFileError."""
    path = Path(path)
    data: dict[int, np.ndarray] = {}
    report = _scan(path, data)
    if report["problems"]:
        more = f" (and {len(report['problems']) - 1} more)" if len(report["problems"]) > 1 else ""
        raise CorruptFileError(f"{path}: {report['problems'][0]}{more}")
    if int(report["attrs"]["version"]) > VERSION:
        raise IncompatibleError(f"{path}: bank format {report['attrs']['version']} is newer than this incseg")
    bank = FeatureBank(attrs=report["attrs"], path=path)
    for c in report["classes"]:
        label = c["label"]
        bank.classes[label] = ClassEntry(label, data[label], str(c["name"]), str(c["source"]), int(c["step"]))
    return bank


def recorded_fingerprint(path: str | os.PathLike) -> str | None:
    """The fingerprint the stage that wrote the bank at ``path`` recorded, or None when
    ``path`` is not an intact bank (unreadable, damaged, or some other file)."""
    try:
        report = check_bank(path)
    except Exception:  # anything unreadable is "not this bank" here
        return None
    value = report["attrs"].get("fingerprint")
    return value if isinstance(value, str) and not report["problems"] else None


def check_bank_fits(bank: FeatureBank, *, dataset: str, step: int, classes: list[int], feature_dim: int,
                    sources: set[str], model: str, purpose: str) -> None:
    """Refuse a bank that is not the memory of ``classes`` in the features of ``step`` made
    by one of the checkpoints ``sources`` (sha256). ``model`` names the model option in the
    messages, ``purpose`` says why these classes are needed.

    The task name is not compared: tasks that share a base (VOC 15-5 and 15-1, toy 10-10
    and 10-5-5) share its memory, and the classes and the source checkpoint say the rest."""
    a, path = bank.attrs, bank.path
    if a["dataset"] != dataset:
        raise IncompatibleError(f"{path}: is a {a['dataset']} bank, {model} is a {dataset} model")
    if bank.feature_dim != feature_dim:
        raise IncompatibleError(f"{path}: holds {bank.feature_dim}-d features, {model} has {feature_dim}-d features")
    if bank.labels != classes:
        raise IncompatibleError(f"{path}: holds classes {class_ranges(bank.labels)}; {purpose} needs classes {class_ranges(classes)}")
    if a["space"] != space_name(step):
        raise IncompatibleError(f"{path}: holds {a['space']}, {model} makes {space_name(step)}")
    if bank.source_sha256 not in sources:
        raise IncompatibleError(f"{path}: its features come from checkpoint {bank.source_sha256[:12]}, "
                                f"not from {model}")
