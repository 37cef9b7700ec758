"""Method comparison on the toy data: every method side by side from ONE shared step-0 run.

On generated toy data (3,000 train / 200 val images, 64 px, seed 0) and task 10-10-ov:
  joint     train-base --task offline (all classes at once: the ceiling)
  ft        train-step --method ft
  mib       train-step --method mib
  alife     train-step --method alife                          (ALIFE Step 1)
  alife-m   alife's Step 1 run → extract-features → fit-rotations → finetune-classifier
  wilson    train-step --method wilson                         (image-level labels only)
  plop      train-step --method plop                           (PLOP, pixel labels)
and, for the multi-step task 10-5-5-ov from the same step-0 run, ft, mib, alife and plop over
two steps. With image replay (`--replay`, or the whole bench): mib-m (mib with a 100-image
memory) from the same step-0 run, and dkd and dkd-m from DKD's own step 0 (`--loss dkd`), on
both tasks. Every stage is one `incseg` command with --preset toy and --seed 0, as a user runs
it; the results are read back with `incseg report --json`, which also gives each run's replay
memory in bytes (images for mib-m and dkd-m, the rotated feature bank for alife-m).

Writes bench/results/methods.json (settings, old/new/all mIoU per method and task, seconds
of every stage, the checks), methods.md and methods.png (old/new/all bars on 10-10) plus
methods-steps.png (mIoU per step). Exits 1 if fine-tuning's old-class mIoU on 10-10 is not
below half of MiB's, or if any method's new-class mIoU is zero (what the papers show: ft
forgets; the others keep the old classes and learn the new ones), or if PLOP's old-class mIoU
is below half of MiB's on either task. Each step run's seconds per iteration (from its
manifest) give PLOP's iteration time over plain CE (ft) in the same run.

Usage: python bench/methods.py [--work DIR] [--out-dir bench/results] [--quick] [--replay]
--replay runs only what the replay comparison needs (step 0, ft, mib, alife, alife-m, mib-m,
dkd, dkd-m) and writes its results under "replay" in methods.json, keeping the rest of the file.
Budget: about an hour on 2 CPU cores for the whole bench (the measured time is in methods.json).
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

import torch

from incseg_cli.fileio import atomic_path, write_json, write_text

RESULTS = Path(__file__).resolve().parent / "results"
TASK, MULTI = "10-10-ov", "10-5-5-ov"
SEED = 0

# The bench's settings, recorded in methods.json. Epochs are the toy presets' (12 at step 0, 6 per later step).
FULL = {"images": 3000, "val_images": 200, "size": 64, "base_epochs": 12, "step_epochs": 6,
        "joint_epochs": 12, "bank_samples": 200, "rotation_epochs": 1, "finetune_epochs": 1,
        "multi_step_methods": ["ft", "mib", "alife", "plop"]}
# --quick: the same pipeline in about two minutes, to check the script, not the methods.
QUICK = {**FULL, "images": 400, "val_images": 40, "base_epochs": 2, "step_epochs": 2, "joint_epochs": 2,
         "bank_samples": 20, "multi_step_methods": ["ft", "mib", "plop"]}

STEP_METHODS = ("ft", "mib", "alife", "wilson", "plop")
REPLAY_STEP_METHODS = ("ft", "mib", "alife")  # what the replay comparison is measured against
MEMORY = 100  # images: DKD-M's VOC memory, for mib-m and dkd-m


class Bench:
    def __init__(self, work: Path, settings: dict[str, Any]) -> None:
        self.work = work
        self.settings = settings
        self.env = dict(os.environ, INCSEG_SPLITS=str(work / "splits"), INCSEG_NO_PROGRESS="1")
        self.stages: list[dict[str, Any]] = []
        self.toy = work / "toy"
        self.runs = work / "runs"
        self.run_dirs: list[Path] = []  # every run directory, for `incseg report`

    def incseg(self, name: str, *args: Any, output: Path | None = None) -> float:
        """Run one stage; record its command line and wall seconds (interpreter start included)."""
        argv = [str(a) for a in args]
        reused = output is not None and output.exists()
        print(f"[bench] {name}: incseg {shlex.join(argv)}", file=sys.stderr, flush=True)
        start = time.monotonic()
        result = subprocess.run([sys.executable, "-m", "incseg_cli", *argv], env=self.env, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        seconds = time.monotonic() - start
        if result.returncode != 0:
            sys.stderr.write(result.stderr[-4000:])
            raise SystemExit(f"[bench] stage {name} failed with exit code {result.returncode}")
        record = {"stage": name, "command": "incseg " + shlex.join(argv), "seconds": round(seconds, 1)}
        if reused:
            record["reused"] = True  # the output was there already: the command only checked it
        self.stages.append(record)
        print(f"[bench] {name}: {seconds:.1f} s", file=sys.stderr, flush=True)
        self.last_stdout = result.stdout
        return seconds

    def train(self, name: str, *args: Any, out: Path) -> Path:
        self.incseg(name, *args, "--data", self.toy, "--preset", "toy", "--seed", SEED, "--out", out, output=out)
        self.run_dirs.append(out)
        return out

    # -- the pipeline -------------------------------------------------------------------------
    def data(self) -> None:
        s = self.settings
        self.incseg("make-toy-data", "make-toy-data", self.toy, "--images", s["images"], "--val-images",
                    s["val_images"], "--size", s["size"], "--seed", SEED, output=self.toy)
        self.incseg("prepare-splits", "prepare-splits", "--dataset", "voc", "--data", self.toy, "--task", TASK,
                    "--task", MULTI, "--task", "offline", "--out", self.work / "splits")

    def run_all(self, replay_only: bool = False) -> dict[str, dict[str, Path]]:
        s = self.settings
        self.data()
        step0 = self.train("step0", "train-base", "--task", TASK, "--epochs", s["base_epochs"], out=self.runs / "step0")
        runs: dict[str, dict[str, Path]] = {TASK: {"base": step0}, MULTI: {"base": step0}}
        joint = None if replay_only else self.train("joint", "train-base", "--task", "offline", "--epochs",
                                                    s["joint_epochs"], out=self.runs / "joint")
        for method in REPLAY_STEP_METHODS if replay_only else STEP_METHODS:
            runs[TASK][method] = self.train(method, "train-step", "--prev", step0, "--method", method,
                                            "--epochs", s["step_epochs"], out=self.runs / f"{TASK}-{method}")
        runs[TASK]["alife-m"] = self.alife_m(step0, runs[TASK]["alife"], self.runs / f"{TASK}-alife-m")
        # 10-5-5 step 0 has the classes of 10-10 step 0: the same step-0 run starts both.
        multi = ["ft", "mib"] if replay_only else s["multi_step_methods"]
        for method in multi:
            runs[MULTI][method] = self.chain(method, step0, "--method", method, "--epochs", s["step_epochs"])
        if replay_only or s.get("replay", True):
            self.replay(runs, step0)
        if joint is not None:
            for task in (TASK, MULTI):
                runs[task]["joint"] = joint
        return runs

    def chain(self, label: str, step0: Path, *args: Any) -> Path:
        """Steps 1 and 2 of 10-5-5-ov from ``step0``; the step-2 run."""
        prev = step0
        for step in (1, 2):
            prev = self.train(f"{MULTI} {label} step {step}", "train-step", "--prev", prev, "--task", MULTI, *args,
                              out=self.runs / f"{MULTI}-{label}-step{step}")
        return prev

    def replay(self, runs: dict[str, dict[str, Path]], step0: Path) -> None:
        """mib-m from the shared step 0; dkd and dkd-m from DKD's step 0 (their recipe's epochs)."""
        s = self.settings
        mib_m = ("--method", "mib", "--replay-images", MEMORY, "--epochs", s["step_epochs"])
        runs[TASK]["mib-m"] = self.train("mib-m", "train-step", "--prev", step0, *mib_m,
                                         out=self.runs / f"{TASK}-mib-m")
        runs[MULTI]["mib-m"] = self.chain("mib-m", step0, *mib_m)
        dkd0 = self.train("dkd step0", "train-base", "--task", TASK, "--loss", "dkd",
                          *(("--epochs", s["base_epochs"]) if s["quick"] else ()), out=self.runs / "step0-dkd")
        runs[TASK]["dkd-base"] = runs[MULTI]["dkd-base"] = dkd0
        for method in ("dkd", "dkd-m"):
            epochs = ("--epochs", s["step_epochs"]) if s["quick"] else ()  # else DKD's toy recipe (20)
            runs[TASK][method] = self.train(method, "train-step", "--prev", dkd0, "--method", method, *epochs,
                                            out=self.runs / f"{TASK}-{method}")
            runs[MULTI][method] = self.chain(method, dkd0, "--method", method, *epochs)

    def alife_m(self, step0: Path, alife: Path, out: Path) -> Path:
        """ALIFE-M Steps 2 and 3 after ALIFE's Step 1 run: memory, rotations, classifier."""
        s = self.settings
        bank, rotated, rotations = self.work / "bank.h5", self.work / "bank-rotated.h5", self.work / "rotations.pt"
        self.incseg("alife-m extract-features", "extract-features", "--prev", step0, "--data", self.toy,
                    "--out", bank, "--samples", s["bank_samples"], "--preset", "toy", "--seed", SEED, output=bank)
        self.incseg("alife-m fit-rotations", "fit-rotations", "--bank", bank, "--prev", step0, "--current", alife,
                    "--data", self.toy, "--out", rotations, "--out-bank", rotated, "--preset", "toy",
                    "--epochs", s["rotation_epochs"], "--seed", SEED, output=rotated)
        return self.train("alife-m finetune-classifier", "finetune-classifier", "--current", alife, "--prev", step0,
                          "--bank", rotated, "--epochs", s["finetune_epochs"], out=out)

    def report(self, runs: list[Path], plots: Path) -> dict[str, Any]:
        self.incseg("report", "report", *runs, "--json", "--plots", plots)
        return json.loads(self.last_stdout)


