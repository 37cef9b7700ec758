"""export: a finished run's inference model as a ``torch.export`` program (``.pt2``).

The program takes what a service has: a batch of 8-bit RGB images, uint8 ``[N, 3, H, W]``
with values 0..255, any batch size and any height and width of at least the metadata's
``input.min_side`` pixels (16 or more; 17 for a ResNet). The ImageNet normalisation happens inside it, exactly as incseg normalises
(``data.transforms.normalize``). It returns ``(labels, logits)``: uint8 ``[N, H, W]`` label
ids of the dataset (the classes below) and float32 ``[N, C, H, W]`` scores per model
channel (channel ``c`` is label id ``label_ids[c]``). It predicts the pixels it is given,
as incseg's ``full`` protocol does; the run's own resize policy is in the metadata.

The metadata (class names, label ids, palette, normalisation, input and outputs, the run)
is the JSON file ``incseg.json`` inside the ``.pt2`` archive (``extra_files``):

    import json, torch
    files = {"incseg.json": ""}
    program = torch.export.load("model.pt2", extra_files=files)
    meta = json.loads(files["incseg.json"])
    labels, logits = program.module()(images_uint8_nchw)

The program holds no device: it is exported on the CPU, and ``program.module().to("cuda")``
runs it on a GPU with images on that GPU (``export_program`` checks that no node names a
device). Loading needs torch only, not incseg.

``--out`` is replaced only when it holds an exported program (``--force``): never a run's
file, a checkpoint, a bank or anything else (``engine/kinds.py``). The program reaches disk
whole or not at all: a full disk is exit 9 and a Ctrl-C exit 130, with neither the temporary
file nor the lock left behind (``write_program``).
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from incseg_cli import signals
from incseg_cli.version import __version__
from incseg_cli.config import option
from incseg_cli.console import log
from incseg_cli.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from incseg_cli.engine.kinds import PROGRAM, check_replaceable
from incseg_cli.engine.lock import OutputLock
from incseg_cli.engine.rundir import check_side_outputs
from incseg_cli.errors import OutputExistsError
from incseg_cli.fileio import atomic_path, sha256_file
from incseg_cli.models.deeplab import IncrementalDeepLab
from incseg_cli.stages.predict import Predictor

METADATA_FILE = "incseg.json"
FORMAT = "incseg-export"
VERSION = 1
MIN_SIDE = 16  # the smallest --eval-size; every backbone handles it (stride 8 or 16 leaves >= 1 pixel)
EXAMPLE_SIZE = (2, 3, 64, 48)  # batch 2 and H != W, so that neither is specialised while tracing


@dataclass(kw_only=True)
class ExportOptions:
    """Everything ``incseg export`` takes."""

    run: Path = option(required=True, argument=True, metavar="RUN",
                       help="A finished run directory or its checkpoint.pt.")
    out: Path = option(required=True, metavar="FILE",
                       help="The program to write (by convention FILE.pt2; torch.export.load reads it).")
    force: bool = option(False, flag="--force", volatile=True,
                         help="Replace an existing FILE that is an exported program (never anything else).")


class InferenceModel(nn.Module):
    """uint8 RGB ``[N, 3, H, W]`` -> (uint8 label ids ``[N, H, W]``, float32 logits
    ``[N, C, H, W]``): normalisation, the network, its decision rule (argmax, or DKD's sigmoid
    rule) and the channel -> label id
    map in one module."""

    def __init__(self, model: IncrementalDeepLab, label_ids: np.ndarray) -> None:
        super().__init__()
        self.model = model
        # Buffers, not constants built in forward, so that ``.to(device)`` moves them too.
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("label_ids", torch.from_numpy(np.asarray(label_ids, dtype=np.uint8).copy()))

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # The values of data.transforms.normalize (uint8 / 255 is float32 division, equal to
        # casting first). No .to(dtype): export records the tracing device beside such a cast
        # (aten._assert_tensor_metadata), and the program must run on any device.
        x = (images / 255.0 - self.mean) / self.std
        logits = self.model(x)["logits"]
        return self.label_ids[self.model.decide(logits)], logits


def export_program(predictor: Predictor) -> torch.export.ExportedProgram:
    """The predictor's model as an ExportedProgram with a dynamic batch, height and width."""
    module = InferenceModel(predictor.model, predictor.to_label).to("cpu").eval()
    example = torch.zeros(EXAMPLE_SIZE, dtype=torch.uint8)
    # AUTO: export finds each backbone's own bounds (a ResNet needs H, W >= 17, the tiny CNN
    # less) where fixed bounds fail as "constraints violated"; min_side reads them back.
    auto = torch.export.Dim.AUTO
    with torch.no_grad():
        program = torch.export.export(module, (example,), dynamic_shapes=({0: auto, 2: auto, 3: auto},))
    pinned = device_bound_nodes(program)
    if pinned:  # a change in the model or in torch.export would tie the program to the CPU
        raise RuntimeError(f"the exported program names a device in {', '.join(pinned)}: it would run only there")
    return program


def min_side(program: torch.export.ExportedProgram) -> int:
    """The smallest height and width the program accepts (at least ``MIN_SIDE``)."""
    name = program.graph_signature.user_inputs[0]
    images = next(n for n in program.graph.nodes if n.op == "placeholder" and n.name == name)
    lows = [MIN_SIDE]
    for side in images.meta["val"].shape[2:]:
        if isinstance(side, int):
            lows.append(side)
            continue
        bound = program.range_constraints.get(side.node.expr)
        lows.append(int(bound.lower) if bound is not None else MIN_SIDE)
    return max(lows)


