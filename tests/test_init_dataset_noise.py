"""init-dataset: a class id in fewer than NOISE_PIXELS pixels is reported as probable noise
(naming the masks), and --max-class makes a higher id an error naming the masks, before
anything is written."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from helpers import error_line


def write_folder(root: Path, n: int = 12, stray: int | None = None) -> Path:
    """Images with classes 1..3 as rectangles; ``stray``: one pixel of that value in mask 5."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i in range(n):
        mask = np.zeros((32, 32), dtype=np.uint8)
        mask[4:16, 4:16] = 1 + i % 3
        mask[18:28, 18:28] = 1 + (i + 1) % 3
        if stray is not None and i == 5:
            mask[0, 0] = stray
        Image.fromarray((mask * 60).astype(np.uint8)).convert("RGB").save(root / "images" / f"im{i:02d}.jpg")
        Image.fromarray(mask, mode="L").save(root / "masks" / f"im{i:02d}.png")
    return root


def test_max_class_bounds_the_class_count(run_cli, tmp_path):
    root = write_folder(tmp_path / "parts", stray=240)
    r = run_cli("init-dataset", root, "--max-class", "3", "--workers", "1")
    assert r.returncode == 3
    line = error_line(r.stderr, only=True)
    assert "240" in line and "im05.png" in line and "--max-class 3" in line
    assert not (root / "incseg-dataset.json").exists()
    r = run_cli("init-dataset", root, "--max-class", "0")
    assert r.returncode == 2 and "--max-class" in error_line(r.stderr, only=True)


def test_a_stray_class_id_is_reported_as_probable_noise(run_cli, tmp_path):
    root = write_folder(tmp_path / "parts", stray=240)
    r = run_cli("init-dataset", root, "--workers", "1", "--json")
    assert r.returncode == 0, r.stderr
    found = json.loads(r.stdout)["found"]
    assert found["probable_noise"] == {"240": {"pixels": 1, "masks": [str(root / "masks" / "im05.png")]}}
    warnings = [line for line in r.stderr.splitlines() if "probably noise" in line]
    assert len(warnings) == 1 and "240 (1 px" in warnings[0] and "im05.png" in warnings[0], r.stderr
    # the real classes, hundreds of pixels each, are not noise
    assert set(found["class_ids_present"]) == {0, 1, 2, 3, 240}
