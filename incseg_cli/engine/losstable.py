"""losses.csv: one row per training iteration, continued across resumes.

Columns: ``iteration`` (global, from 1), ``epoch`` (from 1), ``lr_<group>`` per parameter
group (its name, e.g. ``lr_model``, else its position), each named loss, ``total``. Rows
are appended and fsynced whenever the loop reads its losses on the host. ``last.pt`` is the
source of truth, so a resumed run first drops the rows past the iteration it restored (a
killed run may have logged a few more) and then writes them again: no iteration appears
twice, and the rows of an epoch cut by an interruption are all there to average.
"""

from __future__ import annotations

import csv
import io
import math
import os
from pathlib import Path
from typing import Any

from incseg_cli.fileio import write_text

KEYS = ("iteration", "epoch")


def _number(text: str) -> float | int:
    value = float(text)  # "nan" and "inf" read back as themselves
    return int(value) if value.is_integer() and "." not in text and "e" not in text.lower() else value


def _cell(value: Any) -> str:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return repr(value) if isinstance(value, float) else str(value)


def read_losses(path: str | Path) -> tuple[list[str], list[dict[str, Any]]]:
    """(columns, rows) of a losses.csv; rows as numbers (a cell left empty is absent). A
    line cut short by a crash is skipped. A missing file gives no rows."""
    path = Path(path)
    if not path.is_file():
        return [], []
    lines = path.read_text(encoding="utf-8").splitlines()
    if not lines:
        return [], []
    columns = next(csv.reader([lines[0]]))
    rows = []
    for fields in csv.reader(lines[1:]):
        if len(fields) != len(columns):
            continue
        try:
            row = {c: _number(v) for c, v in zip(columns, fields) if v != ""}
        except ValueError:
            continue
        if all(k in row for k in KEYS):
            rows.append(row)
    return columns, rows


def split_row(row: dict[str, Any]) -> tuple[list[float], dict[str, float]]:
    """(learning rates, named losses with total) of one row."""
    lrs = [v for k, v in row.items() if k.startswith("lr_")]
    return lrs, {k: v for k, v in row.items() if k not in KEYS and not k.startswith("lr_")}


def _render(columns: list[str], rows: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([_cell(row[c]) if c in row else "" for c in columns])
    return buf.getvalue()


class LossTable:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.columns: list[str] = []

    def open(self, iteration: int) -> list[dict[str, Any]]:
        """Keep the rows up to ``iteration`` (the one ``last.pt`` restored, 0 for a fresh
        start), rewritten atomically, and return them."""
        columns, rows = read_losses(self.path)
        kept = [r for r in rows if r["iteration"] <= iteration]
        self.columns = columns if kept else []
        if self.path.exists():
            write_text(self.path, _render(self.columns, kept) if kept else "")
        return kept

    def append(self, rows: list[dict[str, Any]]) -> None:
        """Append ``rows`` and make them durable (flush + fsync). A loss name the header
        lacks (a method that adds a term later) rewrites the file with the wider header."""
        if not rows:
            return
        wanted = list(self.columns)
        for row in rows:
            wanted += [k for k in row if k not in wanted]
        if wanted != self.columns:
            _, old = read_losses(self.path) if self.columns else ([], [])
            write_text(self.path, _render(wanted, old))
            self.columns = wanted
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(_render(self.columns, rows).split("\n", 1)[1])
            fh.flush()
            os.fsync(fh.fileno())
