"""torchrun with two processes on two emulated GPUs (issue 18): NCCL on cuda:LOCAL_RANK,
emulated as gloo, every method, evaluation, and ``--device cuda:N`` refused.

One torchrun launch runs the whole chain: each rank calls ``main(argv)`` once per command (the
CLI inside its own process, as the ``cli`` fixture does), with its own exit code and stderr per
command. A launch costs ~7 s of imports on two cores, which the commands themselves do not;
the first command joins the process group (``train-base``, the same ``distributed.init`` as
``train-step``), and torchrun without this driver is covered by test_distributed.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import TOY_TRAIN_ARGS

pytestmark = pytest.mark.slow

TORCHRUN = Path(sys.executable).parent / "torchrun"
ONE = [*TOY_TRAIN_ARGS, "--epochs", "1", "--workers", "0"]

# Runs every command of argv[1] (a JSON list of argv lists) in turn; records each one's exit
# code in codes-RANK.json and its stderr (fd 2) in err-RANK-N.txt under argv[2]. A failure
# other than the last command's ends the process with its code, which makes torchrun end the
# other rank rather than leave it waiting in a collective.
DRIVER = r'''
import json, os, sys
from pathlib import Path
from incseg_cli.cli import main

commands, where = json.loads(Path(sys.argv[1]).read_text()), Path(sys.argv[2])
rank, codes = os.environ["RANK"], []
saved = os.dup(2)
for n, argv in enumerate(commands):
    sys.stderr.flush()
    with open(where / f"err-{rank}-{n}.txt", "w") as err:
        os.dup2(err.fileno(), 2)
        try:
            main(argv)
            code = 0
        except SystemExit as stop:
            code = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
    codes.append(code)
    (where / f"codes-{rank}.json").write_text(json.dumps(codes))
    if code != 0 and n < len(commands) - 1:
        sys.stderr.write((where / f"err-{rank}-{n}.txt").read_text()[-3000:])
        sys.exit(code)
'''


def _torchrun_chain(commands: list[list], where: Path, env: dict) -> tuple[subprocess.CompletedProcess, list]:
    """Run ``commands`` in one two-process torchrun launch; (the launch, per command: (code, stderr))."""
    where.mkdir()
    (where / "driver.py").write_text(DRIVER)
    (where / "commands.json").write_text(json.dumps([[str(a) for a in c] for c in commands]))
    full = {**os.environ, "INCSEG_NO_PROGRESS": "1", "OMP_NUM_THREADS": "1", "INCSEG_EMULATE_CUDA": "2", **env}
    full.pop("INCSEG_DEBUG", None)
    launch = subprocess.run([str(TORCHRUN), "--standalone", "--nproc_per_node=2", str(where / "driver.py"),
                             str(where / "commands.json"), str(where)],
                            capture_output=True, text=True, env=full, timeout=300)
    codes = json.loads((where / "codes-0.json").read_text()) if (where / "codes-0.json").exists() else []
    return launch, [(code, (where / f"err-0-{n}.txt").read_text()) for n, code in enumerate(codes)]


@pytest.mark.skipif(not TORCHRUN.exists(), reason="torchrun missing")
def test_torchrun_on_two_gpus_every_method(toy_root, toy_env, tmp_path):
    """NCCL on cuda:LOCAL_RANK, emulated as gloo; SyncBatchNorm synchronised over it."""
    data = ["--data", toy_root]
    methods = ("ft", "mib", "plop", "alife")
    commands = [
        ["train-base", *data, "--task", "10-10-ov", *ONE, "--amp", "fp16", "--out", tmp_path / "s0"],
        *(["train-step", "--prev", tmp_path / "s0", "--method", method, *data, *ONE, "--out", tmp_path / method]
          for method in methods),
        # WILSON in its own fp16 + GradScaler, from the fp16 CE step 0 (its BCE step 0 is covered in one process)
        ["train-step", "--prev", tmp_path / "s0", "--method", "wilson", *data, *TOY_TRAIN_ARGS,
         "--epochs", "2", "--pseudo-epochs", "1", "--workers", "0", "--out", tmp_path / "wilson"],
        ["evaluate", tmp_path / "mib", *data, "--eval-size", "32", "--workers", "0", "--json"],
        # one GPU per process: --device cuda:N would put both on one, refused in one line
        ["train-base", *data, "--task", "10-10-ov", *ONE, "--device", "cuda:0", "--out", tmp_path / "one"],
    ]
    launch, results = _torchrun_chain(commands, tmp_path / "chain", toy_env)
    names = ["s0", *methods, "wilson", "evaluate", "refused"]
    assert launch.returncode == 0 and len(results) == len(commands), \
        (names[len(results) - 1] if results else None, launch.stderr[-3000:])
    done = dict(zip(names, results))
    assert done["s0"][0] == 0, done["s0"][1][-3000:]
    manifest = json.loads((tmp_path / "s0" / "manifest.json").read_text())
    assert manifest["world_size"] == 2 and manifest["device"] == "cuda:0" and manifest["grad_scaler"] is True
    for method in (*methods, "wilson", "evaluate"):
        assert done[method][0] == 0, (method, done[method][1][-3000:])
    for method in (*methods, "wilson"):
        step = json.loads((tmp_path / method / "manifest.json").read_text())
        assert step["world_size"] == 2 and step["status"] == "complete", method
    evaluation = json.loads(launch.stdout)
    assert evaluation["protocol"]["images"] > 0
    code, err = done["refused"]
    assert code != 0
    assert "under torchrun would put every process on one GPU" in err
    assert not (tmp_path / "one").exists()
