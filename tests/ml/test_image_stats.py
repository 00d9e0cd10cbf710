"""image_stats.measure separates the cases data health names: dark, light, blurry, flat, greyscale."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageFilter

from app.ml.image_stats import measure


def _noise(seed: int = 0, side: int = 200) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8))


def test_dark_and_light_by_brightness() -> None:
    dark = measure(Image.new("RGB", (64, 64), (5, 5, 5)))
    light = measure(Image.new("RGB", (64, 64), (250, 250, 250)))
    assert dark.brightness < 0.05 < 0.95 < light.brightness


def test_blur_lowers_sharpness() -> None:
    sharp = _noise()
    blurred = sharp.filter(ImageFilter.GaussianBlur(4))
    assert measure(blurred).sharpness < measure(sharp).sharpness / 10


def test_flat_image_has_no_information_and_noise_has_much() -> None:
    assert measure(Image.new("RGB", (64, 64), (120, 30, 200))).entropy == 0.0
    assert measure(_noise()).entropy > 4.0


def test_greyscale_has_no_colour() -> None:
    grey = _noise().convert("L").convert("RGB")
    assert measure(grey).colourfulness == 0.0
    assert measure(_noise()).colourfulness > 0.2
