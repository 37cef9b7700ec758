"""Helpers the tests share (plain functions and constants; the fixtures are in conftest.py):
paths, synthetic VOC roots, the toy training arguments, subprocess waits, a tmpfs, recipes and
banks as the stages build them, a WILSON step, the help texts, and command chains run in one
process."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest
from PIL import Image

from incseg_cli import presets
from incseg_cli.data.toy import voc_palette

if TYPE_CHECKING:
    from incseg_cli.bank import FeatureBank
    from incseg_cli.tasks import Task

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(__file__).resolve().parents[2] / "shared"


def save_label_png(path: Path, mask: np.ndarray, palette: bool = True) -> None:
    """Save a uint8 label map as a palette PNG (VOC style) or a grayscale one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    mask = np.ascontiguousarray(mask, dtype=np.uint8)
    if palette:
        img = Image.frombytes("P", (mask.shape[1], mask.shape[0]), mask.tobytes())
        img.putpalette(voc_palette())
    else:
        img = Image.fromarray(mask)
    img.save(path)


def label_colour(label: int) -> tuple[int, int, int]:
    """A distinct RGB colour per label, so an image's colour encodes its label."""
    return ((label * 53) % 256, (label * 101 + 40) % 256, (label * 197 + 80) % 256)


def synth_mask(index: int, height: int, width: int, classes: list[int], border: bool = True) -> np.ndarray:
    """Background 0 with one rectangle per class (and a 255 band around each, like VOC)."""
    mask = np.zeros((height, width), dtype=np.uint8)
    n = len(classes)
    for k, c in enumerate(classes):
        x0 = 2 + k * (width - 4) // max(n, 1)
        x1 = 2 + (k + 1) * (width - 4) // max(n, 1) - 2
        y0, y1 = 2 + (index % 3), height - 3
        if border:
            mask[y0 - 1 : y1 + 1, max(x0 - 1, 0) : x1 + 1] = 255
        mask[y0:y1, x0:x1] = c
    return mask


def synth_image(mask: np.ndarray) -> Image.Image:
    rgb = np.zeros(mask.shape + (3,), dtype=np.uint8)
    for value in np.unique(mask):
        rgb[mask == value] = label_colour(int(value))
    return Image.fromarray(rgb)


def error_line(stderr: str, only: bool = False) -> str:
    """The ``error: `` line that ends a failed command's stderr, no traceback anywhere
    (``only``: and no other line)."""
    assert "Traceback" not in stderr, stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    if only:
        assert len(lines) == 1, stderr
    assert lines and lines[-1].startswith("error: "), stderr
    return lines[-1]


def default_classes(index: int, num_classes: int = 20) -> list[int]:
    """One or two classes per image, spread over 1..num_classes deterministically."""
    first = 1 + (index * 7) % num_classes
    if index % 3 == 0:
        return [first]
    second = 1 + (index * 11 + 5) % num_classes
    return sorted({first, second})


