"""Fault probes of issue 19, replayed against an incseg source tree and classified.

Each probe builds one bad input or fault of the issue (a half JPEG in a predict folder, an
export onto another run's checkpoint, a flipped bit in a checkpoint's header, a link loop,
another method's option in a --config manifest...) and runs the ``incseg`` commands of the
issue on it, each in its own subprocess (``python -m incseg_cli`` with PYTHONPATH=SRC, its
own process group, a timeout after which the whole group is killed). The outcome of a probe
is exactly one of:

  clean       what the issue asks for: the expected exit code, one ``error:`` line last (or
              the expected warning / files), no traceback, within the timeout
  hang        a command still ran at its timeout, or left a process of its group behind
  traceback   a Python traceback (or a loader worker's late complaint) on stderr
  exit70      incseg's internal-error exit
  abort       killed by a signal, or an exit above 128 other than 130
  silent      exit 0 (or no warning) where an error or a warning is expected, or debris left
  data-lost   a file that must survive is gone or changed
  wrong-exit  an error, but not the one expected (another exit code, no single error line)
  probe-error the probe itself failed (its message is recorded)

The same probe list runs against the code before the fixes and after::

    git worktree add /tmp/probes-old c2a1702          # the commit before issue 19's fixes
    OMP_NUM_THREADS=1 python bench/probes.py --src /tmp/probes-old --work /tmp/probes/old \\
        --out /tmp/probes-before.json
    OMP_NUM_THREADS=1 python bench/probes.py --work /tmp/probes/new --out bench/results/probes.json
    git worktree remove --force /tmp/probes-old

The shared inputs (toy data and its splits, a step-0 run, an ALIFE step run with
``--lambda-ali 2``) are built once per invocation under ``--work``; each probe gets its own
folder there. ``--repeat`` runs the loader-worker probes (whose failures were races) several
times; their outcome is the worst one seen. The whole list takes a few minutes on a CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
import traceback
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
OUTCOMES = ["clean", "hang", "traceback", "exit70", "abort", "silent", "data-lost", "wrong-exit", "probe-error"]
# worst first: the outcome of a repeated probe is the worst of its runs
SEVERITY = ["probe-error", "hang", "abort", "traceback", "exit70", "data-lost", "silent", "wrong-exit", "clean"]
LATE = ("Traceback", "Exception in thread", "Exception ignored", "semaphore", "Bad file descriptor",
        "killed by signal", "exited unexpectedly")
TOY_TRAIN_ARGS = ["--preset", "toy", "--batch-size", "8", "--crop-size", "32", "--eval-size", "32"]
TASK = "10-10-ov"


# -- running a command ----------------------------------------------------------------------------
@dataclass
class Ran:
    command: str
    code: int | None  # None: killed at the timeout
    seconds: float
    stdout: str
    stderr: str
    hung: bool = False
    leftover: bool = False  # a process of its group outlived it
    work: str = ""  # the work folder, left out of what is searched for words (its names hold some)

    @property
    def last_line(self) -> str:
        lines = [line for line in self.stderr.splitlines() if line.strip()]
        return lines[-1].strip() if lines else ""

    def says(self, line: str, words: str) -> bool:
        return words in (line.replace(self.work, "<work>") if self.work else line)


def group_members(pgid: int) -> list[int]:
    """Live (not zombie) processes of a process group, from /proc."""
    members = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()  # state, ppid, pgrp, ...
        if int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            members.append(int(entry.name))
    return members


def kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass


class Context:
    """What every probe shares: the source tree, the work folder, the fixtures, the env."""

    def __init__(self, src: Path, work: Path, timeout: float, repeat: int) -> None:
        self.src, self.work, self.timeout, self.repeat = src, work, timeout, repeat
        self.env = dict(os.environ, PYTHONPATH=str(src), INCSEG_NO_PROGRESS="1",
                        INCSEG_SPLITS=str(work / "splits"), INCSEG_CACHE_DIR=str(work / "cache"))
        self.env.setdefault("OMP_NUM_THREADS", "1")
        self.env.pop("INCSEG_DEBUG", None)
        self.toy = work / "toy"
        self.step0 = work / "runs" / "step0"
        self.alife = work / "runs" / "step1-alife"
        self.logs = work / "logs"
        self.count = 0

    def argv(self, args) -> list[str]:
        return [sys.executable, "-m", "incseg_cli", *map(str, args)]

    def incseg(self, args, cwd: Path, timeout: float | None = None, env: dict | None = None) -> Ran:
        """Run ``incseg ARGS`` in its own process group; stdout and stderr go to files, so a
        leftover worker holding them cannot stall the reading."""
        timeout = timeout or self.timeout
        self.count += 1
        self.logs.mkdir(parents=True, exist_ok=True)
        out_path, err_path = self.logs / f"{self.count:03d}.out", self.logs / f"{self.count:03d}.err"
        command = "incseg " + shlex.join(map(str, args))
        start = time.monotonic()
        with open(out_path, "wb") as out, open(err_path, "wb") as err:
            proc = subprocess.Popen(self.argv(args), stdout=out, stderr=err, stdin=subprocess.DEVNULL, cwd=cwd,
                                    env={**self.env, **(env or {})}, start_new_session=True)
            hung = False
            try:
                code = proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                hung, code = True, None
                kill_group(proc.pid)
                proc.wait()
        seconds = time.monotonic() - start
        leftover = False
        if not hung:  # anything of its group still there a second later is a leftover
            deadline = time.monotonic() + 1.0
            while group_members(proc.pid):
                if time.monotonic() > deadline:
                    leftover = True
                    kill_group(proc.pid)
                    break
                time.sleep(0.05)
        return Ran(command, code, round(seconds, 2), out_path.read_text(errors="replace"),
                   err_path.read_text(errors="replace"), hung, leftover, str(self.work))


@dataclass
class Probe:
    name: str
    item: int
    fn: object
    doc: str = ""


@dataclass
class Trial:
    """One probe's run: the commands it ran, what they did, and notes."""

    ctx: Context
    dir: Path
    runs: list[Ran] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def incseg(self, *args, **kwargs) -> Ran:
        ran = self.ctx.incseg(args, cwd=kwargs.pop("cwd", self.dir), **kwargs)
        self.runs.append(ran)
        return ran

    def note(self, text: str) -> None:
        self.notes.append(text)


