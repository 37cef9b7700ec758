"""Errors a user can cause, each with the exit code documented in docs/reliability.md.

Every stage validates its inputs before heavy work and raises one of these; the CLI prints
the message as one line on stderr and exits with the class's code, never a traceback.
"""

from __future__ import annotations


class IncsegError(Exception):
    """Base class: a problem the user can fix. ``str(err)`` is the whole message."""

    exit_code = 1


class UsageError(IncsegError):
    """Options that are unknown or contradict each other or the task."""

    exit_code = 2


class InputError(IncsegError):
    """A missing or invalid input: dataset root, split file, image, mask, label table."""

    exit_code = 3


class IncompatibleError(IncsegError):
    """A valid file that does not fit: a checkpoint of another task, a bank of another size."""

    exit_code = 4


class CorruptFileError(IncsegError):
    """A file that cannot be read at all: truncated, not the format it claims, unsafe."""

    exit_code = 5


class OutputExistsError(IncsegError):
    """The output path holds a different run; ``--force`` replaces it."""

    exit_code = 6


class NonFiniteError(IncsegError):
    """Training diverged (NaN/Inf loss): the last good ``last.pt`` is kept."""

    exit_code = 7


class LockedError(IncsegError):
    """Another running incseg holds the lock of this output (run directory, bank, rotations)."""

    exit_code = 8


class OutputError(IncsegError):
    """The output cannot be written: permission, read-only file system, a file where a
    directory should be (or the reverse), disk full, quota, file size limit."""

    exit_code = 9


class DownloadError(IncsegError):
    """A download did not complete: network, server, HTTP error. What arrived is kept and a
    rerun of the same command resumes it."""

    exit_code = 10


# Exit codes that are not errors of this module.
EXIT_INTERRUPTED = 130  # SIGINT/SIGTERM: last.pt written, rerun the same command to resume
EXIT_INTERNAL = 70  # a bug in incseg; INCSEG_DEBUG=1 shows the traceback


class Interrupted(IncsegError):
    """SIGINT/SIGTERM stopped a stage after it saved its state; rerunning resumes."""

    exit_code = EXIT_INTERRUPTED


class ForwardedError(IncsegError):
    """Under torchrun: an error rank 0 raised (and reports), re-raised on the other ranks so
    that they stop with the same code without repeating its message."""

    def __init__(self, original: IncsegError) -> None:
        super().__init__(str(original))
        self.exit_code = original.exit_code


EXIT_CODES: dict[int, str] = {
    0: "success (or the run was already complete and was skipped)",
    1: "other error",
    UsageError.exit_code: "bad or contradictory options, unknown task or method",
    InputError.exit_code: "missing or invalid input (dataset root, split, image, mask, label table)",
    IncompatibleError.exit_code: "checkpoint, bank or rotation file that does not match the task or model",
    CorruptFileError.exit_code: "unreadable file (truncated, wrong format, needs unsafe unpickling)",
    OutputExistsError.exit_code: "output holds a different run (--force replaces it), something incseg did not write, "
                                 "or another kind of output or a run's file (never replaced)",
    NonFiniteError.exit_code: "training produced a NaN/Inf loss",
    LockedError.exit_code: "the output is locked by another running incseg (its pid is named)",
    OutputError.exit_code: "cannot write the output: permission, read-only, not a directory, disk full, quota",
    DownloadError.exit_code: "a download did not complete (network, server, HTTP error); rerun the same command "
                             "to resume it",
    EXIT_INTERNAL: "internal error (a bug); rerun with INCSEG_DEBUG=1 for the traceback",
    EXIT_INTERRUPTED: "interrupted (Ctrl-C / SIGTERM): training wrote last.pt, other stages removed their "
                      "temporary files; rerun the same command to resume",
}
