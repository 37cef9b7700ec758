"""A dataset of one's own for tests (issue 20): six surface-defect classes drawn as ellipses,
polygons and thin lines on textured backgrounds, non-square JPEGs of 72-110 px, void (200)
along object borders, and a task that names its classes in non-sorted order.

    python tests/owndata.py OUT [--train 600 --val 120 --seed 0]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

CLASSES = ["background", "scratch", "dent", "rust", "crack", "stain", "hole"]
VOID = 200
# step 0 learns rust, crack, scratch; step 1 dent, hole, stain (not label order)
TASK = {"by-kind": [["rust", "crack", "scratch"], ["dent", "hole", "stain"]]}
PALETTE = [[0, 0, 0], [230, 25, 75], [60, 180, 75], [255, 225, 25], [0, 130, 200], [245, 130, 48], [145, 30, 180]]


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Brushed-metal or speckled texture in a random grey-blue tint."""
    base = rng.uniform(90, 170, size=3)
    y, x = np.mgrid[0:h, 0:w]
    if rng.random() < 0.5:
        pattern = 12 * np.sin(x / rng.uniform(1.5, 4.0) + rng.normal(0, 0.4, size=(h, w)))
    else:
        pattern = rng.normal(0, 14, size=(h, w))
    img = base[None, None, :] + pattern[..., None] + rng.normal(0, 4, size=(h, w, 3))
    return np.clip(img, 0, 255)


def _draw_defect(draw_img: ImageDraw.ImageDraw, draw_mask: ImageDraw.ImageDraw, rng: np.random.Generator,
                 label: int, h: int, w: int) -> None:
    cx, cy = rng.uniform(0.25, 0.75) * w, rng.uniform(0.25, 0.75) * h
    r = rng.uniform(0.12, 0.25) * min(h, w)
    name = CLASSES[label]
    shade = {"scratch": (235, 235, 240), "dent": (70, 70, 80), "rust": (150, 75, 20), "crack": (25, 20, 20),
             "stain": (110, 120, 60), "hole": (10, 10, 10)}[name]
    colour = tuple(int(np.clip(c + rng.normal(0, 12), 0, 255)) for c in shade)
    if name in ("scratch", "crack"):  # thin lines: straight scratches, jagged cracks
        points = [(cx - r, cy - r * rng.uniform(-1, 1))]
        for _ in range(4 if name == "crack" else 1):
            px, py = points[-1]
            points.append((px + 2 * r / (4 if name == "crack" else 1), py + rng.normal(0, r * (0.5 if name == "crack" else 0.1))))
        width = 5 if name == "scratch" else 6
        draw_img.line(points, fill=colour, width=width)
        draw_mask.line(points, fill=VOID, width=width + 2)
        draw_mask.line(points, fill=label, width=width)
    elif name in ("dent", "hole", "stain"):  # ellipses
        box = [cx - r, cy - r * rng.uniform(0.5, 1.0), cx + r, cy + r * rng.uniform(0.5, 1.0)]
        draw_img.ellipse(box, fill=colour)
        draw_mask.ellipse([box[0] - 2, box[1] - 2, box[2] + 2, box[3] + 2], fill=VOID)
        draw_mask.ellipse(box, fill=label)
    else:  # rust: irregular polygon
        angles = np.sort(rng.uniform(0, 2 * np.pi, size=7))
        points = [(cx + r * rng.uniform(0.6, 1.2) * np.cos(a), cy + r * rng.uniform(0.6, 1.2) * np.sin(a)) for a in angles]
        draw_img.polygon(points, fill=colour)
        grown = [(cx + 1.15 * (x - cx), cy + 1.15 * (y - cy)) for x, y in points]
        draw_mask.polygon(grown, fill=VOID)
        draw_mask.polygon(points, fill=label)


def build(root: Path, train: int = 600, val: int = 120, seed: int = 0) -> Path:
    """Write the dataset under ``root`` (images/, masks/, train.txt, val.txt, incseg-dataset.json)."""
    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    lists: dict[str, list[str]] = {"train": [], "val": []}
    for split, n, offset in (("train", train, 0), ("val", val, 100_000)):
        for k in range(n):
            rng = np.random.default_rng([seed, offset + k])
            h, w = int(rng.integers(72, 111)), int(rng.integers(72, 111))
            image = Image.fromarray(_background(rng, h, w).astype(np.uint8))
            mask = Image.new("L", (w, h), 0)
            draw_img, draw_mask = ImageDraw.Draw(image), ImageDraw.Draw(mask)
            for label in rng.choice(np.arange(1, 7), size=int(rng.integers(1, 3)), replace=False):
                _draw_defect(draw_img, draw_mask, rng, int(label), h, w)
            image = image.filter(ImageFilter.GaussianBlur(0.6))
            name = f"{split[:2]}{k:04d}"
            image.save(root / "images" / f"{name}.jpg", quality=92)
            mask.save(root / "masks" / f"{name}.png")
            lists[split].append(name)
    for split, names in lists.items():
        (root / f"{split}.txt").write_text("\n".join(names) + "\n")
    description = {"name": "defects", "classes": CLASSES, "palette": PALETTE, "ignore": VOID, "tasks": TASK}
    (root / "incseg-dataset.json").write_text(json.dumps(description))
    return root


if __name__ == "__main__":
    args = sys.argv[1:]
    out = Path(args[0])
    opts = dict(zip(args[1::2], args[2::2]))
    build(out, int(opts.get("--train", 600)), int(opts.get("--val", 120)), int(opts.get("--seed", 0)))