# -- judging a command ----------------------------------------------------------------------------
def failure(r: Ran) -> str | None:
    """The outcomes that are failures whatever was expected."""
    if r.hung or r.leftover:
        return "hang"
    if r.code < 0 or (r.code > 128 and r.code != 130):
        return "abort"
    if any(mark in r.stderr for mark in LATE):
        return "traceback"
    if r.code == 70:
        return "exit70"
    return None


def expect_error(r: Ran, codes: tuple[int, ...], says: str | None = None) -> str:
    """A refusal: an exit in ``codes`` with one ``error:`` line last (naming ``says``)."""
    bad = failure(r)
    if bad:
        return bad
    if r.code == 0:
        return "silent"
    errors = [line for line in r.stderr.splitlines() if line.startswith("error: ")]
    if r.code not in codes or len(errors) != 1 or not r.last_line.startswith("error: "):
        return "wrong-exit"
    if says and not r.says(r.last_line, says):
        return "wrong-exit"
    return "clean"


def expect_ok(r: Ran, warning: str | None = None) -> str:
    """Success: exit 0 (and a stderr line holding ``warning``)."""
    bad = failure(r)
    if bad:
        return bad
    if r.code != 0:
        return "wrong-exit"
    if warning and not any(r.says(line, warning) for line in r.stderr.splitlines()):
        return "silent"
    return "clean"


def worst(outcomes: list[str]) -> str:
    return min(outcomes, key=SEVERITY.index)