def _rounded(miou: dict[str, Any]) -> dict[str, float | None]:
    return {k: None if miou.get(k) is None else round(miou[k], 4) for k in ("old", "new", "all")}


def collect(bench: Bench, runs: dict[str, dict[str, Path]], plots: Path) -> dict[str, dict[str, Any]]:
    """Per task, per method: old/new/all at the task's last step, from `incseg report`."""
    rows = bench.report(bench.run_dirs, plots)["rows"]
    results: dict[str, dict[str, Any]] = {}
    for task, task_runs in runs.items():
        last = max(r["step"] for r in rows if r["task"] == task)
        base = next(r for r in rows if r["run"] == str(task_runs["base"]))
        results[task] = {"step0": {**_rounded(base["miou"]), "run": task_runs["base"].name}}
        for method, path in task_runs.items():
            if method == "base":
                continue
            row = next(r for r in rows if r["run"] == str(path) and (method == "dkd-base" or
                                                                      (r["task"] == task and r["step"] == last)))
            manifest = json.loads((path / "manifest.json").read_text())
            results[task][method] = {**_rounded(row["miou"]), "run": path.name,
                                     "hiou": None if row.get("hiou") is None else round(row["hiou"], 4),
                                     "memory_bytes": row.get("memory_bytes"),
                                     "train_seconds": manifest.get("train_seconds"),
                                     "iteration_seconds": iteration_seconds(manifest)}
    return results


