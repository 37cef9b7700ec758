"""``incseg doctor``: can this box run the papers' recipes, and if not, what fixes it?

The first command on a new machine. It reports the software (python, torch, CUDA, cuDNN,
NCCL), each GPU, free disk at the data and runs roots, the datasets found under the data
root (with ``check-data``'s quick summary) and the backbone weights on disk, and lists each
missing requirement with the command that fixes it.

Ready means: a CUDA GPU this torch build runs, at least one usable dataset, both backbone
weight files where training looks for them (the papers' WILSON/MiB/PLOP recipes start from
InPlace-ABN's ResNet-101, ALIFE's from torchvision's), and ``MIN_FREE_GB`` free at the runs
root.

torch is imported inside ``diagnose``, never at module import: the CLI validates the
options before paying for it, and a broken torch install is itself a finding.
"""

from __future__ import annotations

import os
import platform
import shlex
import shutil
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from incseg_cli.config import option, validate
from incseg_cli.data.check import check_data
from incseg_cli.errors import InputError, OutputError
from incseg_cli.limits import NON_NEGATIVE
from incseg_cli.version import __version__

# A ResNet-101 DeepLab checkpoint is ~0.25 GB, a resumable last.pt with SGD momentum ~0.5 GB;
# a 15-1 chain keeps six stages of both, ALIFE adds feature banks of several GB, and
# evaluate --save-predictions a mask per val image: 50 GB holds a few paper chains.
MIN_FREE_GB = 50.0

# Where ``incseg download`` puts each dataset under the data root (and Makefile's defaults).
DATASET_DIRS: dict[str, str] = {"voc": "VOCdevkit/VOC2012", "ade": "ADEChallengeData2016", "coco": "coco"}
DOWNLOAD_NAMES: dict[str, str] = {"voc": "voc sbd", "ade": "ade", "coco": "coco"}

TORCHVISION_WEIGHTS = "resnet101-63fe2227.pth"  # IMAGENET1K_V1, models/backbones.py
IABN_WEIGHTS = "resnet101_iabn_sync.pth.tar"  # InPlace-ABN's, from PLOP's release v1.0
WEIGHTS: dict[str, dict[str, str]] = {
    "torchvision-resnet101": {"file": TORCHVISION_WEIGHTS, "used_by": "ALIFE",
                              "option": "--backbone-weights imagenet"},
    "inplace-abn-resnet101": {"file": IABN_WEIGHTS, "used_by": "WILSON, MiB, PLOP",
                              "option": "--backbone-weights iabn"},
}
IABN_DIR_ENV = "INCSEG_WEIGHTS"  # models/iabn.py: the first folder --backbone-weights iabn searches
# Folders under --data-root where a copy may lie that training does not search (``pretrained/``
# is where the MiB and PLOP code look): found there, doctor says how to make training see it.
WEIGHT_SUBDIRS = ("weights", "", "pretrained")

GB = 1e9


def _nearest_existing(path: Path) -> Path:
    """``path`` or its closest existing ancestor: a root not created yet lands on that disk."""
    path = path.absolute()
    while not path.exists() and path.parent != path:
        path = path.parent
    return path


@dataclass(kw_only=True)
class DoctorOptions:
    """What ``incseg doctor`` takes."""

    data_root: Path = option(Path("data"), help="Where the datasets are (VOCdevkit/VOC2012, ADEChallengeData2016, "
                                                "coco) and where `incseg download` puts them.")
    runs_root: Path = option(Path("runs"), help="Where the runs will be written; its disk needs --min-free-gb free.")
    min_free_gb: float = option(MIN_FREE_GB, metavar="<GB>", limit=NON_NEGATIVE,
                                help="Free disk the runs root needs (a few paper chains' checkpoints, banks and "
                                     "predictions).")


def doctor(options: DoctorOptions) -> dict[str, Any]:
    """``incseg doctor``: ``diagnose`` with the command's options."""
    o = validate(options)
    return diagnose(o.data_root, o.runs_root, min_free_gb=o.min_free_gb)


def check_roots(data_root: Path, runs_root: Path) -> None:
    """One clear error before any work when a root cannot be a directory."""
    for flag, root, error in (("--data-root", data_root, InputError), ("--runs-root", runs_root, OutputError)):
        where = _nearest_existing(root)
        if not where.is_dir():
            what = root if where == root.absolute() else where
            raise error(f"{flag} {root}: {what} is a file, not a directory")


