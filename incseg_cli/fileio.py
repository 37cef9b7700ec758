"""Atomic, durable file output; output checks; content hashing.

Nothing is ever written in place: a writer fills ``.<name>.tmp-<pid>@<host>`` beside the
target, fsyncs it, renames it over the target and fsyncs the directory, so a crash or a
power loss leaves either the old file or the new one. A process killed outright (SIGKILL,
power loss) leaves its temporary file behind: the name says whose it was, and the next stage
that locks that output removes it once that process is gone (``remove_stale_temps``). A
write that fails because of the output (no permission, read-only file system, a file in the
way, disk full, quota) raises ``OutputError`` (exit 9) naming the path; ``check_writable``
finds most of these before any heavy work.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import platform
import re
import shutil
import tempfile
from pathlib import Path
from typing import IO, Any, Iterable, Iterator

from incseg_cli.console import SIDECAR_SUFFIXES, log
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


# -- temporary names: whose they are, so that a later process can tell debris from work --------
def host_tag() -> str:
    """This machine's name as it appears in temporary names (no ``/``, no ``@``)."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", platform.node())[:64] or "localhost"


def _tmp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}@{host_tag()}")


# ``.<name>.tmp-<pid>[-<random>][@<host>]`` (atomic_path, atomic_dir; older incseg wrote no
# host), ``.<name>.old-<pid>[@<host>]`` (atomic_dir's replaced directory) and the probes of
# check_writable.
_TEMP = re.compile(r"^\.(?P<name>.+)\.(?P<what>tmp|old)-(?P<pid>\d+)(?:-[A-Za-z0-9_]+)?(?:@(?P<host>[A-Za-z0-9._-]+))?$")
_PROBE = re.compile(r"^\.incseg-probe-(?P<pid>\d+)-[A-Za-z0-9_]+@(?P<host>[A-Za-z0-9._-]+)$")


def temp_owner(name: str) -> tuple[str, int, str | None] | None:
    """``(target name, pid, host or None)`` of a temporary file name incseg gives, else None."""
    match = _TEMP.match(name)
    if match:
        return match["name"], int(match["pid"]), match["host"]
    match = _PROBE.match(name)
    return ("", int(match["pid"]), match["host"]) if match else None


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    except (OverflowError, ValueError):  # not a pid at all (a damaged name): nobody's
        return False
    return True


def _debris(name: str, targets: set[str] | None) -> bool | None:
    """Whether ``name`` is a temporary file of one of ``targets`` (None: of any target) left
    by a process that no longer runs; None when its writer ran on another host (its pid
    means nothing here)."""
    owner = temp_owner(name)
    if owner is None or (targets is not None and owner[0] not in targets):
        return False
    _, pid, host = owner
    if host is not None and host != host_tag():
        return None
    return pid != os.getpid() and not pid_alive(pid)


def _remove(path: Path) -> bool:
    try:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
    except FileNotFoundError:
        return False
    except OSError:
        return False  # cannot remove it: it stays, as it would have without us
    return True


def remove_stale_temps(target: str | os.PathLike) -> list[str]:
    """Remove what dead processes left of the output ``target``: its temporary files beside it
    (and those of its side files ``<name>.log``...) and, for a directory output, every incseg
    temporary file inside it. Call it holding the output's
    lock: only a process that no longer runs on this host loses anything, and that process
    cannot come back. Says what it removed in one line; returns the names removed."""
    target = Path(target)
    names = {target.name, *(target.name + suffix for suffix in SIDECAR_SUFFIXES)}
    found: list[tuple[Path, bool | None]] = []
    with contextlib.suppress(OSError):
        for entry in os.scandir(target.parent):
            if entry.name.startswith("."):
                verdict = _debris(entry.name, names)
                # killed between atomic_dir's two renames, the old copy is all there is of the output
                if verdict is not False and not (".old-" in entry.name and not target.exists()):
                    found.append((Path(entry.path), verdict))
    if target.is_dir() and not target.is_symlink():
        for folder, dirs, files in os.walk(target):
            for name in [*dirs, *files]:
                if name.startswith("."):
                    verdict = _debris(name, None)
                    if verdict is not False:
                        found.append((Path(folder) / name, verdict))
            dirs[:] = [d for d in dirs if not d.startswith(".")]
    removed = [path for path, verdict in found if verdict and _remove(path)]
    foreign = [path for path, verdict in found if verdict is None]
    if removed:
        shown = ", ".join(p.name for p in removed[:3]) + (f" and {len(removed) - 3} more" if len(removed) > 3 else "")
        log(f"{target}: removed {len(removed)} temporary file(s) left by processes that no longer run ({shown})")
    if foreign:
        log(f"{target}: left {foreign[0].name}{f' and {len(foreign) - 1} more' if len(foreign) > 1 else ''}: "
            "written on another host, whose processes this one cannot see; remove it if no incseg runs there")
    return [p.name for p in removed]


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
    import torch  # here: the CLI imports this module before every command, light ones too

    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a fresh temporary directory; on success it replaces ``path`` as a whole."""
    path = Path(path)
    with output_errors(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(path)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-{os.getpid()}-", suffix=f"@{host_tag()}",
                                    dir=path.parent))
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
                old = path.with_name(f".{path.name}.old-{os.getpid()}@{host_tag()}")
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
        fd, name = tempfile.mkstemp(prefix=f".incseg-probe-{os.getpid()}-", suffix=f"@{host_tag()}", dir=directory)
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
