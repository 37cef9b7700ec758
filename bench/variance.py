"""Seed variance on the toy data, through `incseg sweep` and `make -j2`, as a user runs a grid.

Grid: 2 methods (mib, plop) x toy 10-5-5-ov x 3 seeds, short epochs (step 0: 12, later steps:
4) on 1,000 toy images at 64 px. With --orders: mib x 10-5-5-ov x 2 class orders (the papers'
and PLOP's order b) x 2 seeds, one group over orders and seeds (variance-orders.*). `incseg sweep` writes the Makefile, `make -j 2` runs it (two
chains side by side), its last target is `incseg report` with mean ± std over the seeds and
the forgetting tables and plots. Writes bench/results/variance.json (the grid, the wall time,
the groups of the last step and per step), variance.md and variance.png (old/new/all mean ±
std per method after each step).

Usage: python bench/variance.py [--orders] [--work DIR] [--out-dir bench/results]
Budget: about 10 minutes on 2 CPU cores (the measured time is in variance.json).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from incseg_cli.fileio import atomic_path, write_json, write_text
from incseg_cli.stages.report.groups import distinct_orders, pm

RESULTS = Path(__file__).resolve().parent / "results"
GRID = {"methods": ["mib", "plop"], "task": "10-5-5-ov", "seeds": [0, 1, 2], "orders": ["papers"], "images": 1000,
        "val_images": 100, "size": 64, "base_epochs": 12, "step_epochs": 4, "jobs": 2, "preset": "toy"}
ORDERS_GRID = {**GRID, "methods": ["mib"], "seeds": [0, 1], "orders": ["papers", "plop-b"]}


def incseg(*args: Any, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "incseg_cli", *map(str, args)], env=env, text=True,
                          capture_output=True, check=True)


def plot(groups: list[dict[str, Any]], grid: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6), sharey=True)
    for ax, column in zip(axes, ("old", "new", "all")):
        for method in grid["methods"]:
            rows = sorted((g for g in groups if g["method"] == method and g["step"] > 0), key=lambda g: g["step"])
            steps = [g["step"] for g in rows]
            means = [100 * (g["miou"][column]["mean"] or 0) for g in rows]
            stds = [100 * (g["miou"][column]["std"] or 0) for g in rows]
            ax.errorbar(steps, means, yerr=stds, marker="o", capsize=4, label=method)
        runs = len(grid["seeds"]) * len(grid["orders"])
        ax.set_title(f"{column} mIoU, mean ± std over {runs} runs")
        ax.set_xlabel("step")
        ax.set_xticks([1, 2])
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("mIoU %")
    axes[0].legend()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)


def markdown(doc: dict[str, Any]) -> str:
    g = doc["grid"]
    orders = len(g["orders"]) > 1
    lines = ["# Seed and class-order variance on the toy data" if orders else "# Seed variance on the toy data", "",
             f"`python bench/variance.py{' --orders' if orders else ''}`: {' and '.join(g['methods'])} on toy "
             f"{g['task']}, seeds {', '.join(map(str, g['seeds']))}"
             f"{', class orders ' + ', '.join(g['orders']) if orders else ''}, {g['images']} images at {g['size']} px, {g['base_epochs']} epochs at "
             f"step 0 and {g['step_epochs']} per later step, through `incseg sweep` and `make -j {g['jobs']}`. "
             f"Wall time {doc['wall_seconds'] / 60:.1f} min on {doc['machine']['cpus']} CPU cores "
             "(the whole grid, report included).", "",
             "| step | method | n | orders | old | new | all |", "|---:|---|---:|---|---:|---:|---:|"]

    for grp in doc["groups"]:
        lines.append(f"| {grp['step']} | {grp['method']} | {grp['n']} | {','.join(distinct_orders(grp))} | "
                     f"{pm(grp['miou']['old'])} | {pm(grp['miou']['new'])} | {pm(grp['miou']['all'])} |")
    over = "the seeds and class orders (old/new: each run's own steps)" if orders else "the seeds"
    lines += ["", f"mIoU % mean ± sample std over {over}. Short runs on 1,000 images: the spread, not the level, "
              "is the point."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, help="Directory for the data and runs (kept). [a temporary one]")
    parser.add_argument("--out-dir", type=Path, default=RESULTS, help="Where variance.json/.md/.png go.")
    parser.add_argument("--orders", action="store_true",
                        help="The class-order grid (variance-orders.json/.md/.png) instead of the seed grid.")
    args = parser.parse_args(argv)
    grid, name = (ORDERS_GRID, "variance-orders") if args.orders else (GRID, "variance")
    work = args.work or Path(tempfile.mkdtemp(prefix="incseg-bench-variance-"))
    work.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, INCSEG_NO_PROGRESS="1")
    started = time.monotonic()
    toy = work / "toy"
    incseg("make-toy-data", "--out", toy, "--images", grid["images"], "--val-images", grid["val_images"], "--size",
           grid["size"], env=env)
    makefile = work / "sweep.mk"
    sweep = ["sweep", "--out", makefile, "--data", toy, "--task", grid["task"], "--runs", work / "runs",
             "--preset", grid["preset"], "--base-args", f"--epochs {grid['base_epochs']}",
             "--step-args", f"--epochs {grid['step_epochs']}", "--jobs", grid["jobs"]]
    for method in grid["methods"]:
        sweep += ["--method", method]
    for seed in grid["seeds"]:
        sweep += ["--seed", seed]
    for order in grid["orders"]:
        sweep += ["--class-order", order]
    incseg(*sweep, env=env)
    make = ["make", "-j", str(grid["jobs"]), "-f", str(makefile), f"INCSEG={shlex.quote(sys.executable)} -m incseg_cli"]
    subprocess.run(make, env=env, check=True, capture_output=True, text=True)
    wall = time.monotonic() - started
    report = json.loads((work / "runs" / "report" / "report.json").read_text())
    groups = [g for g in report["groups"] if g["step"] > 0]
    doc = {
        "benchmark": f"{'seed and class-order' if args.orders else 'seed'} variance through incseg sweep and make "
                     "(bench/variance.py)",
        "grid": grid,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "wall_seconds": round(wall, 1),
        "groups": [{k: g[k] for k in ("task", "step", "method", "n", "seeds", "orders", "miou")} for g in groups],
        "makefile_runs": sum(1 for line in makefile.read_text().splitlines() if line.startswith("\t$(INCSEG) train-")),
    }
    out = args.out_dir
    write_json(out / f"{name}.json", doc)
    write_text(out / f"{name}.md", markdown(doc))
    plot(groups, grid, out / f"{name}.png")
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)
    print(markdown(doc))
    print(f"[bench] wrote {out / name}.json, .md, .png in {wall / 60:.1f} min", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
