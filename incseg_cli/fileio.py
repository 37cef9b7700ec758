"""Atomic, durable file output; output checks; content hashing.

Nothing is ever written in place: a writer fills ``.<name>.tmp-<pid>`` beside the target,
fsyncs it, renames it over the target and fsyncs the directory, so a crash or a power loss
leaves either the old file or the new one. A write that fails because of the output (no
permission, read-only file system, a file in the way, disk full, quota) raises
``OutputError`` (exit 9) naming the path; ``check_writable`` finds most of these before
any heavy work.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import IO, Any, Iterable, Iterator

import torch

from incseg_cli.errors import CorruptFileError, OutputError, UsageError

# errno values that say "this output cannot be written here", whatever the writer.
_REASONS = {
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EROFS: "read-only file system",
    errno.ENOTDIR: "a parent of it is a file, not a directory",
    errno.EISDIR: "a directory is in the way",
    errno.EEXIST: "a file is in the way",
    errno.ENOSPC: "no space left on the device (disk full)",
    errno.EDQUOT: "disk quota exceeded",
    errno.EFBIG: "file too large (file size limit)",
    errno.ENAMETOOLONG: "file name too long",
}
# These can only be about the output, even when the error does not name a file.
ALWAYS_OUTPUT_ERRNOS = {errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
# torch.save reports a failed write as a RuntimeError of its zip writer.
_TORCH_WRITE_FAILURES = ("PytorchStreamWriter failed", "inline_container.cc", "file write failed")


def _tmp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def _low_on_space(path: Path) -> bool:
    for candidate in (path, *path.parents):
        if candidate.exists():
            try:
                st = os.statvfs(candidate)
            except OSError:
                return False
            return st.f_bavail * st.f_frsize < (1 << 20)
    return False


def output_error(err: BaseException, path: str | os.PathLike,
                 related: Iterable[str | os.PathLike] = ()) -> OutputError | None:
    """``err`` as an ``OutputError`` about ``path`` when it is a failure to write there, else
    None. ``related`` are other names of the same output (its temporary file, its parent):
    an OSError naming another file (an input) is not an output error."""
    path = Path(path)
    if isinstance(err, OutputError):
        return err
    if isinstance(err, OSError) and err.errno in _REASONS:
        own = [path, *map(Path, related)]
        named = err.filename is None or str(err.filename) in {str(p) for p in (*own, *path.parents)}
        # h5py puts the file name in its message instead of ``filename``
        named = named or any(p.name and p.name in str(err) for p in own)
        if err.errno in ALWAYS_OUTPUT_ERRNOS or named:
            return OutputError(f"cannot write {path}: {_REASONS[err.errno]}")
    if isinstance(err, RuntimeError) and any(m in str(err) for m in _TORCH_WRITE_FAILURES):
        reason = "no space left on the device (disk full)" if _low_on_space(path) else \
            f"the write failed ({str(err).strip().splitlines()[0][:120]}; disk full or quota?)"
        return OutputError(f"cannot write {path}: {reason}")
    return None


@contextlib.contextmanager
def output_errors(path: str | os.PathLike, related: Iterable[str | os.PathLike] = ()) -> Iterator[None]:
    """Turn failures to write ``path`` inside the block into ``OutputError``."""
    try:
        yield
    except (OSError, RuntimeError) as err:
        mapped = output_error(err, path, related)
        if mapped is None:
            raise
        raise mapped from None


def fsync_path(path: str | os.PathLike) -> None:
    """Flush a file's or a directory's data and metadata to the disk."""
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if Path(path).is_dir() else 0))
    try:
        os.fsync(fd)
    except OSError as err:  # some file systems cannot fsync a directory; the rename is still atomic
        if err.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
            raise
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, fsync: bool = True) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success fsync it, rename it to ``path`` and
    fsync the directory. The temporary file is removed on any failure or interruption."""
    path = Path(path)
    tmp = _tmp_name(path)
    try:
        with output_errors(path, [tmp]):
            path.parent.mkdir(parents=True, exist_ok=True)
        with output_errors(path, [tmp]):
            yield tmp
            if fsync:
                fsync_path(tmp)
            os.replace(tmp, path)
            if fsync:
                fsync_path(path.parent)
    finally:
        if tmp.is_dir() and not tmp.is_symlink():
            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp.exists() or tmp.is_symlink():
            tmp.unlink()


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w") -> Iterator[IO[Any]]:
    with atomic_path(path) as tmp:
        with open(tmp, mode) as fh:
            yield fh


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_open(path, "w") as fh:
        fh.write(text)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def torch_save(obj: Any, path: str | os.PathLike) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a fresh temporary directory; on success it replaces ``path`` as a whole."""
    path = Path(path)
    with output_errors(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        with output_errors(path, [tmp]):
            yield tmp
            for item in tmp.rglob("*"):  # the files, then the directories naming them
                if item.is_file() and not item.is_symlink():
                    fsync_path(item)
            for sub in sorted((p for p in tmp.rglob("*") if p.is_dir()), reverse=True):
                fsync_path(sub)
            fsync_path(tmp)
            if path.exists():
                old = path.with_name(f".{path.name}.old-{os.getpid()}")
                os.replace(path, old)
                os.replace(tmp, path)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(tmp, path)
            fsync_path(path.parent)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


# -- checks before heavy work ---------------------------------------------------------------------
def _existing_ancestor(path: Path) -> Path:
    for candidate in path.parents:
        if candidate.exists() or candidate.is_symlink():
            return candidate
    return Path(path.anchor or ".")


def _probe(directory: Path, path: Path) -> None:
    """Create and remove a file in ``directory``: the only test of writability that also
    holds for root, ACLs and network file systems."""
    with output_errors(path, [directory]):
        fd, name = tempfile.mkstemp(prefix=".incseg-probe-", dir=directory)
        os.close(fd)
        os.unlink(name)
        st = os.statvfs(directory)
    if st.f_bavail == 0:
        raise OutputError(f"cannot write {path}: no space left on the device (disk full)")


def check_writable(path: str | os.PathLike, option: str, directory: bool = False) -> None:
    """Fail now, with ``OutputError``, if ``path`` (a file, or with ``directory`` a
    directory) cannot be written: a file or a directory in the way, a parent that is a
    file, no permission, a read-only or full file system. Creates nothing."""
    path = Path(path)
    if path.exists():
        if directory and not path.is_dir():
            raise OutputError(f"cannot write {option} {path}: a file is in the way ({option} needs a directory)")
        if not directory and path.is_dir():
            raise OutputError(f"cannot write {option} {path}: a directory is in the way ({option} needs a file)")
    ancestor = _existing_ancestor(path)
    if not ancestor.is_dir():
        raise OutputError(f"cannot write {option} {path}: {ancestor} is a file, not a directory")
    _probe(ancestor, path)
    if directory and path.is_dir():
        _probe(path, path)


def _inside(inner: Path, outer: Path) -> bool:
    return inner == outer or outer in inner.parents


def refuse_overlap(out: str | os.PathLike, option: str, inputs: Iterable[tuple[str, str | os.PathLike | None]],
                   inside_ok: Iterable[str] = ()) -> None:
    """Refuse (exit 2) an output that is, contains or lies inside one of ``inputs``
    (``(option or description, path)``): replacing the output must never touch an input.
    Outputs may lie inside the inputs named in ``inside_ok`` (a dataset root)."""
    out_path = Path(out).resolve()
    allowed = set(inside_ok)
    items = [(name, item, Path(item).resolve()) for name, item in inputs if item is not None]
    for name, item, source in items:  # the plainest message first
        if out_path == source:
            raise UsageError(f"{option} {out} is also {name} {item}; an output may not be one of its inputs, "
                             f"choose another {option}")
    for name, item, source in items:
        if _inside(source, out_path):
            raise UsageError(f"{option} {out} contains {name} {item}; replacing it would delete an input, "
                             f"choose another {option}")
        if name not in allowed and _inside(out_path, source):
            raise UsageError(f"{option} {out} lies inside {name} {item}; choose another {option} outside it")


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def sha256_json(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()


def read_json_object(path: str | os.PathLike, what: str, hint: str = "") -> dict[str, Any]:
    """A JSON file that must hold an object (manifest, metrics); anything else is one
    ``CorruptFileError`` line naming the file, ``what`` it is and ``hint``."""
    path = Path(path)
    try:
        obj = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise CorruptFileError(f"{path}: not valid JSON ({what}){hint}") from None
    if not isinstance(obj, dict):
        raise CorruptFileError(f"{path}: not a JSON object ({what}){hint}")
    return obj
