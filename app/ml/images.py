"""Validate uploaded image files and turn them into RGB pictures, thumbnails and perceptual hashes.

Only JPEG, PNG, WebP, BMP, GIF and TIFF are decoded; everything else is refused with a reason a person can
act on. Pillow's own safety limits (decompression-bomb pixel count, PNG text-chunk sizes) are module
globals, so `inspect_image` sets them from `ImageLimits` for the duration of one decode and restores them
afterwards; see `_pillow_limits` for what that means with threads.
"""

from __future__ import annotations

import hashlib
import io
import math
import struct
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps, PngImagePlugin, UnidentifiedImageError

ALLOWED_FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "GIF", "TIFF")

# Errors Pillow's parsers and decoders raise on malformed input (besides the bomb and identify errors).
_DECODE_ERRORS = (
    OSError,
    SyntaxError,
    ValueError,
    EOFError,
    struct.error,
    IndexError,
    KeyError,
    TypeError,
    ZeroDivisionError,
    OverflowError,
)

# Modes `normalise` can turn into RGB. "F" (floating point) and exotic modes such as LAB are refused.
_SUPPORTED_MODES = frozenset(
    {"1", "L", "P", "RGB", "RGBA", "RGBX", "RGBa", "CMYK", "YCbCr", "LA", "La", "PA"}
    | {"I", "I;16", "I;16L", "I;16B", "I;16N"}
)
_ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})

# File extensions that match each decoded format; MPO is the multi-picture JPEG some cameras write.
_EXTENSIONS_BY_FORMAT = {
    "JPEG": (".jpg", ".jpeg", ".jpe", ".jfif"),
    "MPO": (".jpg", ".jpeg", ".mpo"),
    "PNG": (".png", ".apng"),
    "WEBP": (".webp",),
    "BMP": (".bmp", ".dib"),
    "GIF": (".gif",),
    "TIFF": (".tif", ".tiff"),
}

# Leading bytes of formats we refuse, named so the reason says what the file is.
_REFUSED_SIGNATURES: tuple[tuple[bytes, str], ...] = (
    (b"%PDF-", "PDF"),
    (b"%!PS", "PostScript/EPS"),
    (b"8BPS", "Photoshop (PSD)"),
    (b"\x00\x00\x00\x0cjP  \r\n\x87\n", "JPEG 2000"),
    (b"\xff\x4f\xff\x51", "JPEG 2000"),
    (b"\x00\x00\x00\x0cJXL \r\n\x87\n", "JPEG XL"),
    (b"\xff\x0a", "JPEG XL"),
    (b"PK\x03\x04", "ZIP archive"),
    (b"\x1f\x8b", "gzip"),
    (b"Rar!\x1a\x07", "RAR archive"),
    (b"7z\xbc\xaf\x27\x1c", "7z archive"),
)
# Major brands of ISO base media files (the box after the 4-byte size is "ftyp").
_HEIF_BRANDS = frozenset({b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"hevm", b"hevs", b"mif1", b"msf1"})
_AVIF_BRANDS = frozenset({b"avif", b"avis"})
# Leading bytes of the formats we do decode, used to say "corrupt PNG" rather than "not an image".
_ALLOWED_SIGNATURES: tuple[tuple[bytes, str], ...] = (
    (b"\xff\xd8\xff", "JPEG"),
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"BM", "BMP"),
)
_SNIFF_BYTES = 1024


@dataclass(frozen=True)
class ImageLimits:
    max_bytes: int = 50 * 2**20
    max_pixels: int = 40_000_000
    min_side: int = 32
    # Budget for PNG text metadata (tEXt/zTXt/iTXt), per decompressed chunk and in total.
    max_png_text_bytes: int = 2**20


DEFAULT_IMAGE_LIMITS = ImageLimits()


@dataclass(frozen=True)
class Rejection:
    code: str
    reason: str


@dataclass(frozen=True)
class ImageInfo:
    width: int
    height: int
    format: str
    mode: str
    sha256: str
    notes: tuple[str, ...]
    # The decoded first frame, as stored (not yet EXIF-rotated or converted); pass it to `normalise`.
    image: Image.Image = field(compare=False, repr=False)


class ImageRejectedError(ValueError):
    def __init__(self, rejection: Rejection) -> None:
        super().__init__(rejection.reason)
        self.rejection = rejection


