"""A synthetic demo dataset generated on the fly: coloured shapes and stripes from two distributions.

"render" images are clean drawings (the other distribution); "phone" images are the same scenes shot badly
(perspective, uneven light, blur, sensor noise, stronger JPEG compression) and are the target distribution.
Each class has its own shape and hue, so a linear probe on ImageNet features learns it easily; a known share
of the given labels is flipped so the review workflow has real mislabels to find.
"""

from __future__ import annotations

import colorsys
import io
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

DEMO_CLASSES = ("circle", "square", "triangle", "stripes")
TARGET_SOURCE = "phone"
OTHER_SOURCE = "render"
_CLASS_HUES = {"circle": 0.0, "square": 0.62, "triangle": 0.33, "stripes": 0.13}
_SUPERSAMPLING = 2


@dataclass(frozen=True)
class DemoImage:
    filename: str
    jpeg: bytes
    given_label: str
    true_label: str
    source: str

    @property
    def relative_path(self) -> str:
        """`source/label/file`, the layout `infer_path_labels(..., source_folders=True)` reads back."""
        return f"{self.source}/{self.given_label}/{self.filename}"


def generate_demo_dataset(
    *,
    n_images: int = 600,
    size: int = 160,
    seed: int = 0,
    target_share: float = 2 / 3,
    flipped_share: float = 0.05,
) -> list[DemoImage]:
    """`n_images` JPEGs, classes balanced within each source; identical output for identical arguments.

    `target_share` of the images are "phone" shots; exactly round(flipped_share * n_images) images carry a
    given label different from their true label.
    """
    plan_rng = np.random.default_rng(seed)
    n_target = round(n_images * target_share)
    unshuffled = [(TARGET_SOURCE, label) for label in _balanced_labels(n_target)] + [
        (OTHER_SOURCE, label) for label in _balanced_labels(n_images - n_target)
    ]
    shuffled = [unshuffled[index] for index in plan_rng.permutation(n_images)]
    given_labels = [label for _, label in shuffled]
    for index in plan_rng.choice(n_images, size=round(n_images * flipped_share), replace=False):
        others = [name for name in DEMO_CLASSES if name != given_labels[index]]
        given_labels[index] = others[plan_rng.integers(len(others))]

    images = []
    for position, (source, true_label) in enumerate(shuffled):
        image_rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(position,)))
        picture = _draw_scene(image_rng, label=true_label, size=size)
        if source == TARGET_SOURCE:
            jpeg = _encode_jpeg(_phone_shot(image_rng, picture), quality=int(image_rng.integers(55, 86)))
        else:
            jpeg = _encode_jpeg(picture, quality=92)
        images.append(
            DemoImage(
                filename=f"img_{position:04d}.jpg",
                jpeg=jpeg,
                given_label=given_labels[position],
                true_label=true_label,
                source=source,
            )
        )
    return images


def write_demo_zip(images: Sequence[DemoImage], zip_path: Path) -> None:
    """Write the images as `source/label/file` entries (stored: JPEG does not compress further)."""
    with zipfile.ZipFile(zip_path, "w", compression=zipfile.ZIP_STORED) as archive:
        for image in images:
            archive.writestr(image.relative_path, image.jpeg)


def write_demo_folder(images: Sequence[DemoImage], folder: Path) -> None:
    """Write the images under `folder` as `source/label/file`."""
    for image in images:
        target = folder / image.relative_path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(image.jpeg)


def _balanced_labels(count: int) -> list[str]:
    return [DEMO_CLASSES[index % len(DEMO_CLASSES)] for index in range(count)]


def _rgb(hue: float, saturation: float, value: float) -> tuple[int, int, int]:
    red, green, blue = colorsys.hsv_to_rgb(hue % 1.0, saturation, value)
    return round(red * 255), round(green * 255), round(blue * 255)


def _draw_scene(rng: np.random.Generator, *, label: str, size: int) -> Image.Image:
    canvas_size = size * _SUPERSAMPLING
    background = _rgb(rng.uniform(0, 1), rng.uniform(0.0, 0.15), rng.uniform(0.8, 1.0))
    hue = _CLASS_HUES[label] + rng.uniform(-0.04, 0.04)
    colour = _rgb(hue, rng.uniform(0.65, 1.0), rng.uniform(0.6, 0.95))
    if label == "stripes":
        return _stripes(rng, size=size, colour=colour, background=background)
    canvas = Image.new("RGB", (canvas_size, canvas_size), background)
    draw = ImageDraw.Draw(canvas)
    centre = rng.uniform(0.38, 0.62, size=2) * canvas_size
    radius = rng.uniform(0.22, 0.34) * canvas_size
    if label == "circle":
        draw.ellipse([*(centre - radius), *(centre + radius)], fill=colour)
    else:
        corners = 4 if label == "square" else 3
        angles = rng.uniform(0, 2 * np.pi) + np.arange(corners) * 2 * np.pi / corners
        points = centre + radius * np.stack([np.cos(angles), np.sin(angles)], axis=1)
        draw.polygon([(float(x), float(y)) for x, y in points], fill=colour)
    return canvas.resize((size, size), Image.Resampling.BOX)


def _stripes(
    rng: np.random.Generator, *, size: int, colour: tuple[int, int, int], background: tuple[int, int, int]
) -> Image.Image:
    angle = rng.uniform(0, np.pi)
    period = rng.uniform(0.08, 0.16) * size
    coordinates = np.arange(size, dtype=np.float32)
    along = coordinates[None, :] * np.cos(angle) + coordinates[:, None] * np.sin(angle)
    # A smooth square-ish wave rather than a hard threshold, so stripes stay anti-aliased at any angle.
    weight = np.clip(0.5 + 2.0 * np.sin(2 * np.pi * along / period), 0.0, 1.0)[..., None]
    pixels = weight * np.array(colour) + (1 - weight) * np.array(background)
    return Image.fromarray(pixels.round().astype(np.uint8))


def _phone_shot(rng: np.random.Generator, picture: Image.Image) -> Image.Image:
    size = picture.width
    # Perspective-ish jitter: sample a random inward quadrilateral and stretch it back to the full frame.
    inset = rng.uniform(0.0, 0.1, size=8) * size
    quad = (
        inset[0], inset[1],
        inset[2], size - inset[3],
        size - inset[4], size - inset[5],
        size - inset[6], inset[7],
    )  # fmt: skip
    warped = picture.transform(picture.size, Image.Transform.QUAD, quad, Image.Resampling.BILINEAR)
    blurred = warped.filter(ImageFilter.GaussianBlur(radius=rng.uniform(0.6, 2.0)))
    pixels = np.asarray(blurred, dtype=np.float32)
    # Uneven lighting (a brightness ramp in a random direction) and a colour cast.
    offsets = np.linspace(-0.5, 0.5, size, dtype=np.float32)
    direction = rng.uniform(0, 2 * np.pi)
    gradient = offsets[None, :] * np.cos(direction) + offsets[:, None] * np.sin(direction)
    ramp = rng.uniform(0.75, 1.05) + rng.uniform(0.1, 0.4) * gradient
    pixels = pixels * ramp[..., None] * rng.uniform(0.9, 1.1, size=3).astype(np.float32)
    pixels += rng.standard_normal(pixels.shape, dtype=np.float32) * np.float32(rng.uniform(4.0, 14.0))
    return Image.fromarray((np.clip(pixels, 0, 255) + 0.5).astype(np.uint8))


def _encode_jpeg(picture: Image.Image, *, quality: int) -> bytes:
    buffer = io.BytesIO()
    picture.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()