def digest(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


# -- inputs ---------------------------------------------------------------------------------------
def noise(size: int = 48, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)


def bad_folder(folder: Path, kind: str) -> Path:
    """Five good images and one bad one (as tests/test_worker_failures.py): ``jpg`` half a
    JPEG, ``png`` half a PNG, ``tif`` a float32 TIFF, ``none`` no bad one."""
    folder.mkdir(parents=True)
    for k in range(5):
        Image.fromarray(noise(seed=k)).save(folder / f"good{k}.png")
    if kind == "tif":
        Image.fromarray(np.random.default_rng(9).random((48, 48)).astype(np.float32), mode="F").save(folder / "bad.tif")
    elif kind in ("jpg", "png"):
        path = folder / f"bad.{kind}"
        Image.fromarray(noise(seed=7)).save(path, "JPEG" if kind == "jpg" else "PNG")
        with open(path, "r+b") as f:
            f.truncate(path.stat().st_size // 2)
    return folder


def zip_record(path: Path, suffix: str) -> int:
    """Offset of the stored bytes of the zip record whose name ends in ``suffix``."""
    blob = path.read_bytes()
    with zipfile.ZipFile(path) as archive:
        info = next(i for i in archive.infolist() if i.filename.endswith(suffix))
    name_len = int.from_bytes(blob[info.header_offset + 26: info.header_offset + 28], "little")
    extra_len = int.from_bytes(blob[info.header_offset + 28: info.header_offset + 30], "little")
    return info.header_offset + 30 + name_len + extra_len


def temps(folder: Path) -> list[str]:
    """incseg's temporary names (``.NAME.tmp-PID[-x][@host]``) in a folder."""
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".") and ".tmp-" in p.name)


def dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


# -- fixtures -------------------------------------------------------------------------------------
def build_fixtures(ctx: Context) -> list[Ran]:
    """Toy data and its 10-10-ov splits, a step-0 run, an ALIFE step with --lambda-ali 2."""
    work = ctx.work
    steps = [
        ["make-toy-data", "--out", ctx.toy, "--images", "60", "--val-images", "12", "--size", "32"],
        ["prepare-splits", "--dataset", "voc", "--data", ctx.toy, "--task", TASK, "--out", work / "splits"],
        ["train-base", "--data", ctx.toy, "--task", TASK, *TOY_TRAIN_ARGS, "--epochs", "1", "--workers", "0",
         "--out", ctx.step0],
        ["train-step", "--prev", ctx.step0, "--data", ctx.toy, "--method", "alife", "--lambda-ali", "2",
         *TOY_TRAIN_ARGS, "--epochs", "1", "--workers", "0", "--out", ctx.alife],
    ]
    runs = []
    for args in steps:
        r = ctx.incseg(args, cwd=work, timeout=600)
        runs.append(r)
        if r.code != 0:
            raise RuntimeError(f"fixture failed: {r.command}: exit {r.code}: {r.stderr[-2000:]}")
    return runs


# -- the probes (issue 19's items) ----------------------------------------------------------------
def _predict_worker(kind: str):
    def probe(t: Trial) -> str:
        folder = bad_folder(t.dir / "photos", kind)
        outcomes = []
        for rep in range(t.ctx.repeat):
            r = t.incseg("predict", t.ctx.step0, folder, "--out", t.dir / f"out-{rep}", "--workers", "2",
                         "--batch-size", "1")
            outcomes.append(expect_error(r, (3,), f"bad.{kind}"))
        return worst(outcomes)

    probe.__doc__ = f"predict, 2 workers, a folder with a bad {kind}: exit 3, one error line"
    return probe


def predict_good_workers(t: Trial) -> str:
    """Clean counterpart: predict, 2 workers, a folder of good images: exit 0."""
    folder = bad_folder(t.dir / "photos", "none")
    return expect_ok(t.incseg("predict", t.ctx.step0, folder, "--out", t.dir / "out", "--workers", "2",
                              "--batch-size", "1"))


def train_mask_values_workers(t: Trial) -> str:
    """train-base --workers 2 on data whose masks hold values above the class count: exit 3."""
    root = t.dir / "lying"
    shutil.copytree(t.ctx.toy, root)
    for k, path in enumerate(sorted((root / "SegmentationClassAug").glob("*.png"))):
        if k % 3 == 0:
            image = Image.open(path)
            mask = np.array(image)
            mask[:4, :4] = 30
            out = Image.fromarray(mask, mode="P")
            out.putpalette(image.getpalette())
            out.save(path)
    outcomes = []
    for rep in range(t.ctx.repeat):
        r = t.incseg("train-base", "--data", root, "--task", TASK, *TOY_TRAIN_ARGS, "--epochs", "1",
                     "--workers", "2", "--out", t.dir / f"run-{rep}")
        outcomes.append(expect_error(r, (3,), "30"))
    return worst(outcomes)


