"""Commands that describe what the tool knows: tasks, exit codes, version."""

from __future__ import annotations

import json

from incseg_cli.cli.app import app
from incseg_cli.cli.declared import Parsed, declared_command
from incseg_cli.cli.options import json_option
from incseg_cli.errors import EXIT_CODES
from incseg_cli.tasks import ListTasksOptions
from incseg_cli.version import __version__


# A step of at most this many classes is listed by name (VOC 15-1's steps, a dataset of
# one's own); larger ones by id range, which fits a table column.
NAMED_STEP_SIZE = 3


def _step_text(task, step: int) -> str:
    classes = [c for c in task.new_classes(step) if c != 0 or step > 0]
    if len(classes) <= NAMED_STEP_SIZE:
        text = ",".join(task.class_names[c] for c in classes)
    elif len(classes) > 1 and classes == list(range(classes[0], classes[-1] + 1)):
        text = f"{classes[0]}-{classes[-1]}"
    elif len(classes) > 8:
        text = f"{len(classes)} classes ({','.join(map(str, classes[:4]))},...)"
    else:
        text = ",".join(map(str, classes))
    return ("0+" if step == 0 else "") + text


def _split_roots(task) -> dict[str, str | None]:
    """Where the training stages find the split files of ``task`` and of its -ov form
    without --splits (None: nowhere yet, prepare-splits makes them)."""
    from incseg_cli.data.splitroots import task_splits_root
    from incseg_cli.tasks import get_task

    forms = [task] + ([get_task(task.dataset, f"{task.name}-ov{task.order_suffix}")] if task.num_steps > 1 else [])
    roots = {t.key: task_splits_root(t) for t in forms}
    return {key: str(root) if (root / forms[0].dataset / key / "task.json").is_file() else None
            for key, root in roots.items()}


def _splits_text(found: dict[str, str | None]) -> str:
    from incseg_cli.data.splitroots import shipped_splits_root

    shipped = str(shipped_splits_root())
    words = {key: "shipped" if root == shipped else root or "-" for key, root in found.items()}
    if len(set(words.values())) == 1:
        return next(iter(words.values()))
    return ", ".join(f"{'-ov' if key.endswith('-ov') else key}: {word}" for key, word in words.items())


@declared_command(app, "list-tasks", [(None, ListTasksOptions)], extra=[json_option("one JSON document")],
                  recipe=False)
def list_tasks_cmd(parsed: Parsed) -> None:
    """List the standard tasks, the classes of every step and where their split files are.

    The splits column names the root the training stages read without --splits ("shipped":
    installed with incseg; "-": none yet, run prepare-splits). Any A-B or A-B-C... name that adds up to the dataset's classes also works (e.g. voc 10-5-5); append -ov for the overlapped setting (a step's images may contain future classes), without it the split is disjoint. A dataset of your own also has the tasks its description names by class.

    **Examples**

    ```
    incseg list-tasks --dataset voc
    incseg list-tasks --data data/defects --json
    incseg list-tasks --dataset voc --orders
    incseg list-tasks --dataset voc --class-order plop-b
    ```
    """
    from rich.console import Console
    from rich.table import Table

    from incseg_cli.tasks import list_orders, list_tasks

    options = parsed.build(ListTasksOptions)
    if options.orders:
        found = list_orders(options)
        if parsed.extra["json_out"]:
            print(json.dumps(found, indent=2))
            return
        table = Table(title="class orders (--class-order NAME; also papers, random:SEED, or a file ORDER.json)")
        for col in ("dataset", "order", "classes in learning order"):
            table.add_column(col)
        for entry in found:
            table.add_row(entry["dataset"], entry["name"], ",".join(map(str, entry["classes"])))
        Console(soft_wrap=False).print(table)
        return
    tasks = list_tasks(options)
    if parsed.extra["json_out"]:
        print(json.dumps([{**t.to_json(), "splits": _split_roots(t)} for t in tasks], indent=2))
        return
    table = Table(title="tasks (step 0 includes background 0)")
    for col in ("dataset", "task", "steps", "classes per step", "splits"):
        table.add_column(col)
    for t in tasks:
        steps = " | ".join(_step_text(t, s) for s in range(t.num_steps))
        table.add_row(t.dataset, t.name + ("[-ov]" if t.num_steps > 1 else "") + t.order_suffix, str(t.num_steps), steps,
                      _splits_text(_split_roots(t)))
    Console(soft_wrap=False).print(table)


@app.command("exit-codes")
def exit_codes() -> None:
    """Print the exit codes of every command and what they mean.

    **Examples**

    ```
    incseg exit-codes
    ```
    """
    for code, meaning in sorted(EXIT_CODES.items()):
        print(f"{code}\t{meaning}")


@app.command("version")
def version() -> None:
    """Print the incseg version (also `incseg --version`).

    **Examples**

    ```
    incseg version
    ```
    """
    print(__version__)
