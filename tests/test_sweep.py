"""incseg sweep: a grid as a Makefile that make runs in parallel, then the report's mean ± std; the
same grid as a SLURM array script, run under plain bash with a stand-in incseg."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import FAKE_INCSEG, REPO, TOY_TRAIN_ARGS, error_line


def test_sweep_refuses_what_make_cannot_run(cli, tmp_path, toy_root):
    r = cli("sweep", "--out", tmp_path / "x.mk", "--data", toy_root, "--task", "offline", "--method", "mib")
    assert r.returncode == 2 and "a sweep learns incremental tasks" in r.stderr
    r = cli("sweep", "--out", tmp_path / "x.mk", "--data", toy_root, "--task", "10-5-5-ov", "--method", "nope")
    assert r.returncode == 2 and "--method must be one of" in r.stderr
    r = cli("sweep", "--out", tmp_path / "x.mk", "--data", toy_root, "--task", "10-5-5-ov", "--method", "mib",
            "--runs", tmp_path / "with space")
    assert r.returncode == 2 and "paths with spaces" in r.stderr
    assert not (tmp_path / "x.mk").exists()


def test_sweep_names_an_order_of_ones_own_by_its_file_and_the_others_by_key(cli, tmp_path, toy_root, monkeypatch):
    from incseg_cli import datasets
    from incseg_cli.datasets import registry

    monkeypatch.setitem(registry._REGISTRY, "voc", datasets.get("voc"))  # the order registered here goes with the test
    order = tmp_path / "mine.json"
    order.write_text(json.dumps({"name": "mine", "order": list(range(20, 0, -1))}))
    r = cli("sweep", "--out", tmp_path / "x.mk", "--data", toy_root, "--task", "10-10-ov", "--method", "mib",
            "--class-order", order, "--class-order", "plop-b")
    assert r.returncode == 0, r.stderr
    text = (tmp_path / "x.mk").read_text()
    assert f"--task 10-10-ov --class-order {order.resolve()} --loss ce" in text  # a new process needs the file
    assert "runs/sweep/voc/10-10-ov@mine/seed0/step0-ce/checkpoint.pt:" in text
    assert "--task 10-10-ov@plop-b --loss ce" in text  # a built-in order is known by its name
    # a value given twice is one run, not two stages writing one directory
    r = cli("sweep", "--out", tmp_path / "y.mk", "--data", toy_root, "--task", "10-10-ov", "--method", "mib",
            "--method", "mib", "--seed", "1", "--seed", "1", "--class-order", "random:2", "--class-order", "random-2",
            "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["runs"] == 2 and (tmp_path / "y.mk").read_text().count("train-base") == 1


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_a_small_grid_runs_under_make_and_reports_mean_and_std(cli, toy_root, tmp_path):
    args = shlex.join([*TOY_TRAIN_ARGS, "--epochs", "1"])
    makefile = tmp_path / "sweep.mk"
    r = cli("sweep", "--out", makefile, "--data", toy_root, "--task", "10-10-ov", "--method", "mib", "--seed", "0",
            "--seed", "1", "--runs", tmp_path / "runs", "--base-args", args, "--step-args", args, "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["runs"] == 4
    env = dict(os.environ, INCSEG_NO_PROGRESS="1")
    env.pop("INCSEG_DEBUG", None)
    incseg = f"{shlex.quote(sys.executable)} -m incseg_cli"
    done = subprocess.run(["make", "-j", "2", "-f", str(makefile), f"INCSEG={incseg}"], capture_output=True,
                          text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((tmp_path / "runs" / "report" / "report.json").read_text())
    (last,) = [g for g in report["groups"] if g["step"] == 1]
    assert last["method"] == "mib" and last["n"] == 2 and last["seeds"] == [0, 1]
    assert last["miou"]["all"]["std"] is not None
    assert (tmp_path / "runs" / "report" / "groups.csv").is_file()
    again = subprocess.run(["make", "-j", "2", "-f", str(makefile), f"INCSEG={incseg}"], capture_output=True,
                           text=True, env=env, timeout=120)
    assert again.returncode == 0 and "train-base" not in again.stdout  # nothing to redo


# -- --format slurm ---------------------------------------------------------------------------------
# The stand-in incseg of tests/helpers.py; prepare-splits, with FAKE_PREPARE_WRITES, takes a
# moment and then writes the task.json the sweep script looks for, as the real one does.
FAKE_INCSEG_PREPARING = FAKE_INCSEG + """if [[ $1 == prepare-splits && -n ${FAKE_PREPARE_WRITES:-} ]]; then
    sleep 0.3
    while (( $# )); do
        case $1 in --out) out=$2 ;; --dataset) dataset=$2 ;; --task) task=$2 ;; esac
        shift
    done
    mkdir -p "$out/$dataset/$task" && echo '{}' > "$out/$dataset/$task/task.json"