def inspect_image(
    data: bytes | Path,
    *,
    filename: str | None = None,
    limits: ImageLimits = DEFAULT_IMAGE_LIMITS,
    needed_side: int | None = None,
) -> ImageInfo | Rejection:
    """Decode `data` fully (first frame) and return its facts, or why it cannot be used.

    `filename` is only used to note an extension that does not match the content; for a path it defaults to
    the path's name. With `needed_side`, the caller only needs a picture that fits that side (a thumbnail): a
    JPEG is then decoded at the smallest DCT scale (1/2, 1/4, 1/8) still at least that big. Every byte is still
    decoded, so a truncated or corrupt file is refused the same; the reported width and height stay the file's.
    """
    if filename is None:
        filename = data.name if isinstance(data, Path) else ""
    with _open_source(data) as source:
        size = source.seek(0, io.SEEK_END)
        if size == 0:
            return Rejection("empty", "empty file (0 bytes)")
        if size > limits.max_bytes:
            too_large = f"file is too large ({size:,} bytes; the limit is {limits.max_bytes:,})"
            return Rejection("file_too_large", too_large)
        source.seek(0)
        head = source.read(_SNIFF_BYTES)
        refused_format = _refused_format_name(head)
        if refused_format is not None:
            return Rejection("unsupported_format", f"{refused_format} is not supported")
        source.seek(0)
        decoded = _decode_first_frame(source, head=head, limits=limits, needed_side=needed_side)
        if isinstance(decoded, Rejection):
            return decoded
        image, frame_count, (width, height) = decoded
        source.seek(0)
        sha256 = hashlib.file_digest(source, "sha256").hexdigest()  # type: ignore[arg-type]

    notes = []
    detected_format = image.format or ""
    extension = Path(filename).suffix.lower()
    if extension and extension not in _EXTENSIONS_BY_FORMAT.get(detected_format, ()):
        notes.append(f"extension {extension} does not match the content, which is {detected_format}")
    if frame_count > 1:
        notes.append(f"{frame_count} frames (animated or multi-page); only the first frame is used")
    return ImageInfo(
        width=width,
        height=height,
        format=detected_format,
        mode=image.mode,
        sha256=sha256,
        notes=tuple(notes),
        image=image,
    )


def content_refusal(head: bytes) -> Rejection | None:
    """Why a file cannot be an image we decode, judged from its first bytes alone (as `inspect_image` would
    answer), or None when it may be one: lets a caller refuse it before storing it."""
    if not head:
        return Rejection("empty", "empty file (0 bytes)")
    refused_format = _refused_format_name(head[:_SNIFF_BYTES])
    if refused_format is not None:
        return Rejection("unsupported_format", f"{refused_format} is not supported")
    if _allowed_format_name(head) is None:
        return Rejection("not_image", "not an image (content is not JPEG, PNG, WebP, BMP, GIF or TIFF)")
    return None


def load_rgb(data: bytes | Path, *, limits: ImageLimits = DEFAULT_IMAGE_LIMITS) -> Image.Image:
    """Validated decode straight to RGB, for reading stored originals (training); raises if refused."""
    inspected = inspect_image(data, limits=limits)
    if isinstance(inspected, Rejection):
        raise ImageRejectedError(inspected)
    return normalise(inspected.image)


def normalise(image: Image.Image) -> Image.Image:
    """A new 8-bit RGB image, upright per its EXIF orientation, with any transparency composited on white.

    16-bit greyscale is scaled down (not clipped), so a mid-grey 16-bit value stays mid-grey.
    """
    upright = ImageOps.exif_transpose(image)
    if upright.mode == "RGB":
        return upright
    if upright.mode.startswith("I"):
        return _sixteen_bit_to_grey(upright).convert("RGB")
    if upright.mode in _ALPHA_MODES or "transparency" in upright.info:
        rgba = upright.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return upright.convert("RGB")


def make_thumbnail(image: Image.Image, *, max_side: int = 256) -> bytes:
    """JPEG bytes of the normalised image shrunk (never enlarged) to fit in max_side x max_side."""
    return encode_thumbnail(shrink(image, max_side=max_side))


def shrink(image: Image.Image, *, max_side: int = 256) -> Image.Image:
    """The normalised image shrunk (never enlarged) to fit in max_side x max_side, as a new RGB image.

    Ingest keeps this picture to hash it (`dhash64` of the thumbnail) without decoding the JPEG again.
    """
    thumbnail = normalise(image)
    thumbnail.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    return thumbnail


def encode_thumbnail(thumbnail: Image.Image) -> bytes:
    """JPEG bytes of a picture made by `shrink`."""
    buffer = io.BytesIO()
    thumbnail.save(buffer, format="JPEG", quality=85, optimize=True)
    return buffer.getvalue()


