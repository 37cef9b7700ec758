"""incseg doctor: what a new box lacks for the papers' recipes, and the command that fixes each.

Most checks call the library in this process (one torch import for all); the CLI runs in a
subprocess only where the process matters: the exit code, the JSON on stdout, the emulation
switched on by the environment, and that nothing imports torch before the options are valid.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import error_line
from incseg_cli.stages.doctor import IABN_WEIGHTS, TORCHVISION_WEIGHTS, diagnose, format_report

VOC_DIR = Path("data/VOCdevkit/VOC2012")


def _doctor(cwd: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """``incseg doctor ARGS`` in ``cwd``, with torch's cache there: the machine's own cache
    (which may hold the weights) must not decide the outcome."""
    full = dict(os.environ, INCSEG_NO_PROGRESS="1", TORCH_HOME=str(cwd / "torch-home"))
    for name in ("INCSEG_DEBUG", "INCSEG_EMULATE_CUDA", "INCSEG_WEIGHTS"):
        full.pop(name, None)
    full.update(env or {})
    return subprocess.run([sys.executable, "-m", "incseg_cli", "doctor", *args], capture_output=True, text=True,
                          cwd=cwd, env=full, timeout=120)


def _weights(hub: Path, data: Path) -> tuple[Path, Path]:
    """Both weight files where training looks: torch's cache, ./data/weights."""
    torchvision = hub / "checkpoints" / TORCHVISION_WEIGHTS
    iabn = data / "weights" / IABN_WEIGHTS
    for path in (torchvision, iabn):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"not really weights")  # doctor checks presence, not contents
    return torchvision, iabn


