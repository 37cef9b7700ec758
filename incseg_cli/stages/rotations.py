"""fit-rotations and rotate-bank: ALIFE Step 2-2 (alife.md §3.9, §5).

fit-rotations trains one Cayley rotation per class of a bank, mapping the features of the
stage t−1 model (--prev, whose space the bank is in) to those of the Step-1 model of stage t
(--current), on the stage-t training images; the shared training loop runs it (the rotation
module is the "model"), so Ctrl-C, ``<rotations>.last.pt`` and resuming work as for
training. It writes the rotations file and a new bank with every vector rotated, m̂ = R_c m
(no centring offset, as coded, §10.6). rotate-bank applies a rotations file to a bank.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from incseg_cli import __version__, presets
from incseg_cli.console import RunFiles, log, logs_beside
from incseg_cli.data.dataset import SegmentationDataset
from incseg_cli.data.transforms import TrainTransform
from incseg_cli.engine.checkpoint import Checkpoint, load_checkpoint, load_sealed, model_from_checkpoint, save_sealed
from incseg_cli.engine.optim import PolyLR, build_optimizer
from incseg_cli.engine.speed import prepare_models
from incseg_cli.engine.stage import amp_dtype, make_train_loader, resolve_device, seed_everything
from incseg_cli.engine.trainer import Trainer
from incseg_cli.errors import CorruptFileError, IncompatibleError, OutputExistsError
from incseg_cli.engine.lock import locked
from incseg_cli.engine.rundir import input_paths
from incseg_cli.fileio import check_writable, refuse_overlap, sha256_file, sha256_json
from incseg_cli.limits import check_options
from incseg_cli.memory import (
    BankWriter,
    FeatureBank,
    check_bank_fits,
    existing_bank,
    feature_sources,
    read_bank,
    single_process,
    space_name,
)
from incseg_cli.methods.alife import RotationFitting, paper_setting
from incseg_cli.methods.step import freeze
from incseg_cli.models.rotations import CayleyRotations, cayley_apply, num_params
from incseg_cli.stages.common import check_files, check_step_parent, step_data
from incseg_cli.tasks import Task

FORMAT = "incseg-rotations"
VERSION = 1
PARAMETRISATION = ("Cayley: u_c = strict upper triangle of U_c (row-major triu_indices), "
                   "S_c = (U_c - U_c^T)/2, R_c = (I - S_c)(I + S_c)^-1")
VOLATILE = {"workers", "device", "force", "json_out", "out_rotations", "out_bank"}  # what does not change the result
PRESET_KEYS = ("batch_size", "crop_size", "scale_min", "scale_max", "workers")
# alife.md §5.3: Adam 1e-2 (L2 weight decay 1e-4, from the step-1 config), 10 epochs, τ 10.
ROTATION_DEFAULTS = {"epochs": 10, "lr": 1e-2, "weight_decay": 1e-4, "lr_power": 0.9, "tau": 10.0}


# -- the rotations file ------------------------------------------------------------------------
def save_rotations(path: str | Path, params: torch.Tensor, header: dict[str, Any]) -> None:
    """Plain tensors and a plain-data header: loads with ``torch.load(weights_only=True)``."""
    save_sealed({"header": dict(header), "params": params.detach().cpu().float().contiguous()}, path, "header")


def load_rotations(path: str | Path) -> tuple[dict[str, Any], torch.Tensor]:
    path = Path(path)
    obj = load_sealed(path, "rotations file", "header")
    header = obj.get("header") if isinstance(obj, dict) else None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise CorruptFileError(f"{path}: not an incseg rotations file (no {FORMAT} header)")
    if int(header.get("version", 0)) > VERSION:
        raise IncompatibleError(f"{path}: rotations format {header['version']} is newer than this incseg")
    params = obj.get("params")
    classes, dim = header.get("classes"), header.get("feature_dim")
    if not torch.is_tensor(params) or not isinstance(classes, list) or not isinstance(dim, int):
        raise CorruptFileError(f"{path}: rotations file without params, classes or feature_dim")
    if tuple(params.shape) != (len(classes), num_params(dim)):
        raise CorruptFileError(f"{path}: params of shape {list(params.shape)}, its header declares "
                               f"{len(classes)} classes × {num_params(dim)} (D = {dim})")
    if not torch.isfinite(params).all():
        raise CorruptFileError(f"{path}: rotation parameters hold NaN or Inf")
    return header, params


# -- rotating a bank -----------------------------------------------------------------------------
def write_rotated(bank: FeatureBank, params: torch.Tensor, out: Path, *, step: int, source_sha: str,
                  source_path: str, extra: dict[str, Any]) -> None:
    """A new bank with m̂ = R_c m for every vector, in the space of ``step``."""
    attrs = {**{k: v for k, v in bank.attrs.items() if k not in ("format", "version", "classes")},
             "step": step, "space": space_name(step), "source_checkpoint_sha256": source_sha,
             "source_checkpoint": source_path, "rotated_from": str(bank.path), **extra}
    dim = bank.feature_dim
    with BankWriter(out, attrs) as writer, torch.no_grad():
        for row, entry in enumerate(bank.classes.values()):
            vectors = torch.from_numpy(entry.features).unsqueeze(0)
            rotated = cayley_apply(params[row : row + 1].double(), dim, vectors.double())[0].float()
            writer.add(entry.label, rotated, entry.name, "rotated", entry.step)


@logs_beside("out")
def rotate_bank(given: dict[str, Any]) -> dict[str, Any]:
    """Apply a rotations file to a bank holding the same classes in the space it maps from."""
    header, params = load_rotations(given["rotations"])
    bank = read_bank(given["bank"])
    out = Path(given["out"])
    refuse_overlap(out, "--out", [("--bank", given["bank"]), ("--rotations", given["rotations"])])
    check_writable(out, "--out")
    rot_path = Path(given["rotations"])
    if bank.attrs["dataset"] != header["dataset"]:
        raise IncompatibleError(f"{rot_path}: rotations of {header['dataset']} features, "
                                f"{bank.path} is a {bank.attrs['dataset']} bank")
    if header["classes"] != bank.labels:
        raise IncompatibleError(f"{rot_path}: holds rotations of classes {header['classes']}, "
                                f"{bank.path} holds classes {bank.labels}")
    if header["feature_dim"] != bank.feature_dim:
        raise IncompatibleError(f"{rot_path}: rotates {header['feature_dim']}-d features, "
                                f"{bank.path} holds {bank.feature_dim}-d features")
    if bank.attrs["space"] != header["source_space"]:
        raise IncompatibleError(f"{rot_path}: maps {header['source_space']}, {bank.path} holds {bank.attrs['space']}")
    fingerprint = sha256_json({"rotations": sha256_file(rot_path), "bank": sha256_file(bank.path)})
    with locked(out):
        existing = _existing_bank(out, fingerprint, given.get("force", False))
        if existing is not None:
            log(f"{out}: already written from the same inputs, skipping (--force rewrites it)")
            return {"bank": str(out), "skipped": True}
        write_rotated(bank, params, out, step=int(header["step"]), source_sha=header["current_checkpoint_sha256"],
                      source_path=header.get("current_checkpoint", ""),
                      extra={"fingerprint": fingerprint, "rotations": str(rot_path)})
    log(f"wrote {out} ({len(bank.labels)} classes rotated into {space_name(int(header['step']))}), {out.name}.log")
    return {"bank": str(out), "skipped": False, "classes": bank.labels, "space": space_name(int(header["step"]))}


def _existing_bank(out: Path, fingerprint: str, force: bool) -> dict[str, Any] | None:
    return existing_bank(out, fingerprint, force, "pass --force to replace it or choose another path")


# -- fitting ----------------------------------------------------------------------------------------
def check_rotation_inputs(bank: FeatureBank, prev: Checkpoint, current: Checkpoint, prev_sha: str) -> Task:
    """--prev must be the stage t−1 model that the bank's features and --current's training
    came from; the bank must hold every class before stage t."""
    task, t = current.task, current.step
    check_step_parent(current, prev, prev_sha, "--prev")
    if current.spec.head_channels != prev.spec.head_channels:
        raise IncompatibleError(f"{current.path}: has {current.spec.head_channels}-d features, "
                                f"--prev has {prev.spec.head_channels}-d")
    check_bank_fits(bank, dataset=task.dataset, step=t - 1, classes=task.old_classes(t),
                    feature_dim=prev.spec.head_channels, sources=feature_sources(prev_sha, prev.header),
                    model=f"--prev {prev.path}", purpose=f"stage {t} (every class before it)")
    return task


def resolve_rotation_options(given: dict[str, Any], task: Task, step: int) -> dict[str, Any]:
    preset = given.get("preset") or task.dataset
    options = dict(given, preset=preset)
    defaults = {**ROTATION_DEFAULTS, "lambda_rot": paper_setting(task, step, preset).rot_lambda}
    for key, value in defaults.items():
        if options.get(key) is None:
            options[key] = value
    resolved = presets.resolve(preset, options, presets.BASE_PRESETS)
    options.update({k: resolved[k] for k in PRESET_KEYS})
    # the resolved values too: a preset or per-task default is checked like a typed one
    check_options({k: options[k] for k in ("epochs", "lr", "batch_size", "lambda_rot", "tau")})
    return options


def last_path(out_rotations: Path) -> Path:
    return out_rotations.with_name(f"{out_rotations.stem}.last.pt")


@logs_beside("out_rotations")
def fit_rotations(given: dict[str, Any]) -> dict[str, Any]:
    """Train the rotations; write ``out_rotations`` and the rotated ``out_bank``."""
    single_process("fit-rotations")
    out_rot, out_bank = Path(given["out_rotations"]), Path(given["out_bank"])
    sources = [*input_paths("--bank", given["bank"]), *input_paths("--prev", given["prev"]),
               *input_paths("--current", given["current"]), ("--data", given.get("data")),
               ("--splits", given.get("splits"))]
    readable = ("--data", "--splits")
    refuse_overlap(out_bank, "--out-bank", sources, inside_ok=readable)
    refuse_overlap(out_rot, "--out-rotations", [*sources, ("--out-bank", out_bank)], inside_ok=readable)
    refuse_overlap(last_path(out_rot), "the resume state of --out-rotations", [*sources, ("--out-bank", out_bank)],
                   inside_ok=readable)
    check_writable(out_rot, "--out-rotations")
    check_writable(out_bank, "--out-bank")
    bank = read_bank(given["bank"])
    prev, current = load_checkpoint(given["prev"]), load_checkpoint(given["current"])
    prev_sha, current_sha = sha256_file(prev.path), sha256_file(current.path)
    task = check_rotation_inputs(bank, prev, current, prev_sha)
    step = current.step
    options = resolve_rotation_options(given, task, step)
    layout, root, ids, inputs = step_data(task, step, options)
    bank_sha = sha256_file(bank.path)
    inputs.update({str(prev.path): prev_sha, str(current.path): current_sha, str(bank.path): bank_sha})
    options["splits"] = str(root)
    fingerprint = sha256_json({"options": {k: v for k, v in options.items() if k not in VOLATILE},
                               "inputs": sorted(inputs.values())})
    with locked(out_rot, out_bank):  # one writer per output, from the skip decision to the last rename
        force = options["force"]
        if out_rot.exists() and not force:
            try:
                old_header, _ = load_rotations(out_rot)
            except Exception:  # unreadable: certainly not ours
                old_header = {}
            if old_header.get("fingerprint") != fingerprint:
                raise OutputExistsError(f"{out_rot}: exists and holds other rotations; pass --force to replace it")
            if out_bank.exists() and _existing_bank(out_bank, fingerprint, False) is not None:
                log(f"{out_rot}: already fitted with the same options and inputs, skipping (--force refits)")
                return {"rotations": str(out_rot), "bank": str(out_bank), "skipped": True,
                        "history": old_header.get("history", [])}
        if out_bank.exists() and not force:
            _existing_bank(out_bank, fingerprint, False)  # ours from an interrupted run is fine
        check_files(layout, "train", ids, masks=False)
        if force:
            last_path(out_rot).unlink(missing_ok=True)

        seed_everything(options["seed"])
        device = resolve_device(options["device"])
        memory, _ = bank.stacked()
        counts = [e.count for e in bank.classes.values()]
        channels = torch.tensor([task.model_index(c) for c in bank.labels], dtype=torch.int64)
        rotations = CayleyRotations(len(bank.labels), bank.feature_dim,
                                    generator=torch.Generator().manual_seed(options["seed"])).to(device)
        method = RotationFitting(freeze(model_from_checkpoint(prev)), freeze(model_from_checkpoint(current)),
                                 memory, counts, channels, options["lambda_rot"], options["tau"]).to(device)
        prepare_models(device, *method.frozen_modules().values())
        transform = TrainTransform(options["crop_size"], (options["scale_min"], options["scale_max"]),
                                   hflip=options["hflip"])
        # The labels are not used (§5.3): read no masks.
        dataset = SegmentationDataset(layout, "train", ids, transform, read_masks=False, seed=options["seed"])
        loader, sampler = make_train_loader(dataset, options["batch_size"], options["seed"], options["workers"], device)
        optimizer = build_optimizer(method.param_groups(rotations, options["lr"]), "adam", options["lr"],
                                    options["weight_decay"])
        iters = sampler.batches_per_epoch
        scheduler = PolyLR(optimizer, iters * options["epochs"], options["lr_power"])
        trainer = Trainer(model=rotations, method=method, loader=loader, sampler=sampler, optimizer=optimizer,
                          scheduler=scheduler, epochs=options["epochs"], device=device, last_path=last_path(out_rot),
                          fingerprint=fingerprint, amp_dtype=amp_dtype(options.get("amp", "auto"), device),
                          files=RunFiles.of(out_rot, directory=False), outputs=[str(out_rot), str(out_bank)])
        if trainer.load_last():
            log(f"resuming {out_rot} from epoch {trainer.epoch + 1}, iteration {trainer.batch_in_epoch + 1}")
        log(f"fitting {len(bank.labels)} rotations (D = {bank.feature_dim}) of {task.dataset}/{task.key} stage {step} "
            f"on {device}: {len(ids)} images, {iters} iterations/epoch, {options['epochs']} epochs, "
            f"λ_ROT {options['lambda_rot']}, τ {options['tau']}")
        started = time.monotonic()
        trainer.fit()
        seconds = time.monotonic() - started
        params = rotations.params.detach().cpu()
        write_rotated(bank, params, out_bank, step=step, source_sha=current_sha, source_path=str(current.path),
                      extra={"fingerprint": fingerprint, "rotations": str(out_rot)})
        train_seconds = sum(e["seconds"] for e in trainer.history)
        iterations = sum(e["iterations"] for e in trainer.history)
        with torch.no_grad():
            distance = (rotations.matrices().cpu() - torch.eye(bank.feature_dim)).flatten(1).norm(dim=1)
        header = {
            "format": FORMAT, "version": VERSION, "incseg_version": __version__, "dataset": task.dataset,
            "task": task.key, "step": step, "classes": bank.labels, "feature_dim": bank.feature_dim,
            "parametrisation": PARAMETRISATION, "source_space": space_name(step - 1), "target_space": space_name(step),
            "prev_checkpoint": str(prev.path), "prev_checkpoint_sha256": prev_sha,
            "current_checkpoint": str(current.path), "current_checkpoint_sha256": current_sha,
            "bank": str(bank.path), "bank_sha256": bank_sha, "options": {k: v for k, v in options.items()},
            "fingerprint": fingerprint, "history": trainer.history,
            "frobenius_distance_to_identity": [round(float(d), 6) for d in distance],
        }
        save_rotations(out_rot, params, header)
        last_path(out_rot).unlink(missing_ok=True)
        per_iteration = train_seconds / max(iterations, 1)
        files = RunFiles.of(out_rot, directory=False)
        log(f"wrote {out_rot}, {out_bank}, {files.losses.name}, {files.log.name} "
            f"({seconds:.1f} s, {1000 * per_iteration:.1f} ms/iteration)")
        return {"rotations": str(out_rot), "bank": str(out_bank), "skipped": False, "classes": bank.labels,
                "iterations": iterations, "seconds": round(seconds, 3), "seconds_per_iteration": round(per_iteration, 5),
                "losses": trainer.history[-1]["losses"] if trainer.history else {},
                "frobenius_distance_to_identity": header["frobenius_distance_to_identity"]}