def export_over_other_run(t: Trial) -> str:
    """export RUN --out OTHER_RUN/checkpoint.pt --force: exit 6, the other run intact."""
    other = t.dir / "other"
    shutil.copytree(t.ctx.alife, other)
    before = digest(other)
    r = t.incseg("export", t.ctx.step0, "--out", other / "checkpoint.pt", "--force")
    bad = failure(r)
    if bad:
        return bad
    after = digest(other)
    if after != before:
        changed = sorted(name for name in set(before) | set(after) if before.get(name) != after.get(name))
        t.note("files of the other run changed or gone: " + ", ".join(changed))
        return "data-lost"
    return expect_error(r, (6,))


def export_fresh(t: Trial) -> str:
    """Clean counterpart: export RUN --out m.pt2 (a new file): exit 0."""
    return expect_ok(t.incseg("export", t.ctx.step0, "--out", t.dir / "m.pt2"))


def checksum_flips(t: Trial) -> str:
    """A bit flipped in the header's 'payload_sha256', one in a weight: evaluate exit 5."""
    source = t.ctx.step0 / "checkpoint.pt"
    blob = bytearray(source.read_bytes())
    at = bytes(blob).index(b"payload_sha256")
    weight = zip_record(source, "/data/5")
    blob[at + 3] ^= 0x01
    blob[weight + 7] ^= 0x01
    path = t.dir / "flipped.pt"
    path.write_bytes(bytes(blob))
    r = t.incseg("evaluate", path, "--data", t.ctx.toy, "--eval-size", "32", "--workers", "0")
    return expect_error(r, (5,), "flipped.pt")


def checksum_intact(t: Trial) -> str:
    """Clean counterpart: evaluate an intact copy of the checkpoint: exit 0."""
    path = t.dir / "intact.pt"
    shutil.copy(t.ctx.step0 / "checkpoint.pt", path)
    return expect_ok(t.incseg("evaluate", path, "--data", t.ctx.toy, "--eval-size", "32", "--workers", "0"))


def predict_link_loops(t: Trial) -> str:
    """predict on a folder with two link loops (a -> ., b -> .) and one image: finishes."""
    folder = t.dir / "photos"
    folder.mkdir()
    Image.fromarray(noise()).save(folder / "top.png")
    (folder / "a").symlink_to(".")
    (folder / "b").symlink_to(".")
    r = t.incseg("predict", t.ctx.step0, folder, "--out", t.dir / "out", "--workers", "0")
    outcome = expect_ok(r)
    if outcome == "clean" and not (t.dir / "out" / "top.png").is_file():
        t.note("no out/top.png written")
        return "silent"
    return outcome


def config_other_method(t: Trial) -> str:
    """--config of an alife run with --lambda-ali 2, rerun with --method ft: exit 2."""
    out = t.dir / "s1-ft"
    r = t.incseg("train-step", "--config", t.ctx.alife / "manifest.json", "--method", "ft", "--workers", "0",
                 "--out", out)
    outcome = expect_error(r, (2,), "lambda-ali")
    if outcome == "silent":
        t.note(f"trained with --method ft, the given --lambda-ali dropped ({out.name} exists: {out.exists()})")
    return outcome


def config_other_command(t: Trial) -> str:
    """A train-base manifest given to train-step --config: exit 2."""
    r = t.incseg("train-step", "--config", t.ctx.step0 / "manifest.json", "--prev", t.ctx.step0, "--method", "ft",
                 "--workers", "0", "--out", t.dir / "s1")
    return expect_error(r, (2,), "train-base")


def config_missing(t: Trial) -> str:
    """train-base --config nope.json: exit 2 or 5, one line."""
    return expect_error(t.incseg("train-base", "--config", t.dir / "nope.json"), (2, 5), "nope.json")


def config_directory(t: Trial) -> str:
    """train-base --config DIR (an empty folder): exit 2 or 5, one line."""
    folder = t.dir / "recipes"
    folder.mkdir()
    return expect_error(t.incseg("train-base", "--config", folder), (2, 5), "recipes")


