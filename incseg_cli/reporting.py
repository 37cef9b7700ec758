"""Human-readable views of metrics (rich tables for the terminal), and the one metric made
from two others (hIoU)."""

from __future__ import annotations

from typing import Any

from rich.table import Table

GROUP_ORDER = ("all", "old", "new", "background", "base", "added", "base_bg")


def harmonic_iou(old: float | None, new: float | None) -> float | None:
    """hIoU = 2·old·new / (old + new) (DKD's ``utils/metric.py``, old = background and the
    step-0 classes, new = every class added since); None before any step adds classes."""
    if old is None or new is None:
        return None
    return 2 * old * new / (old + new) if old + new > 0 else 0.0


def pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.2f}"


def protocol_text(protocol: dict[str, Any]) -> str:
    """``crop 512 px, val set seen (1,240 images)``; metrics written before ``--val-set``
    were scored on every val image."""
    size = f" {protocol['size']} px" if protocol.get("size") else ""
    images = f" ({protocol['images']:,} images)" if protocol.get("images") is not None else ""
    return f"{protocol.get('name', '?')}{size}, val set {protocol.get('val_set', 'all')}{images}"


def summary_table(metrics: dict[str, Any], title: str | None = None) -> Table:
    table = Table(title=title or f"{metrics['dataset']}/{metrics['task']} step {metrics['step']} "
                  f"({protocol_text(metrics['protocol'])})")
    table.add_column("group")
    table.add_column("classes")
    table.add_column("mIoU %", justify="right")
    for group in GROUP_ORDER:
        if group in metrics["miou"]:  # metrics of an older incseg lack base_bg
            table.add_row(group, group_classes(metrics, group), pct(metrics["miou"][group]))
    if metrics.get("hiou") is not None:
        table.add_row("hIoU", "base_bg, added", pct(metrics["hiou"]))
    return table


# Up to this many classes a group is shown by name (a dataset of one's own); beyond, by ids.
NAMED_GROUP_SIZE = 8


def _labels(text: str) -> list[int]:
    """The labels of a group's ``class_ranges`` text (``0,3-5,9``; ``none``: no label)."""
    out: list[int] = []
    for part in text.split(","):
        part = part.strip()
        if not part or part == "none":
            continue
        first, _, last = part.partition("-")
        out.extend(range(int(first), int(last or first) + 1))
    return out


def group_classes(metrics: dict[str, Any], group: str) -> str:
    """The classes of ``group`` by name when they are few, else as the id ranges."""
    text = metrics["groups"][group]
    names = {c["label"]: c["name"] for c in metrics.get("classes", [])}
    try:
        labels = _labels(text)
    except ValueError:
        return text
    if not labels or len(labels) > NAMED_GROUP_SIZE or any(label not in names for label in labels):
        return text
    return ", ".join(names[label] for label in labels)


def class_table(metrics: dict[str, Any]) -> Table:
    table = Table(title="per-class IoU")
    for col, justify in (("label", "right"), ("name", "left"), ("group", "left"), ("IoU %", "right"),
                         ("GT pixels", "right")):
        table.add_column(col, justify=justify)
    for c in metrics["classes"]:
        table.add_row(str(c["label"]), c["name"], c["group"], pct(c["iou"]), str(c["gt_pixels"]))
    return table
