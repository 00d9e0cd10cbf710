"""The one image decode every scoring path uses: training, features, predictions, the ONNX model's documentation.

Torch-free, so the web process can decode for ONNX Runtime predictions without importing torch.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import BinaryIO

import numpy as np
import numpy.typing as npt
from PIL import Image, ImageOps

from app.ml.input_spec import Preprocessing

_RESAMPLING = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC}


def decode_array(
    source: Path | BinaryIO, preprocessing: Preprocessing, *, crop_at: tuple[float, float] | None = None
) -> npt.NDArray[np.uint8]:
    """Decode, resize the shorter side to `resize_size` and crop `crop_size` square in one step: RGB uint8
    [3, crop, crop], upright per EXIF.

    The crop is centred, or at `crop_at` (fractions 0..1 of the slack along x and y) for training-time random
    crops.
    """
    with Image.open(source) as opened:
        width, height = opened.size
        scale = preprocessing.resize_size / min(width, height)
        # JPEG can decode at 1/2, 1/4 or 1/8 size directly; draft keeps at least the size we resize to.
        opened.draft("RGB", (math.ceil(width * scale), math.ceil(height * scale)))
        picture = ImageOps.exif_transpose(opened).convert("RGB")
    width, height = picture.size
    scale = preprocessing.resize_size / min(width, height)
    box_side = preprocessing.crop_size / scale
    slack_x, slack_y = max(width - box_side, 0.0), max(height - box_side, 0.0)
    fraction_x, fraction_y = crop_at if crop_at is not None else (0.5, 0.5)
    left, top = fraction_x * slack_x, fraction_y * slack_y
    box = (left, top, left + min(box_side, width), top + min(box_side, height))
    size = (preprocessing.crop_size, preprocessing.crop_size)
    cropped = picture.resize(size, _RESAMPLING[preprocessing.interpolation], box=box)
    return np.ascontiguousarray(np.asarray(cropped, dtype=np.uint8).transpose(2, 0, 1))


def normalised(images: npt.NDArray[np.uint8], preprocessing: Preprocessing) -> npt.NDArray[np.float32]:
    """uint8 [N, 3, H, W] to the float32 input of the downloadable model.onnx: x / 255, minus mean, over std."""
    mean = np.asarray(preprocessing.mean, dtype=np.float32).reshape(1, 3, 1, 1)
    std = np.asarray(preprocessing.std, dtype=np.float32).reshape(1, 3, 1, 1)
    return ((images.astype(np.float32) / np.float32(255.0)) - mean) / std