@pytest.fixture
def box(tmp_path, monkeypatch) -> Path:
    """This process on a bare box of its own: cwd (./data/weights is a place training looks),
    torch's cache and no INCSEG_WEIGHTS all under tmp_path."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    monkeypatch.delenv("INCSEG_WEIGHTS", raising=False)
    return tmp_path


def _diagnose(min_free_gb: float = 50) -> dict:
    return diagnose(Path("data"), Path("runs"), min_free_gb=min_free_gb)


def _whats(report: dict) -> list[str]:
    return [m["what"] for m in report["missing"]]


def test_bare_box_json_lists_what_is_missing_with_the_fixing_commands(tmp_path):
    result = _doctor(tmp_path, "--json", env={"CUDA_VISIBLE_DEVICES": ""})  # no GPU even on a GPU box
    assert result.returncode == 3, result.stderr
    line = error_line(result.stderr, only=True)
    assert line.startswith("error: not ready for the papers' recipes: missing a CUDA GPU")
    report = json.loads(result.stdout)
    assert report["ready"] is False and report["gpus"] == [] and report["cuda_available"] is False
    assert report["python"]["version"] and report["torch"]["version"]
    fixes = {m["what"]: m for m in report["missing"]}
    assert set(fixes) == {"a CUDA GPU", "a dataset", f"backbone weights {TORCHVISION_WEIGHTS}",
                          f"backbone weights {IABN_WEIGHTS}"}
    assert fixes["a CUDA GPU"]["why"].startswith("CUDA is not available")
    assert "nvidia-smi" in fixes["a CUDA GPU"]["fix"]
    assert fixes["a dataset"]["fix"] == "incseg download voc sbd --root data"
    assert fixes[f"backbone weights {IABN_WEIGHTS}"]["fix"] == "incseg download weights --root data"
    assert fixes[f"backbone weights {TORCHVISION_WEIGHTS}"]["fix"] == "incseg download weights --root data"
    assert {k: d["found"] for k, d in report["datasets"].items()} == {"voc": False, "ade": False, "coco": False}
    runs = report["disk"]["runs_root"]
    assert runs["required_gb"] == 50 and runs["exists"] is False and runs["free_gb"] > 0


@pytest.mark.parametrize("capability, fast", [((9, 0), True), ((8, 6), True), ((7, 5), False), ((7, 0), False)])
def test_emulated_gpus_report_bf16_and_tf32_by_capability(emulate_cuda, box, capability, fast):
    emulate_cuda(2, capability)
    report = _diagnose()
    assert report["cuda_available"] and report["cuda_emulated"]
    assert [(g["index"], g["capability"], g["bf16"], g["tf32"]) for g in report["gpus"]] == [
        (i, f"{capability[0]}.{capability[1]}", fast, fast) for i in range(2)]
    assert report["gpus"][0]["memory_gib"] == 80.0
    assert "a CUDA GPU" not in _whats(report)
    text = format_report(report)
    assert f"sm{capability[0]}{capability[1]}" in text and ("bf16 native" in text) == fast


def test_emulated_v100_ready_box_reports_no_bf16_no_tf32(tmp_path, voc_root_factory):
    """The CLI under INCSEG_EMULATE_CUDA=1,7.0 with everything else in place: the only thing
    that can be missing is a torch build that still runs sm70 (CUDA 13 dropped Volta)."""
    voc_root_factory(str(VOC_DIR))
    _weights(tmp_path / "torch-home" / "hub", tmp_path / "data")
    result = _doctor(tmp_path, "--json", "--min-free-gb", "0", env={"INCSEG_EMULATE_CUDA": "1,7.0"})
    report = json.loads(result.stdout)
    gpu = report["gpus"][0]
    assert (gpu["capability"], gpu["bf16"], gpu["tf32"]) == ("7.0", False, False)
    build_fits = gpu["torch_supports"] and "cudnn_error" not in report["torch"]
    assert _whats(report) == ([] if build_fits else ["a torch build for these GPUs"])
    assert result.returncode == (0 if build_fits else 3), result.stderr
    if not build_fits:
        assert "pytorch.org" in report["missing"][0]["fix"]


def test_ready_box_exits_0_with_voc_found_and_the_weights_present(tmp_path, voc_root_factory):
    voc_root_factory(str(VOC_DIR), n_train=5, n_val=2)
    torchvision, iabn = _weights(tmp_path / "torch-home" / "hub", tmp_path / "data")
    result = _doctor(tmp_path, "--json", "--min-free-gb", "0", env={"INCSEG_EMULATE_CUDA": "1"})
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["ready"] is True and report["missing"] == []
    voc = report["datasets"]["voc"]
    assert voc["found"] and voc["usable"] and voc["root"] == str(VOC_DIR)
    assert voc["summary"] == "usable: train 5 images of 10,582, val 2 images of 1,449"
    assert voc["splits"]["train"]["ids"] == 5
    assert not report["datasets"]["ade"]["found"]
    assert report["weights"]["torchvision-resnet101"]["path"] == str(torchvision)
    assert report["weights"]["inplace-abn-resnet101"]["path"] == str(iabn.relative_to(tmp_path))


def test_weights_where_training_looks_and_a_copy_it_would_not_see(box, monkeypatch):
    data = box / "data"
    _weights(box / "torch-home" / "hub", data)
    report = _diagnose()
    assert {k: w["path"] for k, w in report["weights"].items()} == {
        "torchvision-resnet101": str(box / "torch-home" / "hub" / "checkpoints" / TORCHVISION_WEIGHTS),
        "inplace-abn-resnet101": str(Path("data") / "weights" / IABN_WEIGHTS)}
    assert not [w for w in _whats(report) if w.startswith("backbone weights")]

    # Copies under the data root where --backbone-weights imagenet / iabn would not look:
    # present, but the recipes as typed would not use them, so missing with the fix.
    (box / "torch-home").rename(box / "old-cache")
    (data / "weights" / IABN_WEIGHTS).rename(data / IABN_WEIGHTS)
    (box / "old-cache" / "hub" / "checkpoints" / TORCHVISION_WEIGHTS).rename(data / "weights" / TORCHVISION_WEIGHTS)
    report = _diagnose()
    fixes = {m["what"]: m for m in report["missing"]}
    torchvision = fixes[f"backbone weights {TORCHVISION_WEIGHTS}"]
    assert torchvision["why"].startswith(f"found only at {Path('data') / 'weights' / TORCHVISION_WEIGHTS}")
    cache = box / "torch-home" / "hub" / "checkpoints"
    assert torchvision["fix"] == f"mkdir -p {cache} && cp {Path('data') / 'weights' / TORCHVISION_WEIGHTS} {cache}/"
    assert fixes[f"backbone weights {IABN_WEIGHTS}"]["fix"] == f"export INCSEG_WEIGHTS={data}"
    assert "where --backbone-weights iabn does not look" in format_report(report)

    # ... which training then finds (models/iabn.py reads INCSEG_WEIGHTS)
    monkeypatch.setenv("INCSEG_WEIGHTS", str(data))
    assert _diagnose()["weights"]["inplace-abn-resnet101"]["path"] == str(data / IABN_WEIGHTS)
    monkeypatch.delenv("INCSEG_WEIGHTS")

    (data / IABN_WEIGHTS).write_bytes(b"")  # an interrupted copy
    iabn = _diagnose()["weights"]["inplace-abn-resnet101"]
    assert iabn["path"] is None and iabn["empty"] == [str(Path("data") / IABN_WEIGHTS)]


def test_a_broken_dataset_root_shows_check_data_summary(box, voc_root_factory):
    (box / "data" / "ADEChallengeData2016").mkdir(parents=True)
    report = _diagnose()
    ade = report["datasets"]["ade"]
    assert ade["found"] and not ade["usable"] and ade["errors"] and ade["summary"].startswith("not usable: ")
    dataset = next(m for m in report["missing"] if m["what"] == "a dataset")
    assert "ade at" in dataset["why"]
    assert any("incseg check-data --data" in w and "--dataset ade" in w for w in report["warnings"])

    # one usable dataset is enough; the broken one stays a warning
    voc_root_factory(str(VOC_DIR), n_train=3, n_val=2)
    report = _diagnose()
    assert report["datasets"]["voc"]["usable"] and "a dataset" not in _whats(report)
    assert any("ade at" in w for w in report["warnings"])


def test_free_disk_threshold_at_the_runs_root(box):
    (box / "runs").mkdir()
    report = _diagnose(min_free_gb=1e12)
    runs = report["disk"]["runs_root"]
    assert runs["exists"] and not runs["ok"] and "measured_at" not in runs
    disk = next(m for m in report["missing"] if m["what"] == "free disk at the runs root")
    assert "needs 1e+12 GB" in disk["why"] and "--runs-root" in disk["fix"]
    assert "free disk at the runs root" not in _whats(_diagnose(min_free_gb=0))


def test_bad_options_are_one_error_line_before_torch_is_imported(tmp_path):
    (tmp_path / "afile").write_text("")
    script = (
        "import json, sys\n"
        "from incseg_cli.cli import main\n"
        "codes = []\n"
        "for args in json.loads(sys.argv[1]):\n"
        "    try:\n"
        "        main(args)\n"
        "    except SystemExit as stop:\n"
        "        codes.append(stop.code)\n"
        "print(json.dumps({'codes': codes, 'torch': 'torch' in sys.modules}))\n"
    )
    cases = [["doctor", "--help"], ["doctor", "--data-root", "afile"], ["doctor", "--runs-root", "afile/runs"],
             ["doctor", "--min-free-gb", "-1"]]
    env = dict(os.environ, INCSEG_NO_PROGRESS="1")
    env.pop("INCSEG_DEBUG", None)
    env.pop("INCSEG_EMULATE_CUDA", None)
    result = subprocess.run([sys.executable, "-c", script, json.dumps(cases)], capture_output=True, text=True,
                            cwd=tmp_path, env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    outcome = json.loads(result.stdout.strip().splitlines()[-1])
    assert outcome == {"codes": [0, 3, 9, 2], "torch": False}
    errors = [line for line in result.stderr.splitlines() if line.strip()]
    assert "Traceback" not in result.stderr and len(errors) == 3 and all(e.startswith("error: ") for e in errors)
    assert errors[0] == "error: --data-root afile: afile is a file, not a directory"
    assert errors[1] == f"error: --runs-root afile/runs: {tmp_path / 'afile'} is a file, not a directory"
