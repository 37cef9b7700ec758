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

Runs that differ only by seed or class order are grouped as mean ± std (``groups.py``), and
every chain of three or more steps gets its class × step table and plot (what it forgets, and
when).
"""


from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from incseg_cli.config import option
from incseg_cli.data.transforms import EVAL_PROTOCOLS
from incseg_cli.errors import UsageError
from incseg_cli.fileio import check_writable
from incseg_cli.limits import Limit, NON_NEGATIVE
from incseg_cli.stages.report.groups import forgetting, seed_groups, write_tables
from incseg_cli.stages.report.plots import write_plots
from incseg_cli.stages.report.runs import Report, Run, build_report, load_run
from incseg_cli.stages.report.tables import groups_table, markdown_table, published_table, rich_table

__all__ = ["ReportOptions", "Report", "Run", "build_report", "check_report_options", "load_run", "markdown_table",
           "published_table", "rich_table", "write_plots", "seed_groups", "forgetting", "write_tables",
           "groups_table"]


@dataclass(kw_only=True)
class ReportOptions:
    """What ``incseg report`` reads and draws (the command adds how the table is printed)."""

    runs: list[Path] = option(required=True, argument=True, metavar="RUN_DIR",
                              help="Run directories (train-base, train-step, finetune-classifier outputs), in any order.")
    plots: Optional[Path] = option(metavar="DIR",
                                   help="Write PNG plots into DIR: miou-per-step.png, and per task "
                                        "groups-TASK-stepN.png (old/new/all bars) and classes-TASK-stepN.png "
                                        "(per-class IoU bars). [off]")
    classes_step: Optional[int] = option(limit=NON_NEGATIVE, metavar="N", help="Step of the old/new/all and per-class plots. "
                                                           "[the latest step of each task in the report]")
    examples: Optional[int] = option(metavar="K", limit=Limit(1),
                                     help="With --plots and --data: also draw examples.png, K val images with their "
                                          "ground truth and each run's prediction (class colours, a legend of class "
                                          "names, each image's mIoU). [off]")
    data: Optional[Path] = option(help="Dataset root of the runs, for --examples.")
    eval_protocol: Optional[str] = option(choices=EVAL_PROTOCOLS,
                                          help="Protocol of the --examples pictures (crop or full). [the first run's]")
    eval_size: Optional[int] = option(help="Crop size of the --examples pictures. [the first run's]")
    tables: Optional[Path] = option(metavar="DIR",
                                    help="Write CSV tables into DIR: groups.csv (mean and sample std of the runs that "
                                         "differ only by seed or class order) and "
                                         "forgetting-DATASET-TASK-METHOD.csv per chain "
                                         "(every class's IoU after every step). [off]")
    published: bool = option(True, flag="--published/--no-published",
                             help="List the papers' published numbers of the same method, task, setting and step "
                                  "beside VOC, ADE and COCO runs (not toy data).")


def check_report_options(options: ReportOptions) -> None:
    """The options that only make sense together, refused before any run is read."""
    if options.classes_step is not None and options.plots is None:
        raise UsageError("--classes-step chooses the step of the plots; add --plots DIR")
    if options.examples is not None and (options.plots is None or options.data is None):
        raise UsageError("--examples draws into the --plots directory from the --data root; add --plots DIR and "
                         "--data ROOT")
    if options.examples is None and (options.data is not None or options.eval_protocol is not None
                                     or options.eval_size is not None):
        raise UsageError("--data, --eval-protocol and --eval-size are for --examples K; add it")
    if options.plots is not None:
        check_writable(options.plots, "--plots", directory=True)
    if options.tables is not None:
        check_writable(options.tables, "--tables", directory=True)
