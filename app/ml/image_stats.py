"""Per-image statistics for data health, measured on the decode ingest already does (no second pass).

Pure functions over a Pillow image: what CleanVision measures (brightness, contrast, blur, information,
colour), computed on a small greyscale/colour copy so they cost a fraction of the decode itself.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

# Statistics are measured at this side: big enough for blur to show, small enough to be cheap.
MEASURE_SIDE = 128


@dataclass(frozen=True)
class ImageStats:
    brightness: float  # mean luminance, 0 (black) .. 1 (white)
    contrast: float  # standard deviation of luminance, 0 .. 0.5
    sharpness: float  # variance of the Laplacian of luminance (0..1 scale): low = blurry
    entropy: float  # Shannon entropy of the 64-bin luminance histogram, bits (0 .. 6): low = little information
    colourfulness: float  # mean absolute channel spread, 0 .. 1: ~0 = greyscale


def measure(image: Image.Image) -> ImageStats:
    small = image.convert("RGB")
    small.thumbnail((MEASURE_SIDE, MEASURE_SIDE))
    rgb = np.asarray(small, dtype=np.float32) / 255.0
    grey = rgb @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    return ImageStats(
        brightness=float(grey.mean()),
        contrast=float(grey.std()),
        sharpness=_laplacian_variance(grey),
        entropy=_entropy(grey),
        colourfulness=_channel_spread(rgb),
    )


def _channel_spread(rgb: np.ndarray) -> float:
    # Element-wise over the three planes: numpy's max/min along a length-3 last axis is ~20x slower.
    red, green, blue = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    spread = np.maximum(np.maximum(red, green), blue) - np.minimum(np.minimum(red, green), blue)
    return float(spread.mean())


def _laplacian_variance(grey: np.ndarray) -> float:
    if grey.shape[0] < 3 or grey.shape[1] < 3:
        return 0.0
    lap = grey[:-2, 1:-1] + grey[2:, 1:-1] + grey[1:-1, :-2] + grey[1:-1, 2:] - 4.0 * grey[1:-1, 1:-1]
    return float(lap.var())


def _entropy(grey: np.ndarray) -> float:
    counts, _ = np.histogram(grey, bins=64, range=(0.0, 1.0))
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log2(p)).sum())
