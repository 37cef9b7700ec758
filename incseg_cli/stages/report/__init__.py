"""report: tables and plots from finished run directories, given in any order.

Each run directory contributes its ``metrics.json`` (scores) and ``manifest.json`` (train
time, and the input checkpoints that link a step to the run it continued from). Runs are
labelled by method and ordered by task and step; linked runs form chains (step 0 → step 1 →
...), one line per chain in the per-step plot.

A joint-training run (the ``offline`` task) has no old/new split of its own: it is scored in
the class groups of every incremental task of the same dataset in the report, at that task's
latest step present, from its per-class IoU. That makes it the ceiling row of the comparison.

Paths that are not finished runs (a feature bank, a rotations file, a stray file, a directory
without a run, an unfinished run) are skipped with one warning each, so that ``report
runs/toy/*`` works; it is an error only when nothing is left to report. For runs on VOC, ADE
or COCO (not toy data), the papers' published numbers of the same method, task, setting and
step (``published.py``) are listed beside the run's, computed over the same classes.
"""


from incseg_cli.stages.report.plots import write_plots
from incseg_cli.stages.report.runs import Report, Run, build_report, load_run
from incseg_cli.stages.report.tables import markdown_table, published_table, rich_table

__all__ = ["Report", "Run", "build_report", "load_run", "markdown_table", "published_table", "rich_table", "write_plots"]
