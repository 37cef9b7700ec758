"""The toy examples of README and docs/ run as written, on the kind of data ``make demo`` writes.

Every ```sh block that README.md or a page under docs/ marks with ``<!-- toy-example -->`` is
run in reading order (README first, then the docs pages in the order README links them), in
one fresh directory, the way a newcomer would type them after ``make demo`` (the activate
line and ``export INCSEG_SPLITS=demo/splits`` included). Only sizes change, so that all the
blocks run in seconds: the toy data is generated with fewer images, training commands get
``--epochs 1`` and extract-features ``--samples 20`` appended. Everything else (paths,
options, the order of the blocks) is the pages': renaming a path in one block and not in the
next, or a toy command that needs something no earlier block shows, fails here. A command
that an earlier page already ran (the tour of README and the notes of docs/commands.md share
some) is skipped by incseg as complete, as it would be for the reader.

The commands run in this process through ``incseg_cli.cli.main`` (a shell would spend most
of the time importing torch again for each command); the tiny interpreter below supports
what toy blocks may hold: ``incseg ...`` (with ``*`` globs and ``> file``), ``export K=V``
and ``source .venv/bin/activate``.
"""

from __future__ import annotations

import contextlib
import glob
import io
import re
import shlex
from pathlib import Path

import pytest

from incseg_cli.cli import main

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
MARK = "<!-- toy-example -->"

# Sizes only: the toy data of make demo (3,000 / 200 images) made small.
SUBSTITUTE = {"--images 3000": "--images 48", "--val-images 200": "--val-images 12"}
APPEND = {"train-base": ["--epochs", "1"], "train-step": ["--epochs", "1"], "fit-rotations": ["--epochs", "1"],
          "finetune-classifier": ["--epochs", "1"], "extract-features": ["--samples", "20"]}
# What the toy blocks must show between them, so that dropping a marker is noticed too.
COVERED = {"make-toy-data", "prepare-splits", "train-base", "train-step", "evaluate", "extract-features",
           "fit-rotations", "finetune-classifier", "inspect", "report", "predict"}


def toy_blocks(text: str) -> list[list[str]]:
    """The commands of every marked block, continuation lines joined."""
    blocks = []
    for match in re.finditer(re.escape(MARK) + r"\s*\n```(?:sh|bash)\n(.*?)```", text, re.S):
        text = match.group(1).replace("\\\n", " ")
        blocks.append([line for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")])
    return blocks


def pages() -> list[Path]:
    """README.md, then the docs pages in the order of README's "Where to go next" list (the
    reading order it suggests), then any other page."""
    readme = REPO / "README.md"
    order = [readme]
    text = readme.read_text()
    listed = text[text.index("## Where to go next"):]
    for target in re.findall(r"\]\((docs/[^)#\s]+\.md)", listed):
        if (REPO / target).is_file() and REPO / target not in order:
            order.append(REPO / target)
    return order + sorted(set((REPO / "docs").rglob("*.md")) - set(order))


def test_pages_mark_their_toy_blocks():
    blocks = []
    for page in pages():
        text = page.read_text()
        found = toy_blocks(text)
        assert len(found) == text.count(MARK), f"{page.relative_to(REPO)}: a toy-example marker is not followed by a ```sh block"
        blocks += found
    shown = {shlex.split(line, comments=True)[1] for block in blocks for line in block
             if shlex.split(line, comments=True)[:1] == ["incseg"]}
    assert COVERED <= shown, f"the toy blocks of README and docs/ no longer show {sorted(COVERED - shown)}"
    assert toy_blocks((REPO / "README.md").read_text()), "README's tour has no toy block"


def _run(line: str, monkeypatch, where: str) -> None:
    words = shlex.split(line, comments=True)
    if not words:
        return
    if words[0] == "source":
        # Makefile's venv is where the pages say to activate; here the test's own interpreter runs
        assert words[1:] == [".venv/bin/activate"], line
        assert re.search(r"^VENV\s*:?=\s*\.venv\s*$", (REPO / "Makefile").read_text(), re.M)
        return
    if words[0] == "export":
        for assignment in words[1:]:
            key, _, value = assignment.partition("=")
            monkeypatch.setenv(key, value)
        return
    assert words[0] == "incseg", f"{where}: toy blocks hold incseg, export and source lines only: {line}"
    out_file = None
    if ">" in words:
        at = words.index(">")
        out_file, words = Path(words[at + 1]), words[:at] + words[at + 2:]
    args: list[str] = []
    for word in words[1:]:
        # a shell expands a glob that matches, and passes one that matches nothing as is
        args.extend(sorted(glob.glob(word)) or [word] if any(c in word for c in "*?[") else [word])
    args += APPEND.get(args[0], [])
    stdout = io.StringIO()
    try:
        with contextlib.redirect_stdout(stdout):
            main(args)
        code = 0
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
    assert code == 0, f"{where}: toy command failed with exit {code}: {line}"
    if out_file is not None:
        out_file.write_text(stdout.getvalue())


def test_toy_blocks_run_as_written(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("INCSEG_NO_PROGRESS", "1")
    monkeypatch.delenv("INCSEG_SPLITS", raising=False)
    monkeypatch.delenv("INCSEG_DEBUG", raising=False)
    for page in pages():
        for block in toy_blocks(page.read_text()):
            for line in block:
                for old, new in SUBSTITUTE.items():
                    line = line.replace(old, new)
                _run(line, monkeypatch, str(page.relative_to(REPO)))
    # what the blocks wrote is there
    for path in ("runs/toy/step0/checkpoint.pt", "runs/toy/step1-alife-m/metrics.json", "runs/toy/bank-rotated.h5",
                 "runs/toy/joint/metrics.json", "step0.json", "results.md", "runs/toy/masks/areas.csv",
                 "runs/toy/step0-again/checkpoint.pt", "runs/toy/step1-alife-ali1/metrics.json",
                 "runs/toy/step1-mib/metrics.json"):
        assert (tmp_path / path).is_file(), path


def test_shipped_splits_on_toy_data_say_what_to_run(toy_root, tmp_path, monkeypatch, capsys):
    """The README's old mistake: the shipped VOC splits given a toy root. The error names the
    split file and the prepare-splits command for that root, before anything is written."""
    monkeypatch.setenv("INCSEG_NO_PROGRESS", "1")
    split = REPO / "incseg_cli" / "splits" / "voc" / "10-10-ov" / "train-0.txt"
    if not split.is_file():
        pytest.skip("the shipped VOC splits are not in this checkout")
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as exit_:
        main(["train-base", "--data", str(toy_root), "--task", "10-10-ov", "--preset", "toy",
              "--splits", str(REPO / "incseg_cli" / "splits"), "--out", str(out)])
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert exit_.value.code == 3 and line.startswith(f"error: {split}: names ")
    assert f"incseg prepare-splits --dataset voc --task 10-10-ov --data {toy_root}" in line
    assert not out.exists()
