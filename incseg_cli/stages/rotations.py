"""fit-rotations and rotate-bank: ALIFE Step 2-2 (ALIFE's ``train_matrices.py``, ``models/cayley_rot.py``
and ``update_mem.py``).

fit-rotations trains one Cayley rotation per class of a bank, mapping the features of the
stage t−1 model (--prev, whose space the bank is in) to those of the Step-1 model of stage t
(--current), on the stage-t training images; the shared training loop runs it (the rotation
module is the "model"), so Ctrl-C, ``<rotations>.last.pt`` and resuming work as for
training. It writes the rotations file and a new bank with every vector rotated, m̂ = R_c m
(no centring offset, as the official ``update_mem.py`` does). rotate-bank applies a rotations file to a bank.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch

from incseg_cli import presets
from incseg_cli.version import __version__
from incseg_cli.config import option
from incseg_cli.console import RunFiles, log, logs_beside
from incseg_cli.data.dataset import SegmentationDataset
from incseg_cli.data.transforms import TrainTransform
from incseg_cli.engine.checkpoint import Checkpoint, load_checkpoint, load_sealed, model_from_checkpoint, save_sealed
from incseg_cli.engine.kinds import ROTATIONS, ROTATIONS_FORMAT
from incseg_cli.engine.optim import PolyLR, build_optimizer
from incseg_cli.engine.outputs import COMPLETE, FileOutput, FileOutputs, Found, Recipe
from incseg_cli.engine.rundir import input_paths
from incseg_cli.engine.speed import prepare_models
from incseg_cli.engine.device import amp_dtype, autotune, resolve_device, warn_tf32
from incseg_cli.engine.stage import make_train_loader, seed_everything
from incseg_cli.engine.trainer import Trainer
from incseg_cli.errors import CorruptFileError, IncompatibleError
from incseg_cli.fileio import sha256_file
from incseg_cli.bank import BankWriter, FeatureBank, check_bank_fits, read_bank, space_name
from incseg_cli.methods.alife import RotationFitting, paper_setting
from incseg_cli.models.rotations import CayleyRotations, cayley_apply, num_params
from incseg_cli.models.util import freeze
from incseg_cli.stages.banks import StepImages, bank_output, feature_sources, recorded, single_process
from incseg_cli.stages.common import check_files, check_step_parent, preset_of, resolve_recipe, step_data
from incseg_cli.tasks import Task
from incseg_cli.limits import FRACTION, POSITIVE

FORMAT = ROTATIONS_FORMAT
VERSION = 2  # 2: always sealed (engine/checkpoint.SEALED_SINCE)
PARAMETRISATION = ("Cayley: u_c = strict upper triangle of U_c (row-major triu_indices), "
                   "S_c = (U_c - U_c^T)/2, R_c = (I - S_c)(I + S_c)^-1")
ALIFE_PANEL = "ALIFE options"
# ALIFE's train_matrices.py as its scripts/{voc,ade}/alife-m.sh run it: Adam 1e-2 (L2 weight decay 1e-4,
# from the step-1 config), 10 epochs, τ 10.
ROTATION_DEFAULTS = {"epochs": 10, "lr": 1e-2, "weight_decay": 1e-4, "lr_power": 0.9, "tau": 10.0}


@dataclass(kw_only=True)
class _Fitting:
    bank: Path = option(required=True, help="Bank of every class before stage t, in the features of --prev "
                                            "(extract-features).")
    prev: Path = option(required=True, help="Final model of stage t-1: the features the bank holds.")
    current: Path = option(required=True, help="Step-1 run of stage t (train-step --method alife from --prev).")
    out: Path = option(required=True, volatile=True, aliases=("--out-rotations",),
                       help="Rotations file to write (plain tensors + header); Ctrl-C leaves OUT_STEM.last.pt to "
                            "resume from.")
    out_bank: Path = option(required=True, volatile=True,
                            help="Rotated bank to write (in stage t features); never the input bank.")
    lambda_rot: Optional[float] = option(limit=FRACTION, help="Weight of L_FID; L_REG gets 1 − it. [voc 15-5, 19-1: 0.95; other "
                                              "tasks: 0.99]", panel=ALIFE_PANEL)
    tau: Optional[float] = option(limit=POSITIVE, help="Temperature of the attention over the batch's positions. [10]",
                                  panel=ALIFE_PANEL)
    epochs: Optional[int] = option(help="Epochs over the stage-t images. [10]")
    lr: Optional[float] = option(help="Adam learning rate, poly decay. [0.01]")
    weight_decay: Optional[float] = option(help="L2 weight decay on the rotation parameters (pulls R towards I). "
                                                "[1e-4]")
    lr_power: Optional[float] = option(help="Poly schedule power: lr·(1 − it/max_it)^power, per iteration. [0.9]")
    batch_size: Optional[int] = option(help="Images per batch; prototypes are built over the whole batch.",
                                       preset=True)
    seed: int = option(0, help="Seed of the rotation init, data order and augmentation.")


@dataclass(kw_only=True)
class FitRotationsOptions(StepImages, _Fitting):
    """Every option of fit-rotations (``_Fitting``'s first in ``--help``, then the pass over
    the images)."""


@dataclass(kw_only=True)
class RotateBankOptions:
    """Every option of rotate-bank."""

    rotations: Path = option(required=True, help="Rotations file from fit-rotations.")
    bank: Path = option(required=True, help="Bank with the same classes, in the space the rotations map from.")
    out: Path = option(required=True, volatile=True, help="Feature bank (HDF5) to write; never one of the inputs.")
    force: bool = option(False, volatile=True, recorded=False, help="Replace an existing --out bank.")


def rotation_defaults(task: Task, step: int, preset: str) -> dict[str, Any]:
    """fit-rotations' values for unset options, before the preset's: ALIFE's recipe and
    its per-task λ_ROT."""
    return {**ROTATION_DEFAULTS, "lambda_rot": paper_setting(task, step, preset).rot_lambda}


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
def rotate_bank(opts: RotateBankOptions) -> dict[str, Any]:
    """Apply a rotations file to a bank holding the same classes in the space it maps from."""
    rot_path, out = Path(opts.rotations), Path(opts.out)
    outputs = FileOutputs([bank_output("--out", out)], opts.force)
    outputs.check([("--bank", opts.bank), ("--rotations", rot_path)])
    header, params = load_rotations(rot_path)
    bank = read_bank(opts.bank)
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
    recipe = Recipe.of([opts], {str(rot_path): sha256_file(rot_path), str(bank.path): sha256_file(bank.path)})
    step = int(header["step"])
    with outputs.open(recipe.fingerprint) as state:
        if state == COMPLETE:
            log(f"{out}: already written from the same inputs, skipping (--force rewrites it)")
            return {"bank": str(out), "skipped": True}
        write_rotated(bank, params, out, step=step, source_sha=header["current_checkpoint_sha256"],
                      source_path=header.get("current_checkpoint", ""),
                      extra={"fingerprint": recipe.fingerprint, "options": recorded(recipe.options),
                             "rotations": str(rot_path)})
    log(f"wrote {out} ({len(bank.labels)} classes rotated into {space_name(step)}), {out.name}.log")
    return {"bank": str(out), "skipped": False, "classes": bank.labels, "space": space_name(step)}


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


def last_path(out_rotations: Path) -> Path:
    return out_rotations.with_name(f"{out_rotations.stem}.last.pt")


def read_rotations_output(path: Path) -> Found:
    """What a rotations output path holds, for the runner's decision."""
    try:
        header, _ = load_rotations(path)
    except Exception:  # unreadable: certainly not ours
        return Found(path, exists=True, what="a file that is not an intact rotations file")
    value = header.get("fingerprint")
    return Found(path, exists=True, fingerprint=value if isinstance(value, str) else None, what="rotations")


