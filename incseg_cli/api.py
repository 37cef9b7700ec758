"""The Python API: what the commands do, from a notebook or a service.

    from incseg_cli import load_model, evaluate

    model = load_model("runs/voc/15-5/step1-mib")
    masks = model.predict(["photo.jpg", pil_image, numpy_array])  # uint8 label ids, each image's size
    metrics = evaluate("runs/voc/15-5/step1-mib", "data/VOC2012")

These call the library functions the commands call (``stages/predict.py``,
``stages/evaluate.py``), so the numbers are the commands' numbers. Errors are the commands'
too: ``incseg_cli.errors.IncsegError`` subclasses with a one-line message and the exit
code the command would end with.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from incseg_cli import config
from incseg_cli import tasks as tasks_module
from incseg_cli.data import check as check_module
from incseg_cli.data import custom as custom_module
from incseg_cli.data import splits as splits_module
from incseg_cli.data import toy as toy_module
from incseg_cli.data.check import CheckDataOptions
from incseg_cli.data.custom import InitDatasetOptions
from incseg_cli.data.splits import PrepareSplitsOptions
from incseg_cli.data.toy import ToyDataOptions, ToySummary
from incseg_cli.stages import doctor as doctor_stage
from incseg_cli.stages import download as download_stage
from incseg_cli.stages import features, finetune, rotations
from incseg_cli.stages import train_base as base_stage
from incseg_cli.stages import train_step as step_stage
from incseg_cli.stages.train_base import BaseRun
from incseg_cli.stages import evaluate as evaluate_stage
from incseg_cli.stages.evaluate import EvaluateOptions
from incseg_cli.stages.features import ExtractFeaturesOptions
from incseg_cli.stages.finetune import FinetuneRun
from incseg_cli.stages.predict import Predictor, as_rgb
from incseg_cli.stages.rotations import FitRotationsOptions, RotateBankOptions
from incseg_cli.stages.doctor import DoctorOptions
from incseg_cli.stages.download import DownloadOptions
from incseg_cli.stages.train_step import StepRun, method_options_of
from incseg_cli.tasks import ListTasksOptions, Task

__all__ = ["Model", "load_model", "evaluate", "train_base", "train_step", "method_options", "extract_features",
           "fit_rotations", "rotate_bank", "finetune_classifier", "BaseRun", "StepRun", "FinetuneRun",
           "ExtractFeaturesOptions", "FitRotationsOptions", "RotateBankOptions", "init_dataset", "check_data",
           "prepare_splits", "make_toy_data", "list_tasks", "doctor", "download", "InitDatasetOptions",
           "CheckDataOptions", "PrepareSplitsOptions", "ToyDataOptions", "ListTasksOptions", "DoctorOptions",
           "DownloadOptions"]


class Model:
    """A finished run, ready to predict (``load_model``).

    ``classes``: label id -> class name of every class the run predicts (background
    included); a mask's values are these ids, or 255 (void: outside the crop of the crop
    protocol). ``palette``: uint8 [256, 3], the dataset's colour of each label id.
    ``protocol`` and ``size``: the resize policy (``evaluate``'s: the run's unless given)."""

    def __init__(self, predictor: Predictor) -> None:
        self._predictor = predictor

    @property
    def classes(self) -> dict[int, str]:
        return self._predictor.classes

    @property
    def palette(self) -> np.ndarray:
        return self._predictor.info.palette

    @property
    def protocol(self) -> str:
        return self._predictor.protocol

    @property
    def size(self) -> int:
        return self._predictor.size

    @property
    def network(self) -> Any:
        """The torch module (eval mode, on its device): its forward returns a dict whose
        ``logits`` are the scores of each model channel, for uses beyond ``predict``."""
        return self._predictor.model

    def predict(self, images: Sequence[Any] | Any, batch_size: int | None = None) -> list[np.ndarray]:
        """uint8 label-id masks, one per image at its own size, as ``incseg predict`` writes
        them. ``images``: PIL images, numpy arrays (H x W, H x W x 3 or H x W x 4, uint8) or
        paths, or one of them."""
        if not isinstance(images, (list, tuple)):
            images = [images]
        rgb = [as_rgb(image, str(image) if isinstance(image, (str, Path)) else f"image {i}")
               for i, image in enumerate(images)]
        return self._predictor.predict(rgb, batch_size)

    def colourise(self, mask: np.ndarray) -> np.ndarray:
        """uint8 [H, W, 3]: a mask in the dataset's palette."""
        return self.palette[mask]

    def __repr__(self) -> str:
        p = self._predictor
        return (f"Model({p.ckpt.describe()}, {len(self.classes)} classes, {p.protocol}"
                f"{f' {p.size} px' if p.protocol == 'crop' else ''}, {p.device})")