def dhash64(image: Image.Image) -> int:
    """64-bit difference hash of the normalised image, as a signed int64 (fits a BIGINT column).

    The greyscale picture is resized to 9 wide x 8 high; bit i (row-major, most significant first) is 1 when a
    pixel is brighter than its right neighbour. Near-duplicates (resized, recompressed, lightly edited) differ
    in few bits: compare with `dhash_distance`. Hashing the thumbnail instead of the original gives nearly the
    same bits for less work.
    """
    grey = normalise(image).convert("L").resize((9, 8), Image.Resampling.LANCZOS)
    pixels = np.asarray(grey, dtype=np.int16)
    bits = (pixels[:, :-1] > pixels[:, 1:]).flatten()
    unsigned = int("".join("1" if bit else "0" for bit in bits), 2)
    return unsigned - (1 << 64) if unsigned >= 1 << 63 else unsigned


# The share of each side, centred, that `inner_dhash64` hashes. A copy cropped by 2-5 % at each edge shows 90-96 %
# of the original, so its whole-view hash lands near the original's inner one (and the other way round).
# bench/near_duplicates.py --inner-share 0.90: pair precision 0.967, recall 0.893; at 0.94: 0.985, 0.902.
INNER_VIEW_SHARE = 0.94


def inner_dhash64(image: Image.Image, *, share: float = INNER_VIEW_SHARE) -> int:
    """`dhash64` of the central `share` of each side of the normalised image: a second candidate key for near
    duplicates, which finds lightly cropped copies that the whole view's hash misses."""
    return dhash64(_centre_view(normalise(image), share))


def _centre_view(picture: Image.Image, share: float) -> Image.Image:
    width, height = picture.size
    left, top = width * (1 - share) / 2, height * (1 - share) / 2
    return picture.crop((round(left), round(top), round(width - left), round(height - top)))


SIGNATURE_SIDE = 32
# The whole picture, then its central 96%, 92% and 88%: a copy cropped by 2-5 % at each edge (keeping 90-96 % of
# each side) matches one of the inner views. Steps of 4 points verified more cropped copies than 94 / 88 in
# bench/near_duplicates.py (0.962 of them against 0.952).
SIGNATURE_VIEWS = (1.0, 0.96, 0.92, 0.88)
SIGNATURE_VIEW_LENGTH = SIGNATURE_SIDE * SIGNATURE_SIDE * 3
SIGNATURE_LENGTH = SIGNATURE_VIEW_LENGTH * len(SIGNATURE_VIEWS)


def pixel_signature(image: Image.Image) -> np.ndarray:
    """SIGNATURE_SIDE x SIGNATURE_SIDE RGB pixels (uint8, area-averaged) of each of SIGNATURE_VIEWS, concatenated.

    The second, independent check on a dHash match (`app.ml.near_duplicates.signature_similarity`): 9 x 8 grey
    pixels cannot tell fine patterns or colours apart (stripes at any angle average to flat grey and hash alike),
    32 x 32 in colour still can, while resizing, recompression and brightness changes leave it nearly unchanged.
    """
    picture = normalise(image)
    views = []
    for share in SIGNATURE_VIEWS:
        view = _centre_view(picture, share)
        views.append(np.asarray(view.resize((SIGNATURE_SIDE, SIGNATURE_SIDE), Image.Resampling.BOX), np.uint8))
    return np.concatenate([view.reshape(-1) for view in views])


def thumbnail_signature(data: bytes) -> np.ndarray | None:
    """`pixel_signature` of a stored thumbnail's JPEG bytes; None when they do not decode."""
    try:
        with Image.open(io.BytesIO(data)) as thumbnail:
            return pixel_signature(thumbnail)
    except _DECODE_ERRORS:
        return None


def dhash_distance(first: int, second: int) -> int:
    """Number of differing bits between two `dhash64` values."""
    return ((first ^ second) & ((1 << 64) - 1)).bit_count()


@contextmanager
def _open_source(data: bytes | Path) -> Iterator[BinaryIO]:
    if isinstance(data, Path):
        with data.open("rb") as file:
            yield file
    else:
        yield io.BytesIO(data)


def _refused_format_name(head: bytes) -> str | None:
    for signature, name in _REFUSED_SIGNATURES:
        if head.startswith(signature):
            return name
    if head[4:8] == b"ftyp":
        brand = head[8:12]
        if brand in _HEIF_BRANDS:
            return "HEIC/HEIF"
        if brand in _AVIF_BRANDS:
            return "AVIF"
        return "Video (MP4/QuickTime)"
    text = head.removeprefix(b"\xef\xbb\xbf").lstrip().lower()
    if text.startswith(b"<"):
        if any(tag in text for tag in (b"<html", b"<!doctype html", b"<head", b"<body")):
            return "HTML"
        if b"<svg" in text:
            return "SVG"
    return None


