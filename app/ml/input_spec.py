"""What a model consumes: the modality, the channel count and how pictures are resized, cropped and normalised.

Kept free of torch so the web process (predictions through ONNX Runtime, the run page) can use it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

IMAGE_MODALITY = "image"
RGB_CHANNELS = 3

Interpolation = Literal["bilinear", "bicubic"]


@dataclass(frozen=True)
class Preprocessing:
    """Resize the shorter side to `resize_size`, centre-crop `crop_size`, then normalise with mean/std."""

    resize_size: int
    crop_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: Interpolation = "bilinear"

    @property
    def preprocessing_id(self) -> str:
        """Short stable id for cache keys: two specs share cached features only if every field matches."""
        numbers = ",".join(f"{value:.6f}" for value in (*self.mean, *self.std))
        text = f"{self.resize_size}|{self.crop_size}|{self.interpolation}|{numbers}"
        return f"r{self.resize_size}c{self.crop_size}-{hashlib.sha256(text.encode()).hexdigest()[:10]}"


@dataclass(frozen=True)
class InputSpec:
    """What a model consumes: the modality, the channel count and how pictures are prepared."""

    modality: str
    channels: int
    preprocessing: Preprocessing

    def to_dict(self) -> dict[str, Any]:
        prep = self.preprocessing
        return {
            "modality": self.modality,
            "channels": self.channels,
            "resize_size": prep.resize_size,
            "crop_size": prep.crop_size,
            "mean": list(prep.mean),
            "std": list(prep.std),
            "interpolation": prep.interpolation,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> InputSpec:
        mean, std = tuple(float(v) for v in data["mean"]), tuple(float(v) for v in data["std"])
        if len(mean) != 3 or len(std) != 3:
            raise ValueError("mean and std need one value per RGB channel")
        interpolation = str(data["interpolation"])
        if interpolation not in ("bilinear", "bicubic"):
            raise ValueError(f"unknown interpolation {interpolation!r}")
        preprocessing = Preprocessing(
            resize_size=int(data["resize_size"]),
            crop_size=int(data["crop_size"]),
            mean=(mean[0], mean[1], mean[2]),
            std=(std[0], std[1], std[2]),
            interpolation="bicubic" if interpolation == "bicubic" else "bilinear",
        )
        modality, channels = str(data["modality"]), int(data["channels"])
        return cls(modality=modality, channels=channels, preprocessing=preprocessing)