@logs_beside("out")
def fit_rotations(opts: FitRotationsOptions) -> dict[str, Any]:
    """Train the rotations; write ``opts.out`` (the rotations) and the rotated ``opts.out_bank``."""
    single_process("fit-rotations")
    out_rot, out_bank = Path(opts.out), Path(opts.out_bank)
    # the rotations last: they are what a complete run is recognised by, and their resume state lies beside them
    outputs = FileOutputs([bank_output("--out-bank", out_bank),
                           FileOutput("--out", out_rot, read_rotations_output, ROTATIONS)],
                          opts.force, resume=last_path(out_rot), advice="pass --force to replace it")
    outputs.check([*input_paths("--bank", opts.bank), *input_paths("--prev", opts.prev),
                   *input_paths("--current", opts.current), ("--data", opts.data), ("--splits", opts.splits)],
                  inside_ok=("--data", "--splits"))
    bank = read_bank(opts.bank)
    prev, current = load_checkpoint(opts.prev), load_checkpoint(opts.current)
    prev_sha, current_sha = sha256_file(prev.path), sha256_file(current.path)
    task = check_rotation_inputs(bank, prev, current, prev_sha)
    step = current.step
    opts = resolve_recipe(opts, task.dataset, presets.BASE_PRESETS,
                          rotation_defaults(task, step, preset_of(opts, task.dataset)))
    layout, root, ids, inputs = step_data(task, step, opts.data, opts.splits)
    bank_sha = sha256_file(bank.path)
    inputs.update({str(prev.path): prev_sha, str(current.path): current_sha, str(bank.path): bank_sha})
    opts = dataclasses.replace(opts, splits=root)
    recipe = Recipe.of([opts], inputs)
    fingerprint = recipe.fingerprint
    # one writer per output, from the decision to the last rename
    with outputs.open(fingerprint) as state:
        if state == COMPLETE:
            log(f"{out_rot}: already fitted with the same options and inputs, skipping (--force refits)")
            old_header, _ = load_rotations(out_rot)
            return {"rotations": str(out_rot), "bank": str(out_bank), "skipped": True,
                    "history": old_header.get("history", [])}
        check_files(layout, "train", ids, masks=False)

        seed_everything(opts.seed)
        device = resolve_device(opts.device, opts.tf32)
        memory, _ = bank.stacked()
        counts = [e.count for e in bank.classes.values()]
        channels = torch.tensor([task.model_index(c) for c in bank.labels], dtype=torch.int64)
        rotations = CayleyRotations(len(bank.labels), bank.feature_dim,
                                    generator=torch.Generator().manual_seed(opts.seed)).to(device)
        method = RotationFitting(freeze(model_from_checkpoint(prev)), freeze(model_from_checkpoint(current)),
                                 memory, counts, channels, opts.lambda_rot, opts.tau).to(device)
        prepare_models(device, *method.frozen_modules().values())
        transform = TrainTransform(opts.crop_size, (opts.scale_min, opts.scale_max), hflip=opts.hflip)
        # train_matrices.py loads the labels but never uses them: read no masks.
        dataset = SegmentationDataset(layout, "train", ids, transform, read_masks=False, seed=opts.seed)
        loader, sampler = make_train_loader(dataset, opts.batch_size, opts.seed, opts.workers, device)
        optimizer = build_optimizer(method.param_groups(rotations, opts.lr), "adam", opts.lr, opts.weight_decay)
        iters = sampler.batches_per_epoch
        scheduler = PolyLR(optimizer, iters * opts.epochs, opts.lr_power)
        trainer = Trainer(model=rotations, method=method, loader=loader, sampler=sampler, optimizer=optimizer,
                          scheduler=scheduler, epochs=opts.epochs, device=device, last_path=last_path(out_rot),
                          fingerprint=fingerprint, amp_dtype=amp_dtype(opts.amp, device),
                          files=RunFiles.of(out_rot, directory=False), outputs=[str(out_rot), str(out_bank)])
        if trainer.load_last():
            log(f"resuming {out_rot} from epoch {trainer.epoch + 1}, iteration {trainer.batch_in_epoch + 1}")
        log(f"fitting {len(bank.labels)} rotations (D = {bank.feature_dim}) of {task.dataset}/{task.key} stage {step} "
            f"on {device}: {len(ids)} images, {iters} iterations/epoch, {opts.epochs} epochs, "
            f"λ_ROT {opts.lambda_rot}, τ {opts.tau}")
        warn_tf32(device, opts.tf32)
        started = time.monotonic()
        with autotune(device, fixed_size=True):
            trainer.fit()
        seconds = time.monotonic() - started
        params = rotations.params.detach().cpu()
        write_rotated(bank, params, out_bank, step=step, source_sha=current_sha, source_path=str(current.path),
                      extra={"fingerprint": fingerprint, "options": recorded(recipe.options), "rotations": str(out_rot)})
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
            "bank": str(bank.path), "bank_sha256": bank_sha, "options": recipe.options,
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