def _status_losses(json_flag: bool):
    def probe(t: Trial) -> str:
        run = t.dir / "run"
        shutil.copytree(t.ctx.step0, run)
        progress = json.loads((run / "progress.json").read_text())
        progress["losses"] = [1, 2]
        (run / "progress.json").write_text(json.dumps(progress))
        return expect_ok(t.incseg("status", run, *(["--json"] if json_flag else [])))

    probe.__doc__ = f"status RUN{' --json' if json_flag else ''} with progress.json 'losses': [1, 2]: exit 0"
    return probe


def status_plain(t: Trial) -> str:
    """Clean counterpart: status of the intact step-0 run: exit 0."""
    return expect_ok(t.incseg("status", t.ctx.step0))


def _late_image(t: Trial) -> str:
    """A training image of step 0 that epoch 1 does not read and epoch 2 does (the src's own
    sampler, batch 8, seed 0): training fails after last.pt is written."""
    split = t.ctx.work / "splits" / "voc" / TASK / "train-0.txt"
    code = (
        "import sys\n"
        "from incseg_cli.engine.sampler import EpochBatchSampler\n"
        "ids = [l.strip() for l in open(sys.argv[1]) if l.strip()]\n"
        "s = EpochBatchSampler(len(ids), 8, 0)\n"
        "def read(e):\n"
        "    s.set_epoch(e)\n"
        "    return {i for b in s for i, _ in b}\n"
        "print(ids[sorted(read(1) - read(0))[0]])\n"
    )
    r = subprocess.run([sys.executable, "-c", code, str(split)], capture_output=True, text=True, env=t.ctx.env,
                       cwd=t.dir, timeout=120)
    if r.returncode != 0:
        raise RuntimeError(f"cannot choose an image read only in epoch 2: {r.stderr[-500:]}")
    return r.stdout.strip()