fi
"""
needs_flock = pytest.mark.skipif(shutil.which("flock") is None, reason="needs flock")
GRID = ["--task", "10-5-5-ov", "--method", "mib", "--method", "dkd", "--seed", "0", "--seed", "1",
        "--base-args", "--epochs 2", "--step-args", "--epochs 1"]


def _make_rules(makefile: Path) -> tuple[dict[str, tuple[str, list[str]]], list[str]]:
    """``{target: (prerequisite, incseg argv)}`` of the Makefile's one-command rules, and the
    targets in the order the file lists them."""
    rules, order = {}, []
    lines = makefile.read_text().splitlines()
    for head, recipe in zip(lines, lines[1:]):
        if recipe.startswith("\t$(INCSEG) ") and ":" in head and recipe.split()[1] != "report":
            target, _, after = head.partition(":")
            rules[target] = (after.strip(), shlex.split(recipe.removeprefix("\t$(INCSEG) ")))
            order.append(target)
    return rules, order


def _expected_groups(makefile: Path) -> list[list[list[str]]]:
    """Per step-0 run, in the Makefile's order: its prepare-splits, its train-base, then every
    rule continuing it (transitively), in the file's order: what its array task must run."""
    rules, order = _make_rules(makefile)
    groups = []
    for base in (t for t in order if rules[t][1][0] == "train-base"):
        chain, members = [rules[rules[base][0]][1], rules[base][1]], {base}
        for target in order:
            if rules[target][0] in members:
                members.add(target)
                chain.append(rules[target][1])
        groups.append(chain)
    return groups


@pytest.fixture
def slurm_sweep(cli, tmp_path):
    """The same grid as a Makefile and as an sbatch script (chain.sh found beside the package),
    a stand-in incseg, and the environment that runs the script under plain bash with it."""
    grid = ["--data", tmp_path / "VOC2012", "--dataset", "voc", "--runs", tmp_path / "runs", *GRID]
    r = cli("sweep", "--out", tmp_path / "sweep.mk", *grid)
    assert r.returncode == 0, r.stderr
    r = cli("sweep", "--format", "slurm", "--out", tmp_path / "sweep.sbatch", *grid, "--json")
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)
    assert summary["chain_script"] == str(REPO / "scripts" / "slurm" / "chain.sh")
    fake = tmp_path / "bin" / "incseg"
    fake.parent.mkdir()
    fake.write_text(FAKE_INCSEG_PREPARING)
    (fake.parent / "scontrol").write_text('#!/bin/bash\necho "scontrol $*" >> "$FAKE_LOG"\n')
    for path in fake.parent.iterdir():
        path.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "OPTS_")) and k != "GPUS"}
    env.update(PATH=f"{fake.parent}:{os.environ['PATH']}", INCSEG=str(fake), FAKE_LOG=str(tmp_path / "calls.txt"))
    return summary, env


def _bash(script: str, env: dict, *args: str, index: int | None = None) -> subprocess.CompletedProcess:
    env = dict(env, **({"SLURM_ARRAY_TASK_ID": str(index)} if index is not None else {}))
    return subprocess.run(["bash", script, *args], capture_output=True, text=True, env=env, timeout=60)


def _calls(env: dict) -> list[str]:
    log = Path(env["FAKE_LOG"])
    calls = log.read_text().splitlines() if log.exists() else []
    log.unlink(missing_ok=True)
    return calls


