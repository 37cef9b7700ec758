"""Unpacking a downloaded tar or zip into a root, refusing any entry that would land outside it.

An archive is extracted into a temporary directory inside the root, then its top-level
entries are moved into place (merged into folders that exist, e.g. ``VOCdevkit/``). A refused
entry, an error or an interruption removes the temporary directory: the root holds either
nothing of the archive or all of it. Refused: absolute names, ``..`` components, links that
point outside the destination (and, in zips, any link), devices and fifos — tar's ``data``
extraction filter (Python 3.11.4+, PEP 706) plus the same rules for zip entries.
"""

from __future__ import annotations

import os
import shutil
import stat
import tarfile
import tempfile
import zipfile
import zlib
from pathlib import Path, PurePosixPath

from incseg_cli.console import ProgressBar
from incseg_cli.errors import CorruptFileError
from incseg_cli.fileio import host_tag, output_errors, remove_stale_temps


def _unsafe_name(name: str) -> str | None:
    """Why an entry's name is refused (None: it is not)."""
    path = PurePosixPath(name.replace("\\", "/"))
    if path.is_absolute() or (len(name) > 1 and name[1] == ":"):
        return "an absolute path"
    if ".." in path.parts:
        return "a '..' component that leaves the root"
    return None


def _wanted(name: str, members: tuple[str, ...]) -> bool:
    return not members or any(name == m.rstrip("/") or name.startswith(m) for m in members)


def _refuse(archive: Path, name: str, why: str) -> CorruptFileError:
    return CorruptFileError(f"{archive}: refused entry {name!r} ({why}); nothing of the archive was extracted")


def _extract_tar(archive: Path, into: Path, members: tuple[str, ...]) -> None:
    try:
        tar = tarfile.open(archive)
    except (tarfile.TarError, OSError) as err:
        raise CorruptFileError(f"{archive}: not a readable tar archive ({err})") from None
    with tar:
        try:
            entries = [m for m in tar.getmembers() if _wanted(m.name, members)]
        except (tarfile.TarError, EOFError, OSError) as err:
            raise CorruptFileError(f"{archive}: damaged tar archive ({err})") from None
        for member in entries:
            why = _unsafe_name(member.name)
            if why is None and (member.islnk() or member.issym()):
                target = PurePosixPath(member.name).parent / member.linkname if member.issym() else \
                    PurePosixPath(member.linkname)
                why = _unsafe_name(member.linkname) if member.islnk() else (
                    "a link to an absolute path" if PurePosixPath(member.linkname).is_absolute() else
                    "a link that leaves the root" if ".." in PurePosixPath(os.path.normpath(target)).parts else None)
            if why is None and (member.isdev() or member.isfifo()):
                why = "a device or fifo"
            if why is not None:
                raise _refuse(archive, member.name, why)
        with ProgressBar(len(entries), f"extracting {archive.name}", unit="files") as bar:
            for member in entries:
                try:
                    if hasattr(tarfile, "data_filter"):
                        tar.extract(member, into, filter="data")
                    else:  # Python < 3.11.4: the checks above are the filter
                        tar.extract(member, into)
                except tarfile.FilterError as err:
                    raise _refuse(archive, member.name, str(err)) from None
                except (tarfile.TarError, EOFError, zlib.error) as err:
                    raise CorruptFileError(f"{archive}: damaged at {member.name!r} ({err})") from None
                bar.advance()


def _extract_zip(archive: Path, into: Path, members: tuple[str, ...]) -> None:
    try:
        zf = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError) as err:
        raise CorruptFileError(f"{archive}: not a readable zip archive ({err})") from None
    with zf:
        entries = [i for i in zf.infolist() if _wanted(i.filename, members)]
        for info in entries:
            why = _unsafe_name(info.filename)
            if why is None and stat.S_ISLNK(info.external_attr >> 16):
                why = "a symbolic link"
            if why is not None:
                raise _refuse(archive, info.filename, why)
        with ProgressBar(len(entries), f"extracting {archive.name}", unit="files") as bar:
            for info in entries:
                try:
                    zf.extract(info, into)
                except (zipfile.BadZipFile, zlib.error, EOFError) as err:
                    raise CorruptFileError(f"{archive}: damaged at {info.filename!r} ({err})") from None
                bar.advance()


def _merge(src: Path, dest: Path) -> None:
    """Move ``src`` to ``dest``; folders that exist on both sides are merged, files replaced."""
    if dest.is_dir() and not dest.is_symlink() and src.is_dir():
        for child in src.iterdir():
            _merge(child, dest / child.name)
        src.rmdir()
    else:
        if dest.is_dir() and not dest.is_symlink():
            shutil.rmtree(dest)
        os.replace(src, dest)


def extract(archive: Path, root: Path, members: tuple[str, ...] = ()) -> list[str]:
    """Unpack ``archive`` (tar of any compression, or zip) into ``root``; only the entries under
    ``members`` prefixes when given. Returns the top-level names it put there."""
    remove_stale_temps(root / archive.name)
    with output_errors(root):
        root.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{archive.name}.tmp-{os.getpid()}-", suffix=f"@{host_tag()}",
                                        dir=root))
    try:
        with output_errors(root, [staging]):
            if zipfile.is_zipfile(archive):
                _extract_zip(archive, staging, members)
            else:
                _extract_tar(archive, staging, members)
            names = sorted(p.name for p in staging.iterdir())
            for name in names:
                _merge(staging / name, root / name)
        return names
    finally:
        shutil.rmtree(staging, ignore_errors=True)