def iteration_seconds(manifest: dict[str, Any]) -> float | None:
    """Training seconds per iteration of a step run (epoch wall times; PLOP's pre-pass counts)."""
    epochs = manifest.get("epochs") or []
    iters = manifest.get("iterations_per_epoch")
    if not epochs or not iters:
        return None
    return round(sum(e["seconds"] for e in epochs) / (len(epochs) * iters), 5)


def speed(results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Each method's iteration time over plain CE (ft) on 10-10, from the same run."""
    ten = results[TASK]
    ce = ten["ft"].get("iteration_seconds")
    return {m: round(r["iteration_seconds"] / ce, 3) for m, r in ten.items()
            if m not in ("step0", "joint", "dkd-base") and ce and r.get("iteration_seconds")}


def checks(results: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    ten = results[TASK]
    out = [{
        "check": "fine-tuning forgets: ft old mIoU < half of mib's on 10-10",
        "values": {"ft_old": ten["ft"]["old"], "mib_old": ten["mib"]["old"]},
        "passed": ten["ft"]["old"] is not None and ten["mib"]["old"] is not None
        and ten["ft"]["old"] < 0.5 * ten["mib"]["old"],
    }]
    for task in (TASK, MULTI):
        if "plop" in results[task]:
            plop, mib = results[task]["plop"]["old"], results[task]["mib"]["old"]
            out.append({"check": f"plop keeps the old classes of {task}: old mIoU >= half of mib's",
                        "values": {"plop_old": plop, "mib_old": mib},
                        "passed": plop is not None and mib is not None and plop >= 0.5 * mib})
    multi = results.get(MULTI, {})
    if "dkd" in multi:
        out.append({"check": f"dkd keeps the old classes of {MULTI} at least as well as mib: old mIoU >= mib's",
                    "values": {"dkd_old": multi["dkd"]["old"], "mib_old": multi["mib"]["old"]},
                    "passed": (multi["dkd"]["old"] or 0) >= (multi["mib"]["old"] or 0)})
        out.append({"check": f"dkd-m's image memory helps on {MULTI}: old mIoU >= dkd's",
                    "values": {"dkd_m_old": multi["dkd-m"]["old"], "dkd_old": multi["dkd"]["old"]},
                    "passed": (multi["dkd-m"]["old"] or 0) >= (multi["dkd"]["old"] or 0)})
    for task, methods in results.items():
        for method, r in methods.items():
            if method not in ("step0", "dkd-base"):
                out.append({"check": f"{method} learns the new classes of {task}: new mIoU > 0",
                            "values": {"new": r["new"]}, "passed": bool(r["new"])})
    return out


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.1f}"


def markdown(doc: dict[str, Any]) -> str:
    lines = ["# Method comparison on the toy data", "",
             f"`python bench/methods.py` ({doc['settings']['images']} train / {doc['settings']['val_images']} val "
             f"toy images at {doc['settings']['size']} px, seed {SEED}, `--preset toy`; one shared step-0 run). "
             f"Total wall time {doc['wall_seconds'] / 60:.1f} min on {doc['machine']['cpus']} CPU cores.", ""]
    for task, methods in doc["results"].items():
        last = "step 1" if task == TASK else "step 2 (last)"
        lines += [f"## {task}, mIoU % after {last}", "", "| method | old | new | all | hIoU | memory | train s |",
                  "|---|---:|---:|---:|---:|---:|---:|"]
        for method, r in methods.items():
            seconds = "–" if r.get("train_seconds") is None else f"{r['train_seconds']:.0f}"
            memory = "–" if r.get("memory_bytes") is None else f"{r['memory_bytes'] / 1e6:.2f} MB"
            lines.append(f"| {method} | {_pct(r['old'])} | {_pct(r['new'])} | {_pct(r['all'])} | "
                         f"{_pct(r.get('hiou'))} | {memory} | {seconds} |")
        lines.append("")
    lines += ["old: classes of earlier steps; new: the last step's classes; all: every class + background. "
              "step0 is the shared step-0 model (its 'new' are the base classes), dkd-base DKD's own; joint is "
              "scored in the task's class groups. hIoU: DKD's harmonic mean of base+background and the added "
              "classes. memory: the replay memory on disk (images for mib-m and dkd-m, the feature bank for "
              "alife-m).", "", "## Seconds per stage (wall, interpreter start included)", "",
              "| stage | s |", "|---|---:|"]
    ratios = doc.get("iteration_time_over_ce") or {}
    lines += [f"| {s['stage']} | {s['seconds']:.1f} |" for s in doc["stages"]]
    lines += ["", "## Iteration time over plain CE (ft), 10-10, same run", "", "| method | × CE |", "|---|---:|"]
    lines += [f"| {m} | {r:.2f} |" for m, r in ratios.items()]
    lines += ["", "## Checks", ""]
    lines += [f"- {'PASS' if c['passed'] else 'FAIL'}: {c['check']} {json.dumps(c['values'])}" for c in doc["checks"]]
    return "\n".join(lines) + "\n"


TIMED = (("ft", "step0"), ("mib", "step0"), ("alife", "step0"), ("mib-m", "step0"), ("dkd", "step0-dkd"),
         ("dkd-m", "step0-dkd"))


def timing(work: Path | None, out: Path) -> int:
    """Seconds per iteration of one epoch of each method, run one after the other (nothing else
    should run), over ft's: the ratios methods.json keeps as replay.iteration_time_quiet."""
    if work is None or not (work / "runs" / "step0-dkd" / "checkpoint.pt").is_file():
        raise SystemExit("--timing needs --work DIR of a finished --replay run")
    bench = Bench(work, dict(FULL, quick=False))
    seconds: dict[str, float] = {}
    for method, base in TIMED:
        run = work / "timing" / method
        shutil.rmtree(run, ignore_errors=True)
        extra = ("--method", "mib", "--replay-images", MEMORY) if method == "mib-m" else ("--method", method)
        bench.train(f"timing {method}", "train-step", "--prev", work / "runs" / base, *extra, "--epochs", 1, out=run)
        seconds[method] = iteration_seconds(json.loads((run / "manifest.json").read_text()))
    doc = json.loads((out / "methods.json").read_text())
    doc.setdefault("replay", {})["iteration_time_quiet"] = {
        "what": "one epoch of 10-10-ov step 1 per method, run one after the other with nothing else running; "
                "seconds per iteration over ft's",
        "seconds_per_iteration": seconds,
        "over_ft": {m: round(v / seconds["ft"], 3) for m, v in seconds.items()},
        "stages": bench.stages,
    }
    write_json(out / "methods.json", doc)
    print(json.dumps(doc["replay"]["iteration_time_quiet"]["over_ft"], indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, help="Directory for the data and runs (kept). Complete runs in it are "
                        "reused, so their times are only the check. [a temporary directory, removed at the end]")
    parser.add_argument("--out-dir", type=Path, default=RESULTS, help="Where methods.json/.md/.png go. [bench/results]")
    parser.add_argument("--quick", action="store_true", help="Tiny data and 1-2 epochs: checks the script, "
                        "not the methods (the checks may fail).")
    parser.add_argument("--timing", action="store_true", help="With --work DIR of a finished --replay run: one "
                        "epoch of each step method on 10-10 from its step-0 run, one after the other on a quiet "
                        "machine; their seconds per iteration over ft go under replay.iteration_time_quiet.")
    parser.add_argument("--replay", action="store_true", help="Only the replay comparison (ft, mib, alife, alife-m, "
                        "mib-m, dkd, dkd-m); its results go under \"replay\" in methods.json, the rest is kept.")
    args = parser.parse_args(argv)
    if args.timing:
        return timing(args.work, args.out_dir)
    settings = dict(QUICK if args.quick else FULL, quick=args.quick, seed=SEED, preset="toy", tasks=[TASK, MULTI],
                    replay_images=MEMORY)
    work = args.work or Path(tempfile.mkdtemp(prefix="incseg-bench-methods-"))
    work.mkdir(parents=True, exist_ok=True)
    bench = Bench(work, settings)
    started = time.monotonic()
    try:
        runs = bench.run_all(replay_only=args.replay)
        plots = work / "plots"
        results = collect(bench, runs, plots)
    finally:
        wall = time.monotonic() - started
    doc = {
        "benchmark": "method comparison on toy data (bench/methods.py)",
        "settings": settings,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                    "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
                    "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS")},
        "wall_seconds": round(wall, 1),
        "results": results,
        "iteration_time_over_ce": speed(results),
        "stages": bench.stages,
        "checks": checks(results),
    }
    out = args.out_dir
    if args.replay:  # a section of its own, measured in its own run, beside the whole bench's
        doc["benchmark"] += " --replay"
        whole = json.loads((out / "methods.json").read_text()) if (out / "methods.json").is_file() else {}
        write_json(out / "methods.json", {**whole, "replay": doc})
        write_text(out / "methods-replay.md", markdown(doc))
    else:
        write_json(out / "methods.json", doc)
        write_text(out / "methods.md", markdown(doc))
        for name, target in ((f"groups-{TASK}-step1.png", "methods.png"), ("miou-per-step.png", "methods-steps.png")):
            with atomic_path(out / target) as tmp:
                shutil.copyfile(plots / name, tmp)
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)
    print(markdown(doc))
    failed = [c["check"] for c in doc["checks"] if not c["passed"]]
    for check in failed:
        print(f"[bench] FAILED: {check}", file=sys.stderr)
    written = "methods-replay.md" if args.replay else "methods.md, methods.png, methods-steps.png"
    print(f"[bench] wrote {out / 'methods.json'}, {written} in {wall / 60:.1f} min", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