def load_model(run: str | Path, device: str = "auto", *, amp: str = "auto", eval_protocol: str | None = None,
               eval_size: int | None = None, batch_size: int | None = None, tf32: str = "off") -> Model:
    """A finished run directory (or its checkpoint.pt) as a ``Model``. The options are
    ``incseg predict``'s: ``device`` auto/cpu/cuda/cuda:N, ``amp`` auto (bf16 on GPUs that
    compute it natively, else fp16)/bf16/fp16/off, the resize policy (the run's unless given),
    the batch size and TF32."""
    return Model(Predictor.load(run, device, amp, eval_protocol, eval_size, batch_size, tf32=tf32))


def evaluate(run: str | Path, data: str | Path, **options: Any) -> dict[str, Any]:
    """``incseg evaluate RUN --data DATA``'s metrics (the dict its ``--json`` prints): the
    same library function with the same options, ``EvaluateOptions``' fields (``eval_size=``,
    ``val_set=``, ``workers=`` ...; docs/evaluation.md)."""
    values = {"checkpoint": Path(run), "data": Path(data), **options}
    return evaluate_stage.evaluate(config.build_checked(EvaluateOptions, values, "evaluate()"))


# -- training stages ---------------------------------------------------------------------------
# The functions the commands call, with the typed options the commands build (every field is
# the command-line option of the same name; unset ``None`` fields are filled from the method
# and the preset exactly as on the command line). They return what the command prints with
# --json (metrics or a summary) and follow the same rules: skip a complete output, resume an
# interrupted one, refuse a different one unless ``force=True``.


def train_base(options: BaseRun) -> dict[str, Any]:
    """``incseg train-base``: ``train_base(BaseRun(data=..., task="15-5", preset="toy"))``."""
    return base_stage.train_base(options)


def train_step(options: StepRun, method_options: Any = None) -> dict[str, Any]:
    """``incseg train-step``; ``method_options``: the method's ``Options`` (``method_options("mib",
    lambda_kd=5)``), None for its defaults."""
    return step_stage.train_step(options, method_options)


def method_options(method: str, **values: Any) -> Any:
    """The options dataclass of ``method`` (``ft``, ``mib``, ``plop``, ``alife``, ``wilson``)
    with ``values`` set; another method's option is refused."""
    return method_options_of(method, **values)


def extract_features(options: ExtractFeaturesOptions) -> dict[str, Any]:
    """``incseg extract-features`` (ALIFE Step 2-1)."""
    return features.extract_features(options)


def fit_rotations(options: FitRotationsOptions) -> dict[str, Any]:
    """``incseg fit-rotations`` (ALIFE Step 2-2)."""
    return rotations.fit_rotations(options)


def rotate_bank(options: RotateBankOptions) -> dict[str, Any]:
    """``incseg rotate-bank``."""
    return rotations.rotate_bank(options)


def finetune_classifier(options: FinetuneRun, method_options: Any = None) -> dict[str, Any]:
    """``incseg finetune-classifier`` (ALIFE Step 3); ``method_options``: ``ALIFEFinetuneOptions``."""
    return finetune.finetune_classifier(options, method_options)


# -- data and the box ----------------------------------------------------------------------------
# The data commands' functions, with the options those commands declare; they return what the
# command prints with --json.


def init_dataset(options: InitDatasetOptions) -> dict[str, Any]:
    """``incseg init-dataset``: the description written to ``ROOT/incseg-dataset.json``."""
    return custom_module.describe_dataset(options)


def check_data(options: CheckDataOptions) -> dict[str, Any]:
    """``incseg check-data``: the report (``usable``, ``errors``, ``warnings``, per split); an
    unusable root is a report, not an exception."""
    return check_module.check_dataset(options)


def prepare_splits(options: PrepareSplitsOptions) -> dict[str, Any]:
    """``incseg prepare-splits``: ``{"out", "dataset", "tasks"}``."""
    return splits_module.prepare_task_splits(options)


def make_toy_data(options: ToyDataOptions) -> ToySummary:
    """``incseg make-toy-data``."""
    return toy_module.make_toy_data(options)


def list_tasks(options: ListTasksOptions | None = None) -> list[Task]:
    """``incseg list-tasks``: the standard tasks (every built-in dataset's without options)."""
    return tasks_module.list_tasks(options or ListTasksOptions())


def doctor(options: DoctorOptions | None = None) -> dict[str, Any]:
    """``incseg doctor``: the report (``ready``, each section, ``missing`` with fixes)."""
    return doctor_stage.doctor(options or DoctorOptions())


def download(options: DownloadOptions) -> dict[str, Any]:
    """``incseg download``: per source its files, whether it was skipped, check-data's result."""
    return download_stage.download_sources(options)
