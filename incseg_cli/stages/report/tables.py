"""A report as text: the rich table of the terminal, the markdown table of ``--markdown``, and
the papers' published numbers beside the runs'."""

from __future__ import annotations

from typing import Any

from incseg_cli import published
from incseg_cli.reporting import pct

from incseg_cli.stages.report.groups import GROUP_COLUMNS, distinct_orders, pm, seed_groups
from incseg_cli.stages.report.runs import CEILING, COLUMNS, Report, Row

# -- text -----------------------------------------------------------------------------------------
TITLE = ("mIoU % per step and method (old: classes of earlier steps; new: this step's; all: every seen class + "
         "background; memory: what its replay memory holds on disk, images or ALIFE-M's feature bank)")


def _seconds(value: float | None) -> str:
    return "–" if value is None else f"{value:.0f}"


def memory_text(nbytes: int | None) -> str:
    """``1.2 MB``: a replay memory's size (``–`` for none)."""
    if nbytes is None:
        return "–"
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if nbytes >= size:
            return f"{nbytes / size:.1f} {unit}"
    return f"{nbytes} B"


def _val_set(row: Row) -> str:
    images = row.run.val_images
    return row.run.val_set if images is None else f"{row.run.val_set} ({images:,})"


def rich_table(report: Report):
    from rich.table import Table

    table = Table(title=TITLE)
    for col, justify in (("task", "left"), ("step", "right"), ("method", "left"), ("old", "right"),
                         ("new", "right"), ("all", "right"), ("memory", "right"), ("val set", "left"),
                         ("train s", "right"), ("run", "left")):
        table.add_column(col, justify=justify)
    for r in report.rows:
        table.add_row(r.task, str(r.step), r.label, *(pct(r.miou.get(c)) for c in COLUMNS),
                      memory_text(r.run.memory_bytes), _val_set(r), _seconds(r.seconds), str(r.run.path))
    table.caption = _joint_note(report)
    return table


def _joint_note(report: Report) -> str | None:
    scored = sorted({r.scored_as for r in report.rows if r.scored_as})
    if not scored:
        return None
    return f"{CEILING}: trained on every class at once, scored in the class groups of {', '.join(scored)}"


def markdown_table(report: Report) -> str:
    lines = [f"_{TITLE}_", "", "| task | step | method | old | new | all | memory | val set | train s |",
             "|---|---:|---|---:|---:|---:|---:|---|---:|"]
    for r in report.rows:
        cells = [r.task, str(r.step), r.label, *(pct(r.miou.get(c)) for c in COLUMNS),
                 memory_text(r.run.memory_bytes), _val_set(r), _seconds(r.seconds)]
        lines.append("| " + " | ".join(cells) + " |")
    note = _joint_note(report)
    text = "\n".join(lines + (["", f"_{note}_"] if note else [])) + "\n"
    groups = groups_markdown(seed_groups(report))
    if groups:
        text += "\n" + groups
    table = published_rows(report)
    if table:
        text += (f"\n_{PUBLISHED_TITLE}_\n\n| " + " | ".join(PUBLISHED_HEAD)
                 + " |\n|---|---:|---|---|---|---:|---:|---:|---|\n")
        text += "".join("| " + " | ".join(cells) + " |\n" for cells in table)
    return text


# -- the papers' numbers ----------------------------------------------------------------------------
PUBLISHED_TITLE = ("Published results of the same method, task, setting and step: run / paper / run - paper, "
                   "mIoU % over the paper's classes")


def _paper(value: float) -> str:
    """As printed in the paper: one decimal, or two where the source has two."""
    return f"{value:.1f}" if round(value, 1) == value else f"{value:.2f}"


def _published_cell(column: dict[str, Any] | None) -> str:
    if column is None:
        return "–"
    if column["run"] is None:
        return f"– / {_paper(column['paper'])}"
    return f"{column['run']:.1f} / {_paper(column['paper'])} / {column['diff']:+.1f}"


PUBLISHED_HEAD = ("task", "step", "method", "published row", "classes (old / new / all)", "old", "new", "all",
                  "source")


def published_rows(report: Report) -> list[list[str]]:
    """One line per (run row, published row): the cells of ``PUBLISHED_HEAD``."""
    lines = []
    for r in report.rows:
        for entry in r.published:
            name = entry["name"] + (f", {entry['variant']}" if entry.get("variant") else "")
            if entry["val_set"] != r.run.val_set:
                name += f" (val set {entry['val_set']})"
            columns = [entry["columns"].get(c) for c in published.COMPARED]
            classes = " / ".join(c["classes"] if c else "–" for c in columns)
            lines.append([r.task, str(r.step), r.label, name, classes, *(_published_cell(c) for c in columns),
                          entry["cite"]])
    return lines


def published_table(report: Report):
    """The rich table of ``published_rows``, or None when no run has a published row."""
    from rich.table import Table

    rows = published_rows(report)
    if not rows:
        return None
    table = Table(title=PUBLISHED_TITLE)
    for col in PUBLISHED_HEAD:
        table.add_column(col, justify="right" if col in ("step", "old", "new", "all") else "left")
    for cells in rows:
        table.add_row(*cells)
    return table


# -- repeats ------------------------------------------------------------------------------------------
GROUPS_TITLE = ("Runs of one recipe that differ only by seed or class order: mIoU % mean ± sample std over n runs"
                "; paper: the published result of the papers' order")


def _orders_text(g: dict[str, Any]) -> str:
    return ",".join(distinct_orders(g))


def _paper_text(g: dict[str, Any]) -> str:
    """The papers' rows of a group: ``1-15 74.2, 16-20 41.7 (WILSON)``, ``–`` when none."""
    return "; ".join(", ".join(f"{c['classes']} {c['paper']:.1f}" for c in p["columns"].values()) + f" ({p['cite']})"
                     for p in g["published"]) or "–"


def groups_table(groups: list[dict[str, Any]]):
    """The rich table of ``groups.seed_groups``, or None when no recipe was run twice."""
    from rich.table import Table

    if not groups:
        return None
    table = Table(title=GROUPS_TITLE)
    for col in ("task", "step", "method", "n", "seeds", "orders", *GROUP_COLUMNS, "paper"):
        table.add_column("hIoU" if col == "hiou" else col,
                         justify="left" if col in ("task", "method", "seeds", "orders", "paper") else "right")
    for g in groups:
        table.add_row(g["task"], str(g["step"]), g["method"], str(g["n"]), ",".join(map(str, g["seeds"])),
                      _orders_text(g), *(pm(g["miou"][c]) for c in GROUP_COLUMNS), _paper_text(g))
    return table


def groups_markdown(groups: list[dict[str, Any]]) -> str:
    if not groups:
        return ""
    lines = [f"_{GROUPS_TITLE}_", "", "| task | step | method | n | orders | old | new | all | hIoU | paper |",
             "|---|---:|---|---:|---|---:|---:|---:|---:|---|"]
    lines += [f"| {g['task']} | {g['step']} | {g['method']} | {g['n']} | {_orders_text(g)} | "
              + " | ".join(pm(g["miou"][c]) for c in GROUP_COLUMNS) + f" | {_paper_text(g)} |" for g in groups]
    return "\n".join(lines) + "\n"