def write_table(path: Path, table: dict[str, list[int]]) -> Path:
    lines = ["image_id\tclasses"] + [f"{k}\t{','.join(map(str, v))}" for k, v in table.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def build_voc_root(
    root: Path,
    n_train: int = 12,
    n_val: int = 4,
    size: tuple[int, int] = (40, 30),
    list_style: str = "imagesets",
    mask_dir: str = "SegmentationClassAug",
    classes_of=default_classes,
) -> dict:
    """A tiny VOC root. Returns {"root", "train", "val", "classes": {id: [labels]}}.

    list_style: "imagesets" (ImageSets/Segmentation/<name>.txt, one id a line), "list" (ALIFE
    list/<name>.txt, id + extra tokens) or "splits" (WILSON/MiB "/JPEGImages/x.jpg
    /SegmentationClassAug/x.png" lines).
    """
    width, height = size
    (root / "JPEGImages").mkdir(parents=True, exist_ok=True)
    (root / mask_dir).mkdir(parents=True, exist_ok=True)
    info: dict = {"root": root, "train": [], "val": [], "classes": {}}
    for split, n, offset in (("train", n_train, 0), ("val", n_val, 1000)):
        for k in range(n):
            index = offset + k
            image_id = f"2000_{index:06d}"
            classes = classes_of(index)
            mask = synth_mask(index, height, width, classes)
            synth_image(mask).save(root / "JPEGImages" / f"{image_id}.jpg", quality=95)
            save_label_png(root / mask_dir / f"{image_id}.png", mask)
            info[split].append(image_id)
            info["classes"][image_id] = sorted(set(np.unique(mask).tolist()) - {255})
    names = {"train": "train_aug", "val": "val"}
    for split in ("train", "val"):
        ids = info[split]
        if list_style == "imagesets":
            path, lines = root / "ImageSets" / "Segmentation" / f"{names[split]}.txt", ids
        elif list_style == "list":
            path, lines = root / "list" / f"{names[split]}.txt", [f"{i} {i}" for i in ids]
        elif list_style == "splits":
            path = root / "splits" / f"{names[split]}.txt"
            lines = [f"/JPEGImages/{i}.jpg /{mask_dir}/{i}.png" for i in ids]
        else:
            raise ValueError(list_style)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("\n".join(lines) + "\n")
    return info


TOY_TRAIN_ARGS = ["--preset", "toy", "--batch-size", "8", "--crop-size", "32", "--eval-size", "32"]


def start_train_base(toy_root: Path, toy_env: dict, out: Path, epochs: int) -> subprocess.Popen:
    """A toy train-base in the background (stdout and stderr piped), for tests that stop it."""
    env = dict(os.environ, INCSEG_NO_PROGRESS="1", **toy_env)
    return subprocess.Popen(
        [sys.executable, "-m", "incseg_cli", "train-base", "--data", str(toy_root), "--task", "10-10-ov",
         *TOY_TRAIN_ARGS, "--epochs", str(epochs), "--out", str(out)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def interrupt_cli(args: list, env: dict, at: str) -> None:
    """``incseg ARGS`` stopped with SIGINT as soon as a stderr line contains ``at``; it must end
    with exit 130 (its stderr in the failure message otherwise)."""
    full = dict(os.environ, INCSEG_NO_PROGRESS="1", **env)
    full.pop("INCSEG_DEBUG", None)
    proc = subprocess.Popen([sys.executable, "-m", "incseg_cli", *map(str, args)], stderr=subprocess.PIPE,
                            stdout=subprocess.DEVNULL, text=True, env=full)
    seen = []
    for line in proc.stderr:
        seen.append(line)
        if at in line:
            proc.send_signal(signal.SIGINT)
            break
    rest = proc.stderr.read()
    proc.wait(timeout=120)
    assert proc.returncode == 130, "".join(seen) + rest


def wait_for_file(path: Path, proc: subprocess.Popen, timeout: float = 120) -> None:
    """Until ``path`` exists; fails if ``proc`` exits first or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, proc.communicate()[1]
        assert time.monotonic() < deadline
        time.sleep(0.05)


CUDA_ENV = {"INCSEG_EMULATE_CUDA": "1"}  # a subprocess sees one emulated sm90 GPU


@contextlib.contextmanager
def tmpfs(path: Path, size: str, read_only: bool = False):
    """A small tmpfs at ``path``, for a real full or read-only file system (root and mount
    permission needed, else the test skips; simulated tests cover the same errors)."""
    path.mkdir(parents=True, exist_ok=True)
    options = f"size={size}" + (",ro" if read_only else "")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({r.stderr.decode().strip()[:80]}); see the simulated tests")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


# -- recipes and banks as the stages build them, for tests that read no file ---------------------
def preset_values(preset: str, given: dict[str, Any], table: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """``given`` options, with each ``None`` replaced by the preset's value."""
    table = presets.BASE_PRESETS if table is None else table
    values = table[preset]
    out = dict(given)
    for key, value in values.items():
        if out.get(key) is None:
            out[key] = value
    return out


def resolved_options(method: str, task: "Task", step: int, **given: Any) -> dict[str, Any]:
    """What a step of ``method`` would run with, reading no file: the resolved options of
    ``given`` (option names, unset ones left out) as the manifest records them."""
    # here, not at the top: conftest imports this module, and most tests need no training stage
    from incseg_cli import config
    from incseg_cli.stages.train_step import StepRun, method_class, method_options_of, resolve_options

    cls = method_class(method)
    run = config.build(StepRun, {"prev": ".", "data": ".", **given, "method": method})
    own = {f.name for f in config.declared(cls.Options)}
    options = method_options_of(method, **{k: v for k, v in given.items() if k in own})
    run, options = resolve_options(cls, run, options, task, step)
    return config.flat(run, options)


def write_bank(path: str | os.PathLike, bank: "FeatureBank") -> None:
    """``bank`` written again through ``BankWriter`` (the tests' way to copy and alter a bank)."""
    from incseg_cli.bank import BankWriter

    attrs = {k: v for k, v in bank.attrs.items() if k not in ("format", "version", "classes")}
    with BankWriter(path, attrs) as writer:
        for e in bank.classes.values():
            writer.add(e.label, e.features, e.name, e.source, e.step)


def wilson_step(labels: Any, pseudo_epochs: int = 1) -> tuple[Any, Any, Any]:
    """A WILSON step on the tiny backbone, seeded: the frozen old model (11 classes), the new
    model (the old weights and 10 random heads) and the method with its localizer, learning
    from the image-level ``labels`` ([images, 20]). Returns (method, model, old model)."""
    import torch

    from incseg_cli.methods.wilson import Wilson
    from incseg_cli.models.deeplab import ModelSpec, build_model
    from incseg_cli.models.localizer import Localizer
    from incseg_cli.models.util import freeze

    torch.manual_seed(0)
    spec = ModelSpec.for_backbone("tiny", [11])
    old = freeze(build_model(spec))
    model = build_model(ModelSpec.from_dict(spec.to_dict()))
    model.load_state_dict(old.state_dict())
    model.add_step(10, init="random")
    loc = Localizer(model.body_channels, model.num_classes, spec.head_channels)
    method = Wilson(old_model=old, localizer=loc, labels=labels, n_old=11, alpha=0.5, pseudo_epochs=pseudo_epochs,
                    affinity=True, lambda_enc=1.0, lr_head=1e-2, lr_localizer=1e-2)
    return method, model, old


def help_texts() -> dict[str, str]:
    """Every help text a user can reach: the application's, each command's and each option's."""
    import typer

    from incseg_cli.cli import app

    group = typer.main.get_command(app)
    texts = {"incseg": group.help or ""}
    for name, command in group.commands.items():
        texts[name] = command.help or ""
        for p in command.params:
            texts[f"{name} {'/'.join(getattr(p, 'opts', [p.name]))}"] = getattr(p, "help", None) or ""
    return texts


# Runs the steps of argv[1] (JSON: ["cli", argv] or ["python", code]) in turn in this one
# process, with each step's stdout and stderr (fd 1 and 2) in N.out and N.err under argv[2] and
# its exit code in codes.json; a failed step ends the run.
_STEPS_DRIVER = r'''
import json, os, sys, traceback
from pathlib import Path
from incseg_cli.cli import main

steps, where = json.loads(Path(sys.argv[1]).read_text()), Path(sys.argv[2])
codes, saved = [], (os.dup(1), os.dup(2))
for n, (kind, what) in enumerate(steps):
    sys.stdout.flush(); sys.stderr.flush()
    with open(where / f"{n}.out", "w") as out, open(where / f"{n}.err", "w") as err:
        os.dup2(out.fileno(), 1); os.dup2(err.fileno(), 2)
        try:
            if kind == "cli":
                sys.argv = ["incseg", *what]  # what the outputs record as their command, as from a shell
                main(what)
            else:
                exec(what, {})
            code = 0
        except SystemExit as stop:
            code = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
        except Exception:
            traceback.print_exc()
            code = 1
        finally:
            sys.stdout.flush(); sys.stderr.flush()
            os.dup2(saved[0], 1); os.dup2(saved[1], 2)
    codes.append(code)
    (where / "codes.json").write_text(json.dumps(codes))
    if code != 0:
        break
'''


def commands_in_one_process(steps: list, where: Path, env: dict, cwd: Path | None = None,
                            timeout: float = 300) -> list[subprocess.CompletedProcess]:
    """``steps`` (["cli", argv] or ["python", code]) run in turn in one subprocess, as a shell script
    runs the commands but importing torch once; one CompletedProcess each, up to the first that failed."""
    where.mkdir()
    (where / "steps.json").write_text(json.dumps([[kind, what if kind == "python" else [str(a) for a in what]]
                                                   for kind, what in steps]))
    full = {**os.environ, "INCSEG_NO_PROGRESS": "1", **env}
    full.pop("INCSEG_DEBUG", None)
    driver = subprocess.run([sys.executable, "-c", _STEPS_DRIVER, str(where / "steps.json"), str(where)],
                            capture_output=True, text=True, env=full, timeout=timeout, cwd=cwd)
    assert driver.returncode == 0, driver.stderr[-3000:]
    codes = json.loads((where / "codes.json").read_text())
    return [subprocess.CompletedProcess(steps[n][1], code, (where / f"{n}.out").read_text(),
                                        (where / f"{n}.err").read_text()) for n, code in enumerate(codes)]


# A stand-in for incseg: logs its arguments; the command named by FAKE_BLOCK runs until a
# SIGTERM, which it answers as incseg does (exit 130).
FAKE_INCSEG = """#!/bin/bash
echo "incseg $*" >> "$FAKE_LOG"
if [[ -n ${FAKE_BLOCK:-} && $1 == "$FAKE_BLOCK" ]]; then
    trap 'echo "TERM $1" >> "$FAKE_LOG"; exit 130' TERM
    touch "$FAKE_LOG.blocked"
    while :; do sleep 0.02; done
fi
"""
