"""A run directory: checkpoint.pt, manifest.json, metrics.json, and last.pt while training.

Rerunning a command decides from the manifest what to do: a complete run with the same
options and inputs is skipped, an unfinished one resumes from ``last.pt``, anything else
needs ``--force``.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import torch

from incseg_cli import __version__
from incseg_cli.errors import CorruptFileError, OutputExistsError
from incseg_cli.fileio import sha256_json, write_json

FRESH, RESUME, COMPLETE = "fresh", "resume", "complete"


def library_versions() -> dict[str, str]:
    import numpy
    import torchvision

    return {
        "incseg": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "numpy": numpy.__version__,
    }


class RunDir:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    checkpoint = property(lambda self: self.path / "checkpoint.pt")
    manifest_path = property(lambda self: self.path / "manifest.json")
    metrics_path = property(lambda self: self.path / "metrics.json")
    last = property(lambda self: self.path / "last.pt")

    def read_manifest(self) -> dict[str, Any] | None:
        if not self.manifest_path.is_file():
            return None
        try:
            return json.loads(self.manifest_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise CorruptFileError(f"{self.manifest_path}: not valid JSON; pass --force to start over") from None

    def prepare(self, fingerprint: str, force: bool) -> str:
        """Decide between a fresh start, a resume and a skip; create the directory."""
        manifest = self.read_manifest()
        if force and self.path.exists():
            for name in ("checkpoint.pt", "manifest.json", "metrics.json", "last.pt"):
                (self.path / name).unlink(missing_ok=True)
            manifest = None
        if manifest is None:
            if self.path.exists() and any(self.path.iterdir()) and not self.last.exists():
                others = sorted(p.name for p in self.path.iterdir())[:3]
                raise OutputExistsError(
                    f"{self.path}: exists and is not an incseg run ({', '.join(others)}...); "
                    "choose another --out or pass --force"
                )
            self.path.mkdir(parents=True, exist_ok=True)
            return RESUME if self.last.exists() else FRESH
        same = manifest.get("fingerprint") == fingerprint
        if not same:
            raise OutputExistsError(
                f"{self.path}: holds a run with other options or inputs "
                f"(status {manifest.get('status', '?')}); pass --force to replace it or choose another --out"
            )
        if manifest.get("status") == "complete" and self.checkpoint.is_file():
            return COMPLETE
        return RESUME if self.last.exists() else FRESH

    def start_manifest(self, command: str, options: dict[str, Any], fingerprint: str,
                       inputs: dict[str, str], extra: dict[str, Any]) -> dict[str, Any]:
        previous = self.read_manifest() or {}
        manifest = {
            "command": " ".join([os.path.basename(sys.argv[0])] + sys.argv[1:]) if command == "" else command,
            "argv": sys.argv,
            "status": "running",
            "fingerprint": fingerprint,
            "options": options,
            "inputs": inputs,
            "versions": library_versions(),
            "host": platform.node(),
            "started": previous.get("started", time.strftime("%Y-%m-%dT%H:%M:%S%z")),
            "epochs": previous.get("epochs", []),
            **extra,
        }
        write_json(self.manifest_path, manifest)
        return manifest

    def update_manifest(self, manifest: dict[str, Any], **changes: Any) -> None:
        manifest.update(changes)
        write_json(self.manifest_path, manifest)


def fingerprint(options: dict[str, Any], inputs: dict[str, str], volatile: set[str]) -> str:
    """Hash of what determines the result: options (minus volatile ones) and input hashes."""
    kept = {k: v for k, v in options.items() if k not in volatile}
    return sha256_json({"options": kept, "inputs": inputs})