def records_truncated_image(t: Trial) -> str:
    """An image truncated mid-training (read first in epoch 2): exit 3, log.txt kept."""
    data = t.dir / "data"
    shutil.copytree(t.ctx.toy, data)
    image = data / "JPEGImages" / f"{_late_image(t)}.jpg"
    good = image.read_bytes()
    image.write_bytes(good[: len(good) // 2])
    out = t.dir / "run"
    r = t.incseg("train-base", "--data", data, "--task", TASK, *TOY_TRAIN_ARGS, "--epochs", "2", "--workers", "0",
                 "--out", out)
    bad = failure(r)
    if bad:
        return bad
    log = out / "log.txt"
    if not log.is_file():
        t.note(f"{out.name}/log.txt is gone (run folder holds: {sorted(p.name for p in out.iterdir()) if out.exists() else 'nothing'})")
        return "data-lost"
    if "$ incseg train-base" not in log.read_text(errors="replace"):
        t.note("log.txt lacks the command line")
        return "data-lost"
    return expect_error(r, (3,), image.name)


def records_closed_pipe(t: Trial) -> str:
    """train-step ... 2>&1 | head -2 (the reader leaves while training runs): exit 130 with
    last.pt, the log ending 'interrupted:', no 'SystemExit'."""
    out = t.dir / "run"
    args = ["train-step", "--prev", t.ctx.step0, "--data", t.ctx.toy, "--method", "ft", *TOY_TRAIN_ARGS,
            "--epochs", "3", "--workers", "0", "--out", out]
    command = "incseg " + shlex.join(map(str, args)) + " 2>&1 | head -2"
    start = time.monotonic()
    proc = subprocess.Popen(t.ctx.argv(args), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            text=True, cwd=t.dir, env=t.ctx.env, start_new_session=True)
    head = []
    deadline = time.monotonic() + t.ctx.timeout
    for line in proc.stdout:  # as head -2 here: the 2nd line says training started (at most 10 read)
        head.append(line.rstrip("\n"))
        if line.startswith("training ") or len(head) >= 10 or time.monotonic() > deadline:
            break
    proc.stdout.close()
    hung = False
    try:
        code = proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        hung, code = True, None
        kill_group(proc.pid)
        proc.wait()
    log = (out / "log.txt").read_text(errors="replace") if (out / "log.txt").is_file() else ""
    tail = [line for line in log.splitlines() if line.strip()]
    # what followed the head went to the closed pipe: the log's last lines stand for stderr
    ran = Ran(command, code, round(time.monotonic() - start, 2), "\n".join(head), "\n".join(tail[-3:]), hung)
    t.runs.append(ran)
    t.note("head read: " + " | ".join(head)[-300:])
    status = t.ctx.incseg(["status", out, "--json"], cwd=t.dir)  # how the run's records say it ended
    try:
        said = json.loads(status.stdout)[0]
        said = f"{said.get('status')!r}, error {said.get('error')!r}"
    except (ValueError, IndexError, KeyError, AttributeError, TypeError):
        said = f"exit {status.code}: {status.last_line[:200]}"
    t.note(f"status afterwards: {said}")
    bad = failure(ran) if code != 130 or hung else None
    if bad:
        return bad
    if "Traceback" in log:
        return "traceback"
    if not (out / "last.pt").is_file():
        t.note("no last.pt")
        return "data-lost"
    ended = tail[-1].split(" ", 2)[-1] if tail else ""
    if code != 130 or "SystemExit" in log + said or not ended.startswith("interrupted:"):
        t.note(f"log ends: {ended[:200]}")
        return "wrong-exit"
    return "clean"


def inspect_program(t: Trial) -> str:
    """inspect m.pt2 of a valid export: exit 0, not called corrupt."""
    program = t.dir / "m.pt2"
    r = t.incseg("export", t.ctx.step0, "--out", program)
    if r.code != 0:
        return failure(r) or "wrong-exit"
    r = t.incseg("inspect", program)
    outcome = expect_ok(r)
    if outcome == "clean" and any(w in (r.stdout + r.stderr).lower() for w in ("corrupt", "damaged")):
        t.note("exit 0 but the output calls it corrupt or damaged")
        return "wrong-exit"
    return outcome


def _custom_dataset(t: Trial) -> Path:
    root = t.dir / "data"
    r = t.incseg("make-toy-data", "--out", root, "--format", "custom", "--images", "12", "--val-images", "4",
                 "--size", "32")
    if r.code != 0:
        raise RuntimeError(f"make-toy-data --format custom: exit {r.code}: {r.last_line}")
    return root


def check_data_two_suffixes(t: Trial) -> str:
    """check-data on a custom dataset with a.jpg and a different a.png in images/: an error."""
    root = _custom_dataset(t)
    first = sorted((root / "images").glob("*.jpg"))[0]
    Image.fromarray(noise(32, seed=3)).save(first.with_suffix(".png"))
    r = t.incseg("check-data", "--data", root)
    return expect_error(r, (2, 3, 5), first.stem)


def check_data_clean(t: Trial) -> str:
    """Clean counterpart: check-data on the intact custom dataset: exit 0."""
    return expect_ok(t.incseg("check-data", "--data", _custom_dataset(t)))


def _noise_folder(root: Path, stray: int | None = 240) -> Path:
    """Images with classes 1..3 as rectangles; one pixel of ``stray`` in mask 5 (as
    tests/test_init_dataset_noise.py)."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i in range(12):
        mask = np.zeros((32, 32), dtype=np.uint8)
        mask[4:16, 4:16] = 1 + i % 3
        mask[18:28, 18:28] = 1 + (i + 1) % 3
        if stray is not None and i == 5:
            mask[0, 0] = stray
        Image.fromarray((mask * 60).astype(np.uint8)).convert("RGB").save(root / "images" / f"im{i:02d}.jpg")
        Image.fromarray(mask, mode="L").save(root / "masks" / f"im{i:02d}.png")
    return root


def init_dataset_noise(t: Trial) -> str:
    """init-dataset on masks with one stray pixel of 240: warns about probable noise."""
    root = _noise_folder(t.dir / "parts")
    r = t.incseg("init-dataset", root, "--workers", "1")
    outcome = expect_ok(r, warning="noise")
    if outcome == "clean" and not any(r.says(line, "noise") and r.says(line, "240") for line in r.stderr.splitlines()):
        t.note("a line says noise but not of 240")
        return "silent"
    return outcome


def init_dataset_max_class(t: Trial) -> str:
    """init-dataset --max-class 3 on the same masks: refused (exit 3) naming 240, nothing written."""
    root = _noise_folder(t.dir / "parts")
    r = t.incseg("init-dataset", root, "--max-class", "3", "--workers", "1")
    outcome = expect_error(r, (3,), "240")
    if outcome == "clean" and (root / "incseg-dataset.json").exists():
        return "silent"
    return outcome


def debris_after_kill(t: Trial) -> str:
    """extract-features killed with SIGKILL while it writes the bank: the rerun removes the
    temporary file it left (planted with a dead pid if the kill came too late)."""
    bank = t.dir / "bank.h5"
    args = ["extract-features", "--prev", t.ctx.step0, "--data", t.ctx.toy, "--out", bank, "--samples", "40",
            "--crop-size", "32", "--batch-size", "4", "--workers", "0"]
    proc = subprocess.Popen(t.ctx.argv(args), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            stdin=subprocess.DEVNULL, cwd=t.dir, env=t.ctx.env, start_new_session=True)
    deadline = time.monotonic() + t.ctx.timeout
    while not temps(t.dir) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    kill_group(proc.pid)
    code = proc.wait()
    t.runs.append(Ran("incseg " + shlex.join(map(str, args)) + "  # SIGKILL once a temp file appears", code, 0.0,
                      "", "", False))
    left = temps(t.dir)
    if left:
        t.note(f"killed (exit {code}); left: {', '.join(left)}")
    else:  # too late (or too early): plant what a killed writer leaves, named as the src names it
        fileio = (t.ctx.src / "incseg_cli" / "fileio.py").read_text()
        host = ""
        if "@{host_tag()}" in fileio:
            host = "@" + subprocess.run([sys.executable, "-c", "from incseg_cli.fileio import host_tag; print(host_tag())"],
                                        capture_output=True, text=True, env=t.ctx.env, cwd=t.dir).stdout.strip()
        if bank.exists():
            bank.unlink()
        planted = t.dir / f".bank.h5.tmp-{dead_pid()}{host}"
        planted.write_bytes(b"partial")
        left = [planted.name]
        t.note(f"kill found no temporary file (exit {code}); planted {planted.name}")
    r = t.incseg(*args)
    outcome = expect_ok(r)
    if outcome != "clean":
        return outcome
    still = temps(t.dir)
    if still:
        t.note("after the rerun: " + ", ".join(still))
        return "silent"
    return "clean"


PROBES = [
    Probe("predict-workers-bad-jpg", 1, _predict_worker("jpg")),
    Probe("predict-workers-bad-png", 1, _predict_worker("png")),
    Probe("predict-workers-float-tif", 1, _predict_worker("tif")),
    Probe("predict-workers-good (clean counterpart)", 1, predict_good_workers),
    Probe("train-base-workers-mask-values", 1, train_mask_values_workers),
    Probe("export-over-other-run", 2, export_over_other_run),
    Probe("export-new-file (clean counterpart)", 2, export_fresh),
    Probe("checksum-name-and-weight-flips", 3, checksum_flips),
    Probe("checksum-intact (clean counterpart)", 3, checksum_intact),
    Probe("predict-link-loops", 4, predict_link_loops),
    Probe("config-alife-manifest-method-ft", 5, config_other_method),
    Probe("config-train-base-manifest-to-train-step", 5, config_other_command),
    Probe("config-missing-file", 6, config_missing),
    Probe("config-directory", 6, config_directory),
    Probe("status-losses-list", 6, _status_losses(False)),
    Probe("status-losses-list-json", 6, _status_losses(True)),
    Probe("status-intact (clean counterpart)", 6, status_plain),
    Probe("records-image-truncated-mid-training", 7, records_truncated_image),
    Probe("records-closed-pipe-train-step", 7, records_closed_pipe),
    Probe("records-inspect-exported-program", 7, inspect_program),
    Probe("check-data-a.jpg-and-a.png", 8, check_data_two_suffixes),
    Probe("check-data-intact (clean counterpart)", 8, check_data_clean),
    Probe("init-dataset-stray-240-noise-warning", 8, init_dataset_noise),
    Probe("init-dataset-stray-240-max-class", 8, init_dataset_max_class),
    Probe("debris-extract-features-sigkill", 9, debris_after_kill),
]


# -- the runner -----------------------------------------------------------------------------------
def record(ran: Ran) -> dict:
    return {"command": ran.command, "exit": ran.code, "seconds": ran.seconds, "hung": ran.hung,
            "leftover_process": ran.leftover, "last_stderr_line": ran.last_line}


def run_probe(ctx: Context, probe: Probe, index: int) -> dict:
    # numbered, not named: a probe's name in its paths would match the words looked for in messages
    folder = ctx.work / "probes" / f"p{index:02d}"
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    trial = Trial(ctx, folder)
    start = time.monotonic()
    try:
        outcome = probe.fn(trial)
        if outcome not in OUTCOMES:
            raise ValueError(f"unknown outcome {outcome!r}")
    except Exception as exc:  # noqa: BLE001  (the runner never crashes: a probe that fails says so)
        outcome = "probe-error"
        trial.note(f"{type(exc).__name__}: {exc}")
        trial.note(traceback.format_exc(limit=3)[-1500:])
    return {"name": probe.name, "item": probe.item, "folder": str(folder), "doc": (probe.fn.__doc__ or "").strip().splitlines()[0],
            "outcome": outcome, "seconds": round(time.monotonic() - start, 2),
            "exit_codes": [r.code for r in trial.runs],
            "last_stderr_line": trial.runs[-1].last_line if trial.runs else "",
            "commands": [record(r) for r in trial.runs], "notes": trial.notes}


def source_commit(src: Path) -> str | None:
    r = subprocess.run(["git", "-C", str(src), "rev-parse", "HEAD"], capture_output=True, text=True)
    if r.returncode != 0:
        return None
    dirty = subprocess.run(["git", "-C", str(src), "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True).stdout.strip()
    return r.stdout.strip() + ("+changes" if dirty else "")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--src", type=Path, default=REPO, help="source tree whose incseg_cli runs (default: this repo)")
    parser.add_argument("--work", type=Path, required=True, help="work folder (fixtures, probes' inputs and logs)")
    parser.add_argument("--out", type=Path, required=True, help="JSON results")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per command (default 60)")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each loader-worker probe (default 3)")
    parser.add_argument("--only", nargs="*", help="run only the probes whose name holds one of these")
    args = parser.parse_args(argv)

    src, work = args.src.resolve(), args.work.resolve()
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    ctx = Context(src, work, args.timeout, args.repeat)
    where = subprocess.run([sys.executable, "-c", "import incseg_cli; print(incseg_cli.__file__)"],
                           capture_output=True, text=True, env=ctx.env, cwd=work).stdout.strip()
    if not where.startswith(str(src)):
        print(f"incseg_cli imports from {where!r}, not from {src}", file=sys.stderr)
        return 2
    start = time.monotonic()
    print(f"src {src} ({source_commit(src)}), work {work}", flush=True)
    probes = [p for p in PROBES if not args.only or any(word in p.name for word in args.only)]
    results = []
    try:
        fixtures = build_fixtures(ctx)
        print(f"fixtures built in {sum(r.seconds for r in fixtures):.1f} s", flush=True)
    except Exception as exc:  # noqa: BLE001  (no probe can run: each says why)
        fixtures = []
        results = [{"name": p.name, "item": p.item, "outcome": "probe-error", "seconds": 0.0, "exit_codes": [],
                    "last_stderr_line": "", "commands": [], "notes": [f"fixtures: {type(exc).__name__}: {exc}"]}
                   for p in probes]
        print(f"fixtures failed: {exc}", file=sys.stderr, flush=True)
        probes = []
    for probe in probes:
        result = run_probe(ctx, probe, PROBES.index(probe) + 1)
        results.append(result)
        print(f"  {result['outcome']:<11} {result['seconds']:7.1f} s  {probe.item}  {probe.name}  "
              f"{str(result['exit_codes']):<14} {result['last_stderr_line'][:90]}", flush=True)
    counts = {"tried": len(results), **{o: sum(r["outcome"] == o for r in results) for o in OUTCOMES}}
    report = {"src": str(src), "commit": source_commit(src), "python": sys.version.split()[0],
              "timeout_s": args.timeout, "repeat": args.repeat, "seconds": round(time.monotonic() - start, 1),
              "fixtures": [record(r) for r in fixtures], "counts": counts, "probes": results}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(" ".join(f"{k} {v}" for k, v in counts.items()) + f"  ({report['seconds']} s) -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
