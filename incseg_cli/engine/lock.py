"""One writer per output: a lock file beside each run directory, bank and rotations file.

``OutputLock(path)`` locks ``.<name>.lock`` in the directory of ``path`` with ``flock``,
which the kernel releases when the holder dies however it dies, and writes the holder's
pid, host and command into it so that a refused second process can name it. A lock file
left by a process that died (SIGKILL, power loss) is taken over with a one-line note. Where
the file system has no ``flock``, a lock whose pid is no longer running on this host is
taken over the same way.

Taking a lock and giving it back run with the stop signals held, so that a Ctrl-C can leave
neither a lock file nobody holds nor a held one nobody releases. Whoever takes the lock of
an output then removes what dead writers of that output left (``fileio.remove_stale_temps``).
"""

from __future__ import annotations

import atexit
import errno
import fcntl
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

from incseg_cli import signals
from incseg_cli.console import log
from incseg_cli.errors import LockedError
from incseg_cli.fileio import output_errors, pid_alive, remove_stale_temps

__all__ = ["OutputLock", "acquire_all", "locked", "lock_path", "pid_alive"]

_held: list["OutputLock"] = []


def lock_path(target: str | os.PathLike) -> Path:
    target = Path(target)
    return target.with_name(f".{target.name}.lock")


class OutputLock:
    """``with OutputLock(out): ...`` or ``acquire()``/``release()``. Refuses with
    ``LockedError`` (exit 8) while another process holds it."""

    def __init__(self, target: str | os.PathLike) -> None:
        self.target = Path(target)
        self.path = lock_path(self.target)
        self._fd: int | None = None

    # -- helpers ------------------------------------------------------------------------------
    @staticmethod
    def _read(fd: int) -> dict[str, Any]:
        try:
            os.lseek(fd, 0, os.SEEK_SET)
            data = os.read(fd, 4096)
            holder = json.loads(data.decode() or "{}")
            return holder if isinstance(holder, dict) else {}
        except (OSError, ValueError):
            return {}

    def _refuse(self, holder: dict[str, Any]) -> LockedError:
        who = f"pid {holder.get('pid', '?')} on {holder.get('host', '?')}"
        since = f" since {holder['since']}" if holder.get("since") else ""
        command = f" ({holder['command']})" if holder.get("command") else ""
        return LockedError(f"{self.target}: another incseg is writing it: {who}{since}{command}; "
                           f"wait for it to finish or stop it (lock file {self.path})")

    def _stale(self, holder: dict[str, Any]) -> bool:
        """Without flock: a holder on this host whose pid has ended."""
        pid = holder.get("pid")
        return holder.get("host") == platform.node() and isinstance(pid, int) and not pid_alive(pid)

    # -- public -------------------------------------------------------------------------------
    def acquire(self, clean: bool = True) -> "OutputLock":
        """Take the lock; with ``clean``, then remove the stale temporary files of the output."""
        if self._fd is not None:
            return self
        try:
            with signals.blocked():
                self._acquire()
        except BaseException:
            # a signal held meanwhile is raised as the block ends: the lock goes with it
            self.release()
            raise
        if clean:
            remove_stale_temps(self.target)
        return self

    def _acquire(self) -> None:
        with output_errors(self.target, [self.path, self.target.parent]):
            self.target.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(10):
            with output_errors(self.target, [self.path]):
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = self._read(fd)
                os.close(fd)
                raise self._refuse(holder) from None
            except OSError as err:  # no flock here (some network file systems): go by the pid
                if err.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL):
                    os.close(fd)
                    raise
                holder = self._read(fd)
                if holder.get("pid") not in (None, os.getpid()) and not self._stale(holder):
                    os.close(fd)
                    raise self._refuse(holder) from None
            # The file we locked may have been removed by its holder's release in between.
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(self.path))
            except FileNotFoundError:
                same = False
            if not same:
                os.close(fd)
                continue
            previous = self._read(fd)
            if previous.get("pid") not in (None, os.getpid()):
                log(f"{self.target}: took over the stale lock of pid {previous.get('pid')} on "
                    f"{previous.get('host', '?')} (that process no longer runs)")
            self._fd = fd
            _held.append(self)
            self._write(fd)
            return
        raise LockedError(f"{self.target}: its lock file {self.path} keeps changing; is another incseg starting?")

    def _write(self, fd: int) -> None:
        holder = {"pid": os.getpid(), "host": platform.node(), "since": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                  "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])[:300]}
        with output_errors(self.target, [self.path]):
            os.ftruncate(fd, 0)
            os.lseek(fd, 0, os.SEEK_SET)
            os.write(fd, (json.dumps(holder) + "\n").encode())
            os.fsync(fd)

    def release(self) -> None:
        if self._fd is None:
            return
        with signals.blocked():
            self._release()

    def _release(self) -> None:
        fd, self._fd = self._fd, None
        try:
            # Unlink while still holding it: a process that opened it meanwhile sees the
            # change and opens the new one.
            if os.path.samestat(os.fstat(fd), os.stat(self.path)):
                os.unlink(self.path)
        except OSError:
            pass
        finally:
            os.close(fd)
            if self in _held:
                _held.remove(self)

    @property
    def held(self) -> bool:
        return self._fd is not None

    def __enter__(self) -> "OutputLock":
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()


def acquire_all(targets: list[str | os.PathLike]) -> list[OutputLock]:
    """Lock every target or none."""
    locks: list[OutputLock] = []
    try:
        for target in targets:
            locks.append(OutputLock(target).acquire())
    except BaseException:
        for lock in locks:
            lock.release()
        raise
    return locks


@atexit.register
def _release_all() -> None:
    for lock in list(_held):
        lock.release()


class locked:
    """``with locked(a, b): ...``: every output locked for the block (all or none)."""

    def __init__(self, *targets: str | os.PathLike) -> None:
        self.targets = list(targets)
        self.locks: list[OutputLock] = []

    def __enter__(self) -> list[OutputLock]:
        self.locks = acquire_all(self.targets)
        return self.locks

    def __exit__(self, *exc: Any) -> None:
        for lock in reversed(self.locks):
            lock.release()