def device_bound_nodes(program: torch.export.ExportedProgram) -> list[str]:
    """Nodes of ``program`` that name a device (e.g. a factory's ``device=cpu``, the
    metadata assertion of a ``.to``): each would tie the program to where it was traced."""
    return [str(node.target) for node in program.graph.nodes
            if any(isinstance(v, torch.device) for v in [*node.args, *node.kwargs.values()])]


def metadata(predictor: Predictor, source_sha256: str, program: torch.export.ExportedProgram) -> dict[str, Any]:
    described = predictor.describe()
    return {
        "format": FORMAT,
        "version": VERSION,
        "input": {"dtype": "uint8", "shape": ["N", 3, "H", "W"], "channels": "RGB", "range": [0, 255],
                  "min_side": min_side(program), "dynamic": ["N", "H", "W"]},
        "device": "any: exported on the CPU with no device in the graph; program.module().to('cuda') moves "
                  "it, the images must be on the same device",
        "outputs": [
            {"name": "labels", "dtype": "uint8", "shape": ["N", "H", "W"],
             "meaning": "label id of each pixel (keys of classes)"},
            {"name": "logits", "dtype": "float32", "shape": ["N", len(predictor.to_label), "H", "W"],
             "meaning": "score of each model channel; channel c is label id label_ids[c]"},
        ],
        "normalization": {"inside": True, "formula": "(x / 255 - mean) / std", "mean": list(IMAGENET_MEAN),
                          "std": list(IMAGENET_STD)},
        "classes": described["classes"],
        "label_ids": [int(i) for i in predictor.to_label],
        "palette": predictor.info.palette.tolist(),
        "ignore_index": 255,
        "dataset": described["dataset"], "task": described["task"], "step": described["step"],
        "method": described["method"],
        "model": predictor.ckpt.header["model"],
        "run_protocol": {**described["protocol"],
                         "note": "the program predicts the pixels it is given (incseg's full protocol); under "
                                 "crop, incseg first resizes the shorter side to size (bilinear) and "
                                 "centre-crops size x size"},
        "source": {"checkpoint": described["checkpoint"], "sha256": source_sha256},
        "incseg_version": __version__,
        "torch_version": torch.__version__,
    }


class _Sink(io.IOBase):
    """The file object torch's zip writer fills. That C++ writer does not survive a failed
    write: it fails again in its destructor, which aborts the process (SIGABRT) whenever the
    garbage collector gets to it. So the first failure (a full disk...) is kept, every later
    write is dropped as if done, and ``raise_failure`` raises it once torch has finished."""

    def __init__(self, fh: io.BufferedWriter) -> None:
        super().__init__()
        self.fh = fh
        self.failure: BaseException | None = None

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:  # a real file is behind it (torch.export then does not warn)
        return True

    def _guard(self, call: Any, *args: Any) -> Any:
        if self.failure is None:
            try:
                return call(*args)
            except BaseException as err:  # noqa: BLE001 - raised by raise_failure, outside torch
                self.failure = err
        return None

    def write(self, data: Any) -> int:
        self._guard(self.fh.write, data)
        return memoryview(data).nbytes

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        return self._guard(self.fh.seek, offset, whence) or 0

    def tell(self) -> int:
        return self._guard(self.fh.tell) or 0

    def flush(self) -> None:
        self._guard(self.fh.flush)

    def raise_failure(self) -> None:
        if self.failure is not None:
            raise self.failure


def write_program(program: torch.export.ExportedProgram, meta: dict[str, Any], out: Path) -> None:
    """``out`` whole or not at all (see ``_Sink``). A stop signal waits for the end of
    torch's writing (raised inside its write callback, it would leave the writer broken as a
    failed write does), then ends the command with the temporary file removed."""
    # through a file object: torch warns about a path not ending in .pt2 (the temporary name)
    with atomic_path(out) as tmp, open(tmp, "wb") as fh:
        sink = _Sink(fh)
        with signals.blocked():
            torch.export.save(program, sink, extra_files={METADATA_FILE: json.dumps(meta)})
        sink.raise_failure()


def export_run(options: ExportOptions) -> dict[str, Any]:
    """Write ``options.out``; returns its metadata."""
    out = Path(options.out)
    predictor = Predictor.load(options.run, device="cpu", amp="off")
    check_side_outputs(options.run, [("--out", out, False, PROGRAM)])
    check_replaceable(out, "--out", PROGRAM)  # only a program is ever replaced, --force or not
    if out.exists() and not options.force:
        raise OutputExistsError(f"{out}: exists; --force replaces it, or choose another --out")
    with OutputLock(out):
        check_replaceable(out, "--out", PROGRAM)  # again, now that no incseg can write it meanwhile
        program = export_program(predictor)
        meta = metadata(predictor, sha256_file(predictor.ckpt.path), program)
        write_program(program, meta, out)
    log(f"wrote {out}: {predictor.ckpt.describe()} as a torch.export program (uint8 RGB [N, 3, H, W] in, "
        f"(labels, logits) out; H, W >= {meta['input']['min_side']}); metadata in its {METADATA_FILE}")
    return meta
