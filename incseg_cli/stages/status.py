"""status: where a run stands, read from the files its stage keeps up to date.

A training stage (train-base, train-step, finetune-classifier, fit-rotations) publishes
``progress.json`` at every read of its losses (``engine/monitor.py``): state, epoch,
iteration, rate, time left, last losses, its pid and host. The lock file of the output
(``engine/lock.py``) names the process that holds it. From these and the manifest:

- complete: the manifest says so (a file output: the file exists and its stage ended);
- running: the process named by the lock or progress file still runs (another host's
  process, whose pid cannot be checked from here: its files changed in the last
  ``STALE_SECONDS``);
- interrupted: stopped by Ctrl-C / SIGTERM after writing its resume state;
- failed: stopped by an error (the error is shown);
- stale: says it is running, but its process is gone (killed, crashed, the machine went
  down); rerunning the command resumes from the last saved epoch.
"""

from __future__ import annotations

import json
import math
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from incseg_cli.config import option
from incseg_cli.console import SIDECAR_SUFFIXES, RunFiles, duration
from incseg_cli.engine.lock import lock_path, pid_alive
from incseg_cli.errors import InputError

STALE_SECONDS = 600.0
COMPLETE, RUNNING, INTERRUPTED, FAILED, STALE = "complete", "running", "interrupted", "failed", "stale"
RUN_FILES = ("checkpoint.pt", "metrics.json", "manifest.json", "losses.csv", "log.txt", "last.pt")
# The folders of predict (stages/predict.py) and of evaluate --save-predictions
# (stages/evaluate.py), named here: those modules import torch, status must not.
PREDICT_RECORD, PREDICT_FILES, SCORES_FILE = "predict.json", ("predict.json", "areas.csv", "areas.json", "log.txt"), "scores.tsv"


@dataclass(kw_only=True)
class StatusOptions:
    """What ``incseg status`` reads (it never changes a run)."""

    runs: list[Path] = option(required=True, argument=True, metavar="RUN...",
                              help="Run directories, predict or evaluate --save-predictions folders, or the output "
                                   "file of evaluate --out / fit-rotations / extract-features / rotate-bank.")


def _json(path: Path) -> dict[str, Any] | None:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


# What status reads of progress.json and of a manifest, with the type each must have. A file
# is read by a person's tools too (or damaged): a value of another type is left out, as if
# absent, rather than shown, compared or formatted as what it is not.
_STRING = lambda v: isinstance(v, str)  # noqa: E731
_PROGRESS = {
    "state": lambda v: v in ("running", "trained", INTERRUPTED, FAILED),
    "stage": _STRING, "command": _STRING, "host": _STRING, "error": _STRING, "updated": _STRING,
    "started": _STRING, "resume_state": lambda v: isinstance(v, str) and v != "",
    "pid": lambda v: _count(v) and v > 0, "epoch": _count, "epochs": _count, "iteration": _count,
    "iterations": _count, "iterations_per_epoch": _count,
    "it_per_s": _number, "eta_seconds": _number, "updated_unix": _number,
    "losses": lambda v: isinstance(v, dict), "lr": lambda v: isinstance(v, list),
    "outputs": lambda v: isinstance(v, list),
}
_MANIFEST = {
    "status": _STRING, "argv": lambda v: isinstance(v, list), "epochs": lambda v: isinstance(v, list),
    "iterations_per_epoch": lambda v: _count(v) and v > 0, "options": lambda v: isinstance(v, dict),
    "train_seconds": _number,
}


def _typed(record: dict[str, Any] | None, fields: dict[str, Any]) -> dict[str, Any] | None:
    """The fields of ``record`` that have their type (see ``_PROGRESS``); containers keep only
    entries of theirs (losses: name to number, lr: numbers, outputs: paths)."""
    if record is None:
        return None
    out = {k: record[k] for k, ok in fields.items() if k in record and ok(record[k])}
    if "losses" in out:
        out["losses"] = {k: v for k, v in out["losses"].items() if isinstance(k, str) and _number(v)}
    if "lr" in out:
        out["lr"] = [v for v in out["lr"] if _number(v)]
    if "outputs" in out:
        out["outputs"] = [v for v in out["outputs"] if isinstance(v, str) and v]
    return out


def _progress(path: Path) -> dict[str, Any] | None:
    """progress.json as status uses it; None when it cannot be read or is not an object."""
    return _typed(_json(path), _PROGRESS)


def _scores(metrics: dict[str, Any] | None) -> dict[str, float] | None:
    miou = (metrics or {}).get("miou")
    if not isinstance(miou, dict):
        return None
    return {k: v for k, v in miou.items() if isinstance(k, str) and (_number(v) or v is None)}


