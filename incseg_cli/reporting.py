"""Human-readable views of metrics: rich tables for the terminal."""

from __future__ import annotations

from typing import Any

from rich.table import Table

GROUP_ORDER = ("all", "old", "new", "background", "base", "added")


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
        table.add_row(group, metrics["groups"][group], pct(metrics["miou"][group]))
    return table


def class_table(metrics: dict[str, Any]) -> Table:
    table = Table(title="per-class IoU")
    for col, justify in (("label", "right"), ("name", "left"), ("group", "left"), ("IoU %", "right"),
                         ("GT pixels", "right")):
        table.add_column(col, justify=justify)
    for c in metrics["classes"]:
        table.add_row(str(c["label"]), c["name"], c["group"], pct(c["iou"]), str(c["gt_pixels"]))
    return table