def _allowed_format_name(head: bytes) -> str | None:
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    return next((name for signature, name in _ALLOWED_SIGNATURES if head.startswith(signature)), None)


def _decode_first_frame(
    source: BinaryIO, *, head: bytes, limits: ImageLimits, needed_side: int | None
) -> tuple[Image.Image, int, tuple[int, int]] | Rejection:
    claimed_format = _allowed_format_name(head)
    too_many_pixels = Rejection(
        "too_many_pixels", f"image has more than {limits.max_pixels:,} pixels (decompression-bomb guard)"
    )
    with _pillow_limits(limits):
        try:
            image = Image.open(source, formats=list(ALLOWED_FORMATS))
        except UnidentifiedImageError as error:
            if claimed_format is not None:
                return _decode_error_rejection(error, claimed_format)
            return Rejection("not_image", "not an image (content is not JPEG, PNG, WebP, BMP, GIF or TIFF)")
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            return too_many_pixels
        except _DECODE_ERRORS as error:
            return _decode_error_rejection(error, claimed_format)
        if min(image.size) < limits.min_side:
            width, height = image.size
            minimum = f"each side must be at least {limits.min_side} px"
            return Rejection("too_small", f"image is too small ({width}x{height}; {minimum})")
        if image.mode not in _SUPPORTED_MODES:
            return Rejection("unsupported_mode", f"colour mode {image.mode} is not supported")
        try:
            frame_count = getattr(image, "n_frames", 1)
            image.seek(0)
            size = image.size
            if needed_side is not None and image.format == "JPEG":
                image.draft(image.mode, _fitted_size(size, needed_side))
            image.load()
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            return too_many_pixels
        except _DECODE_ERRORS as error:
            return _decode_error_rejection(error, claimed_format)
    return image, frame_count, size


def _fitted_size(size: tuple[int, int], side: int) -> tuple[int, int]:
    """The size of `size` shrunk to fit a `side` x `side` box (as `Image.thumbnail` makes it), never grown."""
    scale = min(side / max(size), 1.0)
    return max(1, math.ceil(size[0] * scale)), max(1, math.ceil(size[1] * scale))


def _decode_error_rejection(error: Exception, claimed_format: str | None) -> Rejection:
    if isinstance(error, ValueError) and "MAX_TEXT" in str(error):
        return Rejection("png_text_too_large", "PNG text metadata is too large")
    return Rejection("corrupt", f"truncated or corrupt {claimed_format or 'image'} data")


# Serialises our own decodes while Pillow's global limits are swapped; see `_pillow_limits`.
_PILLOW_LIMITS_LOCK = threading.Lock()


@contextmanager
def _pillow_limits(limits: ImageLimits) -> Iterator[None]:
    """Apply `limits` to Pillow's global safety settings for one decode, then put the previous values back.

    Pillow checks the pixel count against `Image.MAX_IMAGE_PIXELS` when opening, seeking and loading: above 2x
    it raises DecompressionBombError, between 1x and 2x it only warns, so the warning is made an error here.
    Thread safety: the lock serialises calls of this module, so two `inspect_image` calls never see each
    other's limits. Other threads decoding with Pillow directly during that window see our (usually stricter)
    limits, and `warnings.catch_warnings` swaps the process-wide warning filters; workers should therefore
    decode uploads only through this module.
    """
    with _PILLOW_LIMITS_LOCK, warnings.catch_warnings():
        saved = (Image.MAX_IMAGE_PIXELS, PngImagePlugin.MAX_TEXT_CHUNK, PngImagePlugin.MAX_TEXT_MEMORY)
        Image.MAX_IMAGE_PIXELS = limits.max_pixels
        PngImagePlugin.MAX_TEXT_CHUNK = limits.max_png_text_bytes
        PngImagePlugin.MAX_TEXT_MEMORY = limits.max_png_text_bytes
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            yield
        finally:
            Image.MAX_IMAGE_PIXELS, PngImagePlugin.MAX_TEXT_CHUNK, PngImagePlugin.MAX_TEXT_MEMORY = saved


def _sixteen_bit_to_grey(image: Image.Image) -> Image.Image:
    values = np.asarray(image, dtype=np.float64)
    # I;16 is always 0..65535; plain "I" (32-bit) is treated as 16-bit data once it exceeds the 8-bit range.
    if image.mode.startswith("I;16") or values.max(initial=0) > 255:
        values = values / 257.0
    return Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8))