def process_alive(pid: Any, host: Any, command_hint: str = "incseg") -> bool | None:
    """Whether ``pid`` on ``host`` still runs incseg; None when it cannot be told from here."""
    if not isinstance(pid, int) or pid <= 0:
        return None
    if host and host != platform.node():
        return None
    if not pid_alive(pid):
        return False
    proc = Path(f"/proc/{pid}")
    if proc.is_dir():
        try:
            if (proc / "stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                return False  # exited, not yet reaped by its parent
            if command_hint not in (proc / "cmdline").read_bytes().decode(errors="replace"):
                return False  # the pid went to another program
        except (OSError, IndexError):
            pass
    return True


def _newest_mtime(paths: list[Path]) -> float | None:
    times = [p.stat().st_mtime for p in paths if p.exists()]
    return max(times) if times else None


def _holder(target: Path, progress: dict[str, Any] | None) -> dict[str, Any]:
    """pid and host of the process writing ``target``: its lock file, else progress.json."""
    lock = _typed(_json(lock_path(target)), {"pid": _PROGRESS["pid"], "host": _STRING}) \
        if lock_path(target).is_file() else None
    source = lock if lock and lock.get("pid") else progress or {}
    return {"pid": source.get("pid"), "host": source.get("host")}


# Stages of a file output that lock it (engine/outputs.py, export); evaluate --out does not.
LOCKING_FILE_STAGES = ("extract-features", "fit-rotations", "rotate-bank", "export")


def _alive(target: Path, holder: dict[str, Any], locks: bool = True) -> bool | None:
    """Whether a process still writes ``target``: its holder's pid on this host. When that
    cannot be told (no pid that can be read, another host's), a stage that ``locks`` its
    output holds the lock file (``engine/lock.py``) from before its first write to after its
    last and removes it on the way out: without one, nothing writes it, whatever its files
    say (a killed run whose progress.json was cut short is not "running")."""
    alive = process_alive(holder["pid"], holder["host"])
    if alive is None and locks and not lock_path(target).exists():
        return False
    return alive


def _state(done: bool, claimed: str | None, alive: bool | None, fresh: bool) -> str:
    """``claimed``: what the stage last wrote of itself (progress.json or manifest)."""
    if alive or (alive is None and fresh and claimed in (None, "running", "trained") and not done):
        return RUNNING
    if done:
        return COMPLETE
    if claimed == INTERRUPTED:
        return INTERRUPTED
    if claimed == FAILED:
        return FAILED
    return STALE


def _stage_from_argv(argv: Any) -> str | None:
    if isinstance(argv, list):
        return next((a for a in argv[1:] if isinstance(a, str) and not a.startswith("-")), None)
    return None


def _losses_from_manifest(manifest: dict[str, Any]) -> dict[str, float]:
    epochs = manifest.get("epochs") or []
    last = epochs[-1] if epochs and isinstance(epochs[-1], dict) else {}
    return (_typed(last, {"losses": _PROGRESS["losses"]}) or {}).get("losses", {})


def _common(progress: dict[str, Any] | None, state: str) -> dict[str, Any]:
    p = progress or {}
    eta = p.get("eta_seconds")
    updated = p.get("updated_unix")
    age = round(time.time() - updated, 1) if isinstance(updated, (int, float)) else None
    if state == RUNNING and isinstance(eta, (int, float)) and age is not None:
        eta = max(0.0, eta - age)  # time has passed since the stage wrote it
    elif state != RUNNING:
        eta = 0.0 if state == COMPLETE else None
    return {
        "epoch": p.get("epoch"), "epochs": p.get("epochs"), "iteration": p.get("iteration"),
        "iterations": p.get("iterations"), "losses": p.get("losses") or {}, "it_per_s": p.get("it_per_s"),
        "eta_seconds": round(eta, 1) if isinstance(eta, (int, float)) else None,
        "updated": p.get("updated"), "updated_seconds_ago": age, "pid": p.get("pid"), "host": p.get("host"),
        "command": p.get("command"), "error": p.get("error"),
    }


def _note(state: str, resume_state: Path | None) -> str | None:
    if state == INTERRUPTED:
        return "rerun the same command to resume"
    if state == STALE:
        saved = resume_state is not None and resume_state.is_file()
        return ("its process is gone (killed or crashed); rerun the same command to resume from "
                f"{resume_state.name}" if saved else "its process is gone (killed or crashed) before it saved a "
                "resume state; rerun the same command to start it again")
    if state == FAILED:
        return "see the error; fix it and rerun (a resume state, if any, is kept)"
    return None


def run_status(path: str | Path) -> dict[str, Any]:
    """The status of one run directory or file output (see the module docstring)."""
    path = Path(path)
    if path.is_dir() and not (path / "manifest.json").is_file():
        if (path / PREDICT_RECORD).is_file():
            return _predict_status(path)
        if (path / SCORES_FILE).is_file():
            return _predictions_status(path)
    if path.is_dir():
        return _dir_status(path)
    files = RunFiles.of(path, directory=False)
    if path.is_file() or files.progress.is_file() or files.log.is_file():
        return _file_status(path, files)
    raise InputError(f"{path}: not found (neither a run directory nor a stage's output file)")


def _dir_status(path: Path) -> dict[str, Any]:
    files = RunFiles.of(path, directory=True)
    manifest_path = path / "manifest.json"
    manifest = _typed(_json(manifest_path), _MANIFEST)
    progress = _progress(files.progress)
    if manifest is None and progress is None and not files.log.is_file() and not files.progress.is_file():
        raise InputError(f"{path}: not an incseg run directory (no manifest.json, progress.json or log.txt)")
    manifest = manifest or {}
    done = manifest.get("status") == "complete" and (path / "checkpoint.pt").is_file()
    holder = _holder(path, progress)
    alive = None if done else _alive(path, holder)
    newest = _newest_mtime([files.progress, files.log, manifest_path])
    fresh = newest is not None and time.time() - newest < STALE_SECONDS
    # Without a readable progress.json, how the last attempt ended is its log's last line.
    logged = _claim_from_log(files.log) if progress is None else None
    claimed = ((progress or {}).get("state") or (logged if logged in (INTERRUPTED, FAILED) else None)
               or manifest.get("status"))
    state = _state(done, claimed, alive, fresh)
    result = {"path": str(path), "kind": "run", "status": state,
              "stage": (progress or {}).get("stage") or _stage_from_argv(manifest.get("argv")),
              **_common(progress, state)}
    if holder["pid"] is not None:
        result["pid"], result["host"] = holder["pid"], holder["host"]
    if progress is None:  # a run from before progress.json (or an unreadable one): what the manifest knows
        epochs = manifest.get("epochs") or []
        ipe = manifest.get("iterations_per_epoch")
        total = (manifest.get("options") or {}).get("epochs")
        total = total if _count(total) else None
        result.update(epoch=len(epochs) or None, epochs=total, losses=_losses_from_manifest(manifest),
                      iteration=ipe * len(epochs) if ipe else None,
                      iterations=ipe * total if ipe and total is not None else None)
        if state == FAILED and result.get("error") is None:
            result["error"] = _error_from_log(files.log)
    result["outputs"] = [str(path / name) for name in RUN_FILES if (path / name).is_file()]
    if done:
        result["miou"] = _scores(_json(path / "metrics.json"))
        result["train_seconds"] = manifest.get("train_seconds")
    result["note"] = _note(state, path / "last.pt")
    return result


def _file_status(path: Path, files: RunFiles) -> dict[str, Any]:
    """A stage whose output is a file (rotations, bank): its sidecar files tell the rest."""
    progress = _progress(files.progress)
    resume = Path(progress["resume_state"]) if progress and progress.get("resume_state") else None
    holder = _holder(path, progress)
    stage = (progress or {}).get("stage") or _stage_from_log(files.log)
    alive = _alive(path, holder, locks=files.progress.is_file() or stage in LOCKING_FILE_STAGES)
    if progress is not None:  # a training stage: done once trained and written
        claimed = progress.get("state")
        done = claimed == "trained" and path.is_file()
    else:  # written atomically at its very end: there means done
        claimed = _claim_from_log(files.log)
        done = path.is_file()
    newest = _newest_mtime([files.progress, files.log])
    fresh = newest is not None and time.time() - newest < STALE_SECONDS
    state = _state(done, claimed, alive, fresh)
    outputs = [o for o in (progress or {}).get("outputs", [str(path)]) if Path(o).is_file()]
    outputs += [str(p) for p in (files.log, files.losses) if p.is_file()]
    result = {"path": str(path), "kind": "file", "status": state, "stage": stage, **_common(progress, state),
              "outputs": outputs}
    if holder["pid"] is not None:
        result["pid"], result["host"] = holder["pid"], holder["host"]
    if done and path.suffix == ".json":  # evaluate --out: its scores
        miou = _scores(_json(path))
        if miou is not None:
            result["miou"] = miou
    result["note"] = _note(state, resume)
    return result


def _predict_status(path: Path) -> dict[str, Any]:
    """A predict folder: predict.json says running, complete, interrupted or failed; the
    lock of the folder whether a process still writes it (predict keeps no progress.json)."""
    record = _json(path / PREDICT_RECORD) or {}
    claimed = record.get("status") if isinstance(record.get("status"), str) else None
    done = claimed == COMPLETE
    holder = _holder(path, None)
    alive = None if done else _alive(path, holder)
    newest = _newest_mtime([path / PREDICT_RECORD, path / "log.txt"])
    fresh = newest is not None and time.time() - newest < STALE_SECONDS
    state = _state(done, claimed, alive, fresh)
    masks = sum(1 for _ in path.glob("*.png"))
    result = {"path": str(path), "kind": "predict", "status": state, "stage": "predict",
              **_common(None, state), "images": record.get("images"), "masks": masks,
              "error": record.get("error"),
              "outputs": [str(path / name) for name in PREDICT_FILES if (path / name).is_file()]}
    if holder["pid"] is not None and not done:
        result["pid"], result["host"] = holder["pid"], holder["host"]
    # a rerun skips the masks already written
    result["note"] = "rerun the same command to continue" if state in (INTERRUPTED, STALE) else _note(state, None)
    return result


def _predictions_status(path: Path) -> dict[str, Any]:
    """An ``evaluate --save-predictions`` folder: scores.tsv is written after the last PNG."""
    return {"path": str(path), "kind": "predictions", "status": COMPLETE, "stage": "evaluate",
            **_common(None, COMPLETE), "masks": sum(1 for _ in path.glob("*.png")),
            "outputs": [str(path / SCORES_FILE)], "note": None}


def _log_lines(log: Path) -> list[str]:
    try:
        return log.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return []


def _claim_from_log(log: Path) -> str | None:
    """What the last line of a log without progress.json says of how its block ended."""
    lines = _log_lines(log)
    if not lines:
        return None
    last = lines[-1].split(" ", 2)[-1]
    if last.startswith("interrupted:"):
        return INTERRUPTED
    if last.startswith("error:"):
        return FAILED
    return "trained" if last.startswith("wrote ") else RUNNING


def _error_from_log(log: Path) -> str | None:
    """The error a log's last line ends with (``error: ...``), without the prefix."""
    lines = _log_lines(log)
    last = lines[-1].split(" ", 2)[-1] if lines else ""
    return last[len("error: "):] if last.startswith("error: ") else None


def _stage_from_log(log: Path) -> str | None:
    for line in reversed(_log_lines(log)):
        text = line.split(" ", 2)[-1]
        if text.startswith("$ incseg "):
            return _stage_from_argv(text[2:].split())
    return None


def is_sidecar(path: Path) -> bool:
    """A log, loss table or progress file of a file output (shown with that output)."""
    return any(path.name.endswith(s) for s in SIDECAR_SUFFIXES) or path.name.endswith(".last.pt")


def format_status(s: dict[str, Any]) -> str:
    """A few human lines for one status."""
    head = f"{s['path']}: {s['status']}" + (f" ({s['stage']})" if s.get("stage") else "")
    lines = [head]
    if s.get("epochs"):
        where = f"epoch {s.get('epoch')}/{s['epochs']}"
        if s.get("iterations"):
            where += f", iteration {s.get('iteration')}/{s['iterations']}"
        lines.append("  " + where)
    if s.get("masks") is not None:
        lines.append(f"  masks: {s['masks']}" + (f"/{s['images']}" if s.get("images") else ""))
    if s.get("it_per_s") or (s["status"] == RUNNING and s.get("kind") in ("run", "file")):
        rate = f"{s['it_per_s']:.2f} it/s" if s.get("it_per_s") else "rate ?"
        eta = f", ETA {duration(s.get('eta_seconds'))} (whole stage)" if s["status"] == RUNNING else ""
        lines.append(f"  {rate}{eta}")
    if s.get("losses"):
        lines.append("  losses: " + " ".join(f"{k} {v:.4f}" for k, v in s["losses"].items()
                                              if isinstance(v, (int, float))))
    if s.get("miou"):
        lines.append("  mIoU: " + " ".join(f"{k} {100 * v:.2f}" for k, v in s["miou"].items()
                                           if isinstance(v, (int, float)) and k in ("all", "old", "new")))
    if s.get("pid") and s["status"] in (RUNNING, STALE):
        age = s.get("updated_seconds_ago")
        updated = f", updated {duration(age)} ago" if age is not None else ""
        lines.append(f"  pid {s['pid']} on {s.get('host') or '?'}{updated}")
    if s.get("error"):
        lines.append(f"  error: {s['error']}")
    if s.get("outputs"):
        lines.append("  outputs: " + ", ".join(s["outputs"]))
    if s.get("note"):
        lines.append(f"  {s['note']}")
    return "\n".join(lines)


def statuses(paths: list[Path]) -> tuple[list[dict[str, Any]], list[str]]:
    """Statuses of ``paths`` (sidecar files skipped) and one warning per path that is not a run."""
    results, warnings = [], []
    for path in paths:
        if path.is_file() and is_sidecar(path):
            continue
        try:
            results.append(run_status(path))
        except InputError as err:
            warnings.append(str(err))
    return results, warnings
