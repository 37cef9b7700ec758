"""incseg export: a torch.export program that a service loads without incseg."""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from incseg_cli import datasets

pytestmark = pytest.mark.slow

def _main(*args):
    """The CLI in this process: (exit code, stderr)."""
    from incseg_cli.cli import main

    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err), \
            pytest.raises(SystemExit) as exit_:
        main([str(a) for a in args])
    return exit_.value.code, err.getvalue()


# What a service runs: torch alone (the test checks that incseg is never imported).
SERVICE = """
import json, sys
import numpy as np, torch
files = {"incseg.json": ""}
program = torch.export.load(sys.argv[1], extra_files=files)
meta = json.loads(files["incseg.json"])
module = program.module()
out = {}
for name in sys.argv[2:]:
    images = torch.from_numpy(np.load(name))
    labels, logits = module(images)
    assert labels.dtype == torch.uint8 and logits.shape[1] == len(meta["label_ids"])
    out[name] = labels.numpy().tolist()
assert "incseg_cli" not in sys.modules
print(json.dumps({"meta": meta, "labels": out}))
"""


def test_exported_program_gives_the_runs_masks(base_run, tmp_path):
    from incseg_cli import load_model

    program = tmp_path / "model.pt2"
    code, err = _main("export", base_run, "--out", program)
    assert code == 0, err
    code, err = _main("export", base_run, "--out", program)
    assert code == 6 and "--force" in err
    rng = np.random.default_rng(1)
    batches = {tmp_path / "a.npy": rng.integers(0, 256, (2, 3, 32, 32), dtype=np.uint8),
               tmp_path / "b.npy": rng.integers(0, 256, (1, 3, 45, 61), dtype=np.uint8)}
    for path, images in batches.items():
        np.save(path, images)
    env = dict(os.environ)
    service = subprocess.run([sys.executable, "-c", SERVICE, str(program), *map(str, batches)], capture_output=True,
                             text=True, cwd=tmp_path, env=env, timeout=120)
    assert service.returncode == 0, service.stderr
    answer = json.loads(service.stdout)
    meta = answer["meta"]
    voc = datasets.get("voc")
    assert meta["classes"] == {str(i): voc.class_names[i] for i in range(11)}
    assert meta["label_ids"] == list(range(11)) and meta["palette"] == voc.palette.tolist()
    assert meta["normalization"]["mean"] == [0.485, 0.456, 0.406] and meta["input"]["dtype"] == "uint8"
    # the run itself, on the whole image (the program predicts the pixels it is given)
    model = load_model(base_run, device="cpu", eval_protocol="full")
    for path, images in batches.items():
        expected = model.predict([image.transpose(1, 2, 0) for image in images])
        assert np.array_equal(np.array(answer["labels"][str(path)], dtype=np.uint8), np.stack(expected)), path.name


def test_a_resnet_exports_with_the_sides_it_accepts():
    """Export finds a ResNet's own shape bounds (fixed ones failed as "constraints violated",
    exit 70) and the metadata says them; the program runs at that size and any batch."""
    from types import SimpleNamespace

    from incseg_cli.models.deeplab import ModelSpec, build_model
    from incseg_cli.stages.export import device_bound_nodes, export_program, min_side

    model = build_model(ModelSpec.for_backbone("resnet18", [11])).eval()
    program = export_program(SimpleNamespace(model=model, to_label=np.arange(11)))
    side = min_side(program)
    assert side == 17 and device_bound_nodes(program) == []
    for shape in [(1, 3, side, side + 5), (3, 3, 40, 64)]:
        labels, logits = program.module()(torch.zeros(shape, dtype=torch.uint8))
        assert labels.shape == (shape[0], *shape[2:]) and logits.shape == (shape[0], 11, *shape[2:])