@needs_flock
def test_slurm_array_tasks_run_the_makefile_rules_of_their_step0_run(slurm_sweep, tmp_path):
    summary, env = slurm_sweep
    script = summary["out"]
    groups = _expected_groups(tmp_path / "sweep.mk")
    assert len(groups) == summary["array_size"] == 4  # 2 seeds x (a ce and a dkd step 0)
    assert summary["runs"] == 12
    assert summary["submit"] == [f"jid=$(sbatch --parsable --array=0-3 {script})",
                                 f"sbatch --dependency=afterok:$jid {script} report"]
    text = Path(script).read_text()
    assert subprocess.run(["bash", "-n", script]).returncode == 0
    assert "#SBATCH --signal=B:USR1@120" in text and "#SBATCH --requeue" in text
    assert "#SBATCH --array" not in text  # the submit line gives the range
    for index, expected in enumerate(groups):
        r = _bash(script, env, index=index)
        assert r.returncode == 0, r.stderr
        assert _calls(env) == ["incseg " + " ".join(argv) for argv in expected], index
        assert f"array task {index} complete" in r.stderr
    assert [g[1][g[1].index("--loss") + 1] for g in groups] == ["ce", "dkd", "ce", "dkd"]
    assert (tmp_path / "runs" / "splits" / "voc" / ".10-5-5-ov.sweep-lock").is_file()

    # the report: the Makefile's last target, report.json through a .tmp
    recipe = next(line for line in (tmp_path / "sweep.mk").read_text().splitlines() if " report " in line)
    argv = shlex.split(recipe.removeprefix("\t$(INCSEG) ").partition(" > ")[0])
    r = _bash(script, env, "report")
    assert r.returncode == 0, r.stderr
    assert _calls(env) == ["incseg " + " ".join(argv)]
    report = tmp_path / "runs" / "report"
    assert (report / "report.json").is_file() and not (report / "report.json.tmp").exists()

    # no such array task, no array task at all, an unknown argument: usage, exit 2, nothing run
    r = _bash(script, env, index=4)
    assert r.returncode == 2 and f"{script}: no array task 4: this sweep has 0-3 (sbatch --array=0-3)" in r.stderr
    for args in ((), ("nope",)):
        r = _bash(script, env, *args)
        assert r.returncode == 2 and r.stderr.startswith(f"usage: jid=$(sbatch --parsable --array=0-3 {script})")
    assert _calls(env) == []


@needs_flock
def test_slurm_array_tasks_of_one_task_prepare_its_splits_once(slurm_sweep):
    """Two array tasks of the same task start together: one writes the splits under the lock,
    the other waits for it and skips; a rerun (a requeued job) skips too."""
    summary, env = slurm_sweep
    env = dict(env, FAKE_PREPARE_WRITES="1")
    procs = [subprocess.Popen(["bash", summary["out"]], env=dict(env, SLURM_ARRAY_TASK_ID=str(i)), text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for i in (0, 1)]
    errors = [p.communicate(timeout=60)[1] for p in procs]
    results = [(p.returncode, err) for p, err in zip(procs, errors)]
    assert all(rc == 0 for rc, _ in results), results
    calls = _calls(env)
    assert sum(c.startswith("incseg prepare-splits") for c in calls) == 1, calls
    assert sum("prepare-splits skipped" in err for _, err in results) == 1
    assert _bash(summary["out"], env, index=2).returncode == 0
    assert [c.split()[1] for c in _calls(env)] == ["train-base", "train-step", "train-step"]


@needs_flock
def test_slurm_array_task_stopped_by_usr1_requeues_itself(slurm_sweep):
    """SLURM's warning before the time limit, during a train-step: the stage gets SIGTERM (it
    writes last.pt), then `scontrol requeue`, exit 130, as the templates do."""
    summary, env = slurm_sweep
    env = dict(env, FAKE_BLOCK="train-step", SLURM_JOB_ID="77", SLURM_ARRAY_TASK_ID="1")
    proc = subprocess.Popen(["bash", summary["out"]], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        blocked = Path(env["FAKE_LOG"] + ".blocked")
        deadline = time.monotonic() + 30
        while not blocked.exists():
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()
            time.sleep(0.01)
        proc.send_signal(signal.SIGUSR1)
        assert proc.wait(timeout=30) == 130
        assert "requeued job 77" in proc.stderr.read()
    finally:
        if proc.poll() is None:  # a failed check: the script and its stage
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        proc.stderr.close()
    calls = _calls(env)
    assert calls[-2:] == ["TERM train-step", "scontrol requeue 77"] and calls[-3].startswith("incseg train-step")


def test_sweep_slurm_refuses_without_chain_script(cli, tmp_path, monkeypatch):
    from incseg_cli.stages import sweep

    out = tmp_path / "x.sbatch"
    args = ["sweep", "--format", "slurm", "--out", out, "--data", tmp_path / "VOC2012", "--dataset", "voc", "--task",
            "10-5-5-ov", "--method", "mib"]
    r = cli(*args, "--chain-script", tmp_path / "nope.sh")
    assert r.returncode == 2 and error_line(r.stderr, only=True).startswith(f"error: --chain-script {tmp_path}/nope.sh")
    monkeypatch.setattr(sweep, "default_chain_script", lambda: tmp_path / "gone" / "chain.sh")
    r = cli(*args)
    assert r.returncode == 2 and "error: --chain-script not given" in error_line(r.stderr, only=True)
    spaced = tmp_path / "with space" / "chain.sh"
    spaced.parent.mkdir()
    spaced.write_text("")
    r = cli(*args, "--chain-script", spaced)
    assert r.returncode == 2 and "paths with spaces" in r.stderr
    r = cli(*args, "--format", "nope")
    assert r.returncode == 2 and "'nope' is not one of 'make', 'slurm'" in r.stderr
    assert not out.exists()