def _disk(root: Path, required_gb: float | None) -> dict[str, Any]:
    where = _nearest_existing(root)
    entry: dict[str, Any] = {"path": str(root), "exists": root.is_dir()}
    if where != root.absolute():
        entry["measured_at"] = str(where)
    try:
        usage = shutil.disk_usage(where)
    except OSError as err:
        entry.update(free_gb=None, error=f"{type(err).__name__}: {err.strerror or err}")
    else:
        entry.update(free_gb=round(usage.free / GB, 1), total_gb=round(usage.total / GB, 1))
    if required_gb is not None:
        entry["required_gb"] = required_gb
        entry["ok"] = entry["free_gb"] is not None and entry["free_gb"] >= required_gb
    return entry


def _cudnn_text(version: int | None) -> str | None:
    """cuDNN's integer version as text: 8.x encodes M*1000+m*100+p, 9.x M*10000+m*100+p."""
    if not version:
        return None
    major, rest = (version // 10000, version % 10000) if version >= 90000 else (version // 1000, version % 1000)
    return f"{major}.{rest // 100}.{rest % 100}"


def _software() -> tuple[dict[str, Any], Any]:
    """The torch section and the torch module (None when it cannot be imported)."""
    try:
        import torch
    except Exception as err:  # a broken install is a finding, not a crash
        return {"version": None, "error": f"{type(err).__name__}: {err}"}, None
    info: dict[str, Any] = {"version": torch.__version__, "cuda": torch.version.cuda, "cudnn": None, "nccl": None}
    try:
        info["cudnn"] = _cudnn_text(torch.backends.cudnn.version())
    except Exception as err:  # e.g. a cuDNN too new for the GPU: every convolution would fail alike
        info["cudnn_error"] = (str(err).strip().splitlines() or [type(err).__name__])[0]
        try:
            info["cudnn"] = _cudnn_text(torch._C._cudnn.getVersionInt())
        except Exception:  # no cuDNN library at all (a CPU build)
            pass
    try:
        nccl = torch.cuda.nccl.version()
        info["nccl"] = ".".join(map(str, nccl)) if isinstance(nccl, tuple) else str(nccl)
    except Exception:
        pass
    return info, torch


def _gpus(torch: Any) -> tuple[list[dict[str, Any]], str | None, bool]:
    """(GPUs, why there is none, emulated). torch warns, not raises, when the driver is
    missing or too old: that warning is the most useful thing doctor can say about it."""
    from incseg_cli.engine.device import native_bf16, tf32_active  # imports torch, which doctor may lack

    emulation = sys.modules.get("incseg_cli.testing.cuda")  # imported only when INCSEG_EMULATE_CUDA asks
    emulated = emulation is not None and emulation.active() is not None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        available = torch.cuda.is_available()
        count = torch.cuda.device_count() if available else 0
    if not available or count == 0:
        said = next((str(w.message).strip().splitlines()[0] for w in caught if str(w.message).strip()), None)
        if torch.version.cuda is None:
            why = f"CUDA is not available: torch {torch.__version__} is a CPU-only build"
        elif said:
            why = f"CUDA is not available: {said}"
        else:
            why = f"CUDA is not available to torch {torch.__version__} (built for CUDA {torch.version.cuda})"
        if os.environ.get("CUDA_VISIBLE_DEVICES") is not None and not os.environ["CUDA_VISIBLE_DEVICES"].strip():
            why += "; CUDA_VISIBLE_DEVICES is empty"
        return [], why, emulated
    arches = _arches(torch)
    gpus = []
    for index in range(count):
        device = torch.device("cuda", index)
        props = torch.cuda.get_device_properties(index)
        gpus.append({
            "index": index,
            "name": props.name,
            "capability": f"{props.major}.{props.minor}",
            "memory_gib": round(props.total_memory / 2**30, 1),
            "bf16": native_bf16(device),
            "tf32": tf32_active(device, "on"),
            "torch_supports": _arch_supported((props.major, props.minor), arches),
        })
    return gpus, None, emulated


def _arches(torch: Any) -> list[str]:
    try:
        return list(torch.cuda.get_arch_list())
    except Exception:
        return []


def _arch_supported(capability: tuple[int, int], arches: list[str]) -> bool:
    """Whether this torch build has kernels for a GPU: a cubin sm_XY runs on XY and later
    minors of the same major, PTX compute_XY is compiled at load for XY and later. An empty
    list (a build that does not say) is taken as yes."""
    if not arches:
        return True
    cc = 10 * capability[0] + capability[1]
    for arch in arches:
        kind, _, number = arch.partition("_")
        digits = "".join(ch for ch in number if ch.isdigit())  # sm_90a, sm_100f
        if not digits:
            continue
        code = int(digits)
        if (kind == "sm" and code // 10 == cc // 10 and code <= cc) or (kind == "compute" and code <= cc):
            return True
    return False


def _datasets(data_root: Path) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = {}
    for name, sub in DATASET_DIRS.items():
        root = data_root / sub
        entry: dict[str, Any] = {"root": str(root), "found": root.is_dir(), "usable": False}
        if root.is_dir():
            report = check_data(root, dataset=name, deep=False)
            entry.update(usable=report["usable"], errors=report["errors"], warnings=report["warnings"],
                         splits={split: {"ids": s.get("ids"), "expected": s.get("expected"), "list": s.get("list")}
                                 for split, s in report["splits"].items()})
            entry["summary"] = _dataset_summary(report)
        found[name] = entry
    return found


def _dataset_summary(report: dict[str, Any]) -> str:
    parts = [f"{split} {s['ids']:,} images" + (f" of {s['expected']:,}" if s.get("expected") not in (None, s["ids"])
                                               else "")
             for split, s in report["splits"].items() if s.get("ids")]
    if report["usable"]:
        return "usable: " + ", ".join(parts)
    more = f" (and {len(report['errors']) - 1} more)" if len(report["errors"]) > 1 else ""
    return f"not usable: {report['errors'][0]}{more}"


def _training_dirs(torch: Any, hub_dir: Path) -> dict[str, list[Path]]:
    """Where the training stages themselves look for each file: only a copy there lets the
    recipes run as typed (``make voc-15-5``) without a path on the command line."""
    iabn_dirs = [hub_dir / "checkpoints"]
    if torch is not None:
        from incseg_cli.models.iabn import search_dirs  # imports torch

        iabn_dirs = search_dirs()
    # torchvision's ``get_state_dict`` (``--backbone-weights imagenet``) reads $TORCH_HOME/hub/checkpoints only
    return {"torchvision-resnet101": [hub_dir / "checkpoints"], "inplace-abn-resnet101": iabn_dirs}


def _first_file(candidates: list[Path]) -> Path | None:
    return next((c for c in candidates if c.is_file() and c.stat().st_size > 0), None)


def _weights(data_root: Path, training_dirs: dict[str, list[Path]]) -> dict[str, dict[str, Any]]:
    """Each weights file: where training finds it, or else a copy under the data root that
    training would not see (then ``fix`` says how to make it see it)."""
    result: dict[str, dict[str, Any]] = {}
    for key, spec in WEIGHTS.items():
        used = training_dirs[key]
        seen = {d.absolute() for d in used}
        other = [d for d in (data_root / sub for sub in WEIGHT_SUBDIRS) if d.absolute() not in seen]
        found = _first_file([d / spec["file"] for d in used])
        elsewhere = None if found else _first_file([d / spec["file"] for d in other])
        entry: dict[str, Any] = {"file": spec["file"], "used_by": spec["used_by"], "option": spec["option"],
                                 "path": str(found) if found else None, "searched": [str(d) for d in used]}
        if elsewhere is not None:
            entry["elsewhere"] = str(elsewhere)
            entry["fix"] = (f"export {IABN_DIR_ENV}={shlex.quote(str(elsewhere.parent.absolute()))}"
                            if key == "inplace-abn-resnet101" else
                            f"mkdir -p {shlex.quote(str(used[0]))} && cp {shlex.quote(str(elsewhere))} "
                            f"{shlex.quote(str(used[0]))}/")
        empty = [str(d / spec["file"]) for d in used + other if (d / spec["file"]).is_file()
                 and (d / spec["file"]).stat().st_size == 0]
        if empty and found is None:
            entry["empty"] = empty  # an interrupted copy: say so rather than "not found"
        result[key] = entry
    return result


def _hub_dir(torch: Any) -> Path:
    """torch's hub directory (``TORCH_HOME``), computed as torch does when it cannot be imported."""
    if torch is not None:
        return Path(torch.hub.get_dir())
    home = os.environ.get("TORCH_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "torch")
    return Path(home).expanduser() / "hub"


def diagnose(data_root: Path, runs_root: Path, min_free_gb: float = MIN_FREE_GB) -> dict[str, Any]:
    """The whole report: ``ready``, each section, and ``missing`` (what, why, fix)."""
    check_roots(data_root, runs_root)
    torch_info, torch = _software()
    if torch is None:
        gpus, no_gpu, emulated = [], "CUDA is not available: torch cannot be imported", False
    else:
        gpus, no_gpu, emulated = _gpus(torch)
    hub_dir = _hub_dir(torch)
    report: dict[str, Any] = {
        "ready": False,
        "incseg": __version__,
        "python": {"version": platform.python_version(), "executable": sys.executable},
        "platform": platform.platform(),
        "torch": torch_info,
        "cuda_available": bool(gpus),
        "cuda_emulated": emulated,
        "gpus": gpus,
        "torch_arches": _arches(torch) if gpus else [],
        "disk": {"data_root": _disk(data_root, None), "runs_root": _disk(runs_root, min_free_gb)},
        "datasets": _datasets(data_root),
        "weights": _weights(data_root, _training_dirs(torch, hub_dir)),
        "torch_hub_dir": str(hub_dir),
    }
    if no_gpu is not None:
        report["no_gpu_reason"] = no_gpu
    report["missing"] = _missing(report, data_root)
    report["warnings"] = _warnings(report, data_root)
    report["ready"] = not report["missing"]
    return report


def _missing(report: dict[str, Any], data_root: Path) -> list[dict[str, str]]:
    missing: list[dict[str, str]] = []
    root_arg = shlex.quote(str(data_root))  # the fixes are commands to paste
    torch_info = report["torch"]
    if torch_info["version"] is None:
        missing.append({"what": "torch", "why": f"torch cannot be imported ({torch_info['error']})",
                        "fix": "make install"})
    elif not report["gpus"]:
        if torch_info["cuda"] is None:
            fix = ("install a CUDA build of torch (https://pytorch.org/get-started/locally/), then check the driver "
                   "with `nvidia-smi`")
        else:
            fix = "nvidia-smi (checks the NVIDIA driver and lists the GPUs it sees; CUDA_VISIBLE_DEVICES may hide them)"
        missing.append({"what": "a CUDA GPU", "why": report["no_gpu_reason"], "fix": fix})
    unsupported = [g for g in report["gpus"] if not g["torch_supports"]]
    problems = [f"GPU {g['index']} {g['name']} is sm{g['capability'].replace('.', '')}, this torch has kernels for "
                f"{' '.join(report['torch_arches'])}" for g in unsupported]
    if report["gpus"] and torch_info.get("cudnn_error"):
        problems.append(f"cuDNN {torch_info.get('cudnn') or ''}: {torch_info['cudnn_error']}")
    if problems:
        old = any(tuple(map(int, g["capability"].split("."))) < (7, 5) for g in unsupported)
        missing.append({"what": "a torch build for these GPUs", "why": "; ".join(problems),
                        "fix": "install a torch build whose CUDA and cuDNN support them: "
                               "https://pytorch.org/get-started/locally/"
                               + (" (GPUs below sm75, e.g. V100, need a CUDA 12 build)" if old else "")})
    datasets = report["datasets"]
    if not any(d["usable"] for d in datasets.values()):
        broken = [f"{name} at {d['root']}: {d['summary']}" for name, d in datasets.items() if d["found"]]
        why = ("; ".join(broken) if broken
               else f"none of {', '.join(str(data_root / s) for s in DATASET_DIRS.values())} exists")
        missing.append({"what": "a dataset", "why": why,
                        "fix": f"incseg download voc sbd --root {root_arg}"})
    for entry in report["weights"].values():
        if entry["path"] is not None:
            continue
        if "elsewhere" in entry:
            why = f"found only at {entry['elsewhere']}; {entry['option']} looks in {', '.join(entry['searched'])}"
            fix = entry["fix"]
        else:
            empty = f"; {', '.join(entry['empty'])} is empty" if entry.get("empty") else ""
            why, fix = f"not in {', '.join(entry['searched'])}{empty}", f"incseg download weights --root {root_arg}"
        missing.append({"what": f"backbone weights {entry['file']}", "why": why, "fix": fix})
    runs = report["disk"]["runs_root"]
    if not runs["ok"]:
        free = "unknown" if runs["free_gb"] is None else f"{runs['free_gb']:g} GB"
        missing.append({"what": "free disk at the runs root",
                        "why": f"{free} free at {runs.get('measured_at', runs['path'])}, "
                               f"needs {runs['required_gb']:g} GB",
                        "fix": "free space there, or point the runs at a larger disk: incseg doctor --runs-root DIR "
                               "(and RUNS=DIR for make, --out DIR/... for incseg)"})
    return missing


def _warnings(report: dict[str, Any], data_root: Path) -> list[str]:
    """What does not stop the recipes but will bite later."""
    out = []
    for name, d in report["datasets"].items():
        if d["found"] and not d["usable"]:
            out.append(f"{name} at {d['root']} is {d['summary']}; incseg check-data --data {shlex.quote(d['root'])} "
                       f"--dataset {name} --json lists the problems, incseg download {DOWNLOAD_NAMES[name]} "
                       f"--root {shlex.quote(str(data_root))} replaces it")
    if report["cuda_emulated"]:
        out.append("the GPUs are emulated on the CPU (INCSEG_EMULATE_CUDA): a test harness, not a GPU")
    return out


def format_report(report: dict[str, Any]) -> str:
    """The report for a person: one section per line group, then the verdict."""
    lines = [f"incseg   {report['incseg']}",
             f"python   {report['python']['version']} ({report['python']['executable']})"]
    t = report["torch"]
    if t["version"] is None:
        lines.append(f"torch    cannot be imported: {t['error']}")
    else:
        lines.append(f"torch    {t['version']}, CUDA {t['cuda'] or '-'}, cuDNN {t['cudnn'] or '-'}, "
                     f"NCCL {t['nccl'] or '-'}")
    if report["gpus"]:
        for i, g in enumerate(report["gpus"]):
            head = "GPUs" if i == 0 else ""
            lines.append(f"{head:<8} {g['index']}: {g['name']}, sm{g['capability'].replace('.', '')}, "
                         f"{g['memory_gib']:g} GiB, bf16 {'native' if g['bf16'] else 'emulated (slow)'}, "
                         f"TF32 {'yes' if g['tf32'] else 'no'}")
    else:
        lines.append(f"GPUs     none: {report.get('no_gpu_reason', '')}")
    for i, (label, d) in enumerate((("data", report["disk"]["data_root"]), ("runs", report["disk"]["runs_root"]))):
        free = "?" if d["free_gb"] is None else f"{d['free_gb']:g} GB free"
        where = "" if d["exists"] else f", not created yet: measured at {d.get('measured_at', d['path'])}"
        need = f", needs {d['required_gb']:g} GB" if "required_gb" in d else ""
        lines.append(f"{'disk' if i == 0 else '':<8} --{label}-root {d['path']}: {free}{need}{where}")
    for i, (name, d) in enumerate(report["datasets"].items()):
        state = d["summary"] if d["found"] else "not found"
        lines.append(f"{'datasets' if i == 0 else '':<8} {name} {d['root']}: {state}")
    for i, w in enumerate(report["weights"].values()):
        state = w["path"] or (f"only at {w['elsewhere']}, where {w['option']} does not look" if "elsewhere" in w
                              else "not found")
        lines.append(f"{'weights' if i == 0 else '':<8} {w['file']} ({w['used_by']}, {w['option']}): {state}")
    for warning in report["warnings"]:
        lines.append(f"warning: {warning}")
    if report["ready"]:
        lines.append("ready: this box can run the papers' recipes")
    else:
        lines.append("not ready for the papers' recipes; missing:")
        for m in report["missing"]:
            lines.append(f"  - {m['what']}: {m['why']}")
            lines.append(f"    fix: {m['fix']}")
    return "\n".join(lines)


def failure_message(report: dict[str, Any]) -> str:
    """The one ``error:`` line of a box that is not ready."""
    return f"not ready for the papers' recipes: missing {'; '.join(m['what'] for m in report['missing'])}"
