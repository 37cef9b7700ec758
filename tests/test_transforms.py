"""Train/eval transforms: shapes, determinism, nearest masks, alignment, torchvision parity."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
import torchvision.transforms as T
import torchvision.transforms.functional as TF
from PIL import Image

from helpers import label_colour, synth_image
from incseg_cli.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    EvalTransform,
    TrainTransform,
    denormalize,
    normalize,
    random_resized_crop_params,
)
from incseg_cli.errors import UsageError


def _blocks(height: int = 60, width: int = 80) -> tuple[Image.Image, np.ndarray]:
    """Big uniform blocks of labels 0..5 (+ a 255 stripe); the colour encodes the label."""
    mask = np.zeros((height, width), np.uint8)
    for k in range(6):
        mask[(k // 3) * height // 2 : (k // 3 + 1) * height // 2, (k % 3) * width // 3 : (k % 3 + 1) * width // 3] = k
    mask[:, width // 2 : width // 2 + 2] = 255
    return synth_image(mask), mask


def test_normalize_roundtrip():
    img = torch.randint(0, 256, (3, 5, 7), dtype=torch.uint8)
    x = normalize(img)
    assert x.dtype == torch.float32
    assert torch.allclose(x[0, 0, 0], (img[0, 0, 0] / 255.0 - IMAGENET_MEAN[0]) / IMAGENET_STD[0])
    assert torch.allclose(denormalize(x), img.float() / 255.0, atol=1e-6)
    assert normalize(img[None]).shape == (1, 3, 5, 7)
    assert denormalize(torch.full((3, 2, 2), 100.0)).max() == 1.0


def test_train_shapes_determinism_and_values():
    image, mask = _blocks()
    tf = TrainTransform(32)
    x, y = tf(image, mask, random.Random(7))
    assert x.shape == (3, 32, 32) and x.dtype == torch.uint8  # normalised on the device
    assert y.shape == (32, 32) and y.dtype == torch.uint8
    assert set(y.unique().tolist()) <= set(np.unique(mask).tolist())  # nearest: no new values
    x2, y2 = tf(image, mask, random.Random(7))
    assert torch.equal(x, x2) and torch.equal(y, y2)
    outputs = {tf(image, mask, random.Random(s))[1].numpy().tobytes() for s in range(8)}
    assert len(outputs) > 1
    x3, y3 = tf(image, None, random.Random(7))
    assert y3 is None and torch.equal(x3, x)  # the mask does not change the draws


def test_alignment_image_and_label():
    image, mask = _blocks(90, 120)
    colours = torch.tensor([label_colour(k) for k in range(256)], dtype=torch.float32) / 255.0
    for seed in range(6):
        x, y = TrainTransform(48)(image, mask, random.Random(seed))
        rgb = denormalize(x)
        # Interior pixels (the 3x3 neighbourhood has one label) have their label's colour.
        pad = torch.nn.functional.pad(y[None, None].float(), (1, 1, 1, 1), mode="replicate")
        windows = pad.unfold(2, 3, 1).unfold(3, 3, 1).reshape(48, 48, 9)
        interior = (windows == windows[..., :1]).all(-1) & (y != 255)
        assert interior.sum() > 100
        expected = colours[y[interior].long()].T
        assert (rgb[:, interior] - expected).abs().max() < 0.08


def test_crop_params_follow_torchvision():
    rng = random.Random(0)
    for _ in range(200):
        i, j, h, w = random_resized_crop_params(100, 60, (0.5, 2.0), (3 / 4, 4 / 3), rng)
        assert 0 <= i and 0 <= j and i + h <= 60 and j + w <= 100 and h > 0 and w > 0
    # Impossible scales: the centre-crop fallback (with ratio clamping) equals torchvision's.
    for size, ratio in (((200, 50), (3 / 4, 4 / 3)), ((50, 200), (3 / 4, 4 / 3)), ((80, 70), (0.5, 2.0))):
        image = Image.new("RGB", size)
        ours = random_resized_crop_params(size[0], size[1], (5.0, 6.0), ratio, random.Random(1))
        theirs = T.RandomResizedCrop.get_params(image, scale=(5.0, 6.0), ratio=list(ratio))
        assert ours == tuple(theirs)


def test_train_flip_and_hflip_off():
    image, mask = _blocks()
    tf = TrainTransform(16, scale=(5.0, 6.0), ratio=(0.5, 2.0), hflip=False)  # fallback: whole image
    _, y = tf(image, mask, random.Random(0))
    expected = np.asarray(Image.fromarray(mask).resize((16, 16), Image.NEAREST))
    np.testing.assert_array_equal(y.numpy(), expected)
    flipped = TrainTransform(16, scale=(5.0, 6.0), ratio=(0.5, 2.0), hflip=True)
    seen = {tuple(flipped(image, mask, random.Random(s))[1][0].tolist()) for s in range(10)}
    assert seen == {tuple(expected[0].tolist()), tuple(expected[0, ::-1].tolist())}


def test_eval_crop_matches_torchvision():
    image, mask = _blocks(60, 90)
    x, y = EvalTransform("crop", 40)(image, mask)
    assert x.shape == (3, 40, 40) and y.shape == (40, 40)
    ref = TF.center_crop(TF.resize(image, 40, interpolation=T.InterpolationMode.BILINEAR), 40)
    np.testing.assert_allclose(denormalize(x).permute(1, 2, 0).numpy() * 255, np.asarray(ref, np.float32), atol=1e-3)
    ref_mask = TF.center_crop(TF.resize(Image.fromarray(mask), 40, interpolation=T.InterpolationMode.NEAREST), 40)
    np.testing.assert_array_equal(y.numpy(), np.asarray(ref_mask))
    # portrait image, and an image already at the size
    assert EvalTransform("crop", 32)(Image.new("RGB", (50, 70)), None)[0].shape == (3, 32, 32)
    assert EvalTransform("crop", 32)(Image.new("RGB", (32, 32)), np.zeros((32, 32), np.uint8))[1].shape == (32, 32)


def test_eval_full_and_errors():
    image, mask = _blocks(30, 50)
    x, y = EvalTransform("full")(image, mask, random.Random(0))
    assert x.shape == (3, 30, 50)
    np.testing.assert_array_equal(y.numpy(), mask)
    with pytest.raises(UsageError, match="unknown evaluation protocol"):
        EvalTransform("multiscale")
    with pytest.raises(UsageError):
        TrainTransform(0)
