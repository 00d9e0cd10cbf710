import hashlib
import io
import struct
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, PngImagePlugin

from app.ml.images import (
    ImageInfo,
    ImageLimits,
    ImageRejectedError,
    Rejection,
    dhash64,
    dhash_distance,
    inspect_image,
    load_rgb,
    make_thumbnail,
    normalise,
)


def encode(image: Image.Image, image_format: str, **params: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=image_format, **params)
    return buffer.getvalue()


def accepted(data: bytes | Path, **kwargs: object) -> ImageInfo:
    result = inspect_image(data, **kwargs)  # type: ignore[arg-type]
    assert isinstance(result, ImageInfo), result
    return result


def rejected(data: bytes | Path, **kwargs: object) -> Rejection:
    result = inspect_image(data, **kwargs)  # type: ignore[arg-type]
    assert isinstance(result, Rejection), result
    return result


def pixel(image: Image.Image, x: int, y: int) -> tuple[int, ...]:
    return tuple(np.asarray(image)[y, x].tolist())


def assert_close(actual: tuple[int, ...], expected: tuple[int, ...], tolerance: int = 6) -> None:
    assert max(abs(a - e) for a, e in zip(actual, expected, strict=True)) <= tolerance, (actual, expected)


def two_colour_image(size: tuple[int, int], left: tuple[int, int, int], right: tuple[int, int, int]) -> Image.Image:
    image = Image.new("RGB", size, left)
    image.paste(right, (size[0] // 2, 0, size[0], size[1]))
    return image


@pytest.mark.parametrize(
    ("image_format", "filename"),
    [
        ("JPEG", "a.jpg"),
        ("PNG", "a.png"),
        ("WEBP", "a.webp"),
        ("BMP", "a.bmp"),
        ("GIF", "a.gif"),
        ("TIFF", "a.tif"),
    ],
)
def test_allowed_formats_are_accepted_with_their_facts(image_format: str, filename: str) -> None:
    data = encode(Image.new("RGB", (80, 60), (10, 200, 30)), image_format)
    info = accepted(data, filename=filename)
    assert (info.width, info.height, info.format) == (80, 60, image_format)
    assert info.sha256 == hashlib.sha256(data).hexdigest()
    assert info.notes == ()


def test_path_input_matches_bytes_input_and_uses_the_path_name(tmp_path: Path) -> None:
    data = encode(Image.new("RGB", (64, 64), "red"), "PNG")
    path = tmp_path / "photo.jpeg"
    path.write_bytes(data)
    from_path = accepted(path)
    assert from_path.sha256 == accepted(data).sha256
    assert any(".jpeg" in note and "PNG" in note for note in from_path.notes)
    assert pixel(normalise(from_path.image), 5, 5) == (255, 0, 0)


def test_zero_byte_file_is_rejected() -> None:
    rejection = rejected(b"", filename="x.jpg")
    assert rejection.code == "empty"
    assert "empty" in rejection.reason


def test_file_over_the_byte_limit_is_rejected() -> None:
    data = encode(Image.new("RGB", (64, 64)), "BMP")
    rejection = rejected(data, limits=ImageLimits(max_bytes=1000))
    assert rejection.code == "file_too_large"
    assert "too large" in rejection.reason


def test_truncated_jpeg_is_rejected() -> None:
    noise = np.random.default_rng(0).integers(0, 256, (128, 128, 3), dtype=np.uint8)
    data = encode(Image.fromarray(noise), "JPEG")
    rejection = rejected(data[: len(data) // 2], filename="cut.jpg")
    assert rejection.code == "corrupt"
    assert "truncated" in rejection.reason


def test_a_jpeg_needed_only_as_a_thumbnail_decodes_at_a_reduced_scale_with_its_own_facts() -> None:
    image = two_colour_image((1000, 750), (250, 10, 10), (10, 10, 250))
    data = encode(image, "JPEG", quality=90)
    info = accepted(data, filename="a.jpg", needed_side=256)
    assert (info.width, info.height) == (1000, 750)  # the file's size, not the decode's
    assert info.image.size == (500, 375)  # 1/2 is the smallest DCT scale still covering 256 x 192
    assert info.sha256 == accepted(data, filename="a.jpg").sha256
    assert_close(pixel(info.image, 100, 100), (250, 10, 10), tolerance=12)
    small = accepted(encode(Image.new("RGB", (200, 150), (9, 9, 9)), "JPEG"), needed_side=256)
    assert small.image.size == (200, 150)  # never decoded larger than it is, nor smaller than needed


def test_truncated_jpeg_is_rejected_when_decoded_at_a_reduced_scale() -> None:
    noise = np.random.default_rng(1).integers(0, 256, (1024, 1024, 3), dtype=np.uint8)
    data = encode(Image.fromarray(noise), "JPEG")
    rejection = rejected(data[: len(data) // 2], filename="cut.jpg", needed_side=64)
    assert rejection.code == "corrupt"


def test_text_file_named_jpg_is_not_an_image() -> None:
    rejection = rejected(b"just some notes\nnot a picture\n", filename="notes.jpg")
    assert rejection.code == "not_image"
    assert rejection.reason.startswith("not an image")


def test_png_named_jpg_is_accepted_with_a_note() -> None:
    info = accepted(encode(Image.new("RGB", (40, 40)), "PNG"), filename="really-a-png.JPG")
    assert info.format == "PNG"
    assert info.notes == ("extension .jpg does not match the content, which is PNG",)


def test_broken_png_header_is_called_a_corrupt_png() -> None:
    rejection = rejected(b"\x89PNG\r\n\x1a\n" + b"\x00garbage" * 10, filename="x.png")
    assert rejection.code == "corrupt"
    assert "corrupt PNG" in rejection.reason


def iso_media_header(major_brand: bytes, compatible_brands: bytes) -> bytes:
    box = b"ftyp" + major_brand + b"\x00\x00\x00\x00" + compatible_brands
    return struct.pack(">I", 4 + len(box)) + box + b"\x00" * 64


@pytest.mark.parametrize(
    ("content", "name"),
    [
        (b'<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg" width="10"></svg>', "SVG"),
        (b"<svg viewBox='0 0 10 10'><circle r='4'/></svg>", "SVG"),
        (b"\n  <!DOCTYPE html><html><body><img src=x></body></html>", "HTML"),
        (b"\xef\xbb\xbf<html><head><title>x</title></head></html>", "HTML"),
        (b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n", "PDF"),
        (iso_media_header(b"heic", b"mif1heic"), "HEIC/HEIF"),
        (iso_media_header(b"mif1", b"mif1heic"), "HEIC/HEIF"),
        (iso_media_header(b"avif", b"avifmif1"), "AVIF"),
        (iso_media_header(b"isom", b"isomiso2"), "Video (MP4/QuickTime)"),
        (b"8BPS\x00\x01" + b"\x00" * 64, "Photoshop (PSD)"),
    ],
)
def test_other_formats_are_refused_by_name(content: bytes, name: str) -> None:
    rejection = rejected(content, filename="upload.jpg")
    assert rejection.code == "unsupported_format"
    assert rejection.reason == f"{name} is not supported"


@pytest.mark.parametrize("size", [(110, 100), (300, 300)], ids=["between-1x-and-2x", "above-2x"])
def test_images_over_the_pixel_limit_are_rejected(size: tuple[int, int]) -> None:
    data = encode(Image.new("RGB", size), "PNG")
    pixels_before, filters_before = Image.MAX_IMAGE_PIXELS, list(warnings.filters)
    rejection = rejected(data, limits=ImageLimits(max_pixels=10_000))
    assert rejection.code == "too_many_pixels"
    assert "10,000 pixels" in rejection.reason
    assert pixels_before == Image.MAX_IMAGE_PIXELS
    assert warnings.filters == filters_before


def test_image_exactly_at_the_pixel_limit_is_accepted() -> None:
    accepted(encode(Image.new("RGB", (100, 100)), "PNG"), limits=ImageLimits(max_pixels=10_000))


def test_limits_of_concurrent_calls_do_not_leak_into_each_other() -> None:
    data = encode(Image.new("RGB", (110, 100)), "PNG")
    strict, lenient = ImageLimits(max_pixels=10_000), ImageLimits()
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda limits: inspect_image(data, limits=limits), [strict, lenient] * 20))
    assert all(isinstance(result, Rejection) for result in results[0::2])
    assert all(isinstance(result, ImageInfo) for result in results[1::2])


def test_tiny_image_is_rejected() -> None:
    rejection = rejected(encode(Image.new("RGB", (8, 40)), "PNG"), limits=ImageLimits(min_side=32))
    assert rejection.code == "too_small"
    assert "8x40" in rejection.reason


def png_with_text(text: str, *, compressed: bool) -> bytes:
    metadata = PngImagePlugin.PngInfo()
    metadata.add_text("Comment", text, zip=compressed)
    return encode(Image.new("RGB", (40, 40)), "PNG", pnginfo=metadata)


def test_png_with_a_huge_compressed_text_chunk_is_rejected() -> None:
    data = png_with_text("a" * (3 * 2**20), compressed=True)
    assert len(data) < 50_000
    rejection = rejected(data, limits=ImageLimits(max_png_text_bytes=2**20))
    assert rejection.code == "png_text_too_large"
    assert rejection.reason == "PNG text metadata is too large"


def test_png_text_over_the_budget_is_rejected_and_under_it_accepted() -> None:
    data = png_with_text("b" * 200_000, compressed=False)
    assert rejected(data, limits=ImageLimits(max_png_text_bytes=100_000)).code == "png_text_too_large"
    accepted(data, limits=ImageLimits(max_png_text_bytes=300_000))
    assert PngImagePlugin.MAX_TEXT_MEMORY == 64 * PngImagePlugin.MAX_TEXT_CHUNK


def test_unsupported_colour_mode_is_rejected() -> None:
    data = encode(Image.new("F", (40, 40), 0.5), "TIFF")
    rejection = rejected(data, filename="float.tif")
    assert rejection.code == "unsupported_mode"
    assert "F" in rejection.reason


@pytest.mark.parametrize(("image_format", "params"), [("GIF", {}), ("WEBP", {"lossless": True})])
def test_animation_keeps_the_first_frame_with_a_note(image_format: str, params: dict[str, object]) -> None:
    frames = [Image.new("RGB", (48, 48), colour) for colour in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    data = encode(frames[0], image_format, save_all=True, append_images=frames[1:], duration=100, **params)
    info = accepted(data)
    assert info.notes == ("3 frames (animated or multi-page); only the first frame is used",)
    assert_close(pixel(normalise(info.image), 10, 10), (255, 0, 0), tolerance=2)


def test_sixteen_bit_png_is_scaled_not_clipped() -> None:
    values = np.tile(np.linspace(0, 65535, 64).astype(np.uint16), (64, 1))
    info = accepted(encode(Image.fromarray(values), "PNG"))
    assert info.mode.startswith("I")
    rgb = normalise(info.image)
    assert rgb.mode == "RGB"
    for x in (0, 20, 40, 63):
        expected = round(int(values[0, x]) / 257)
        assert_close(pixel(rgb, x, 0), (expected,) * 3, tolerance=1)


def test_cmyk_jpeg_becomes_rgb() -> None:
    info = accepted(encode(Image.new("CMYK", (64, 64), (0, 255, 255, 0)), "JPEG"))
    assert info.mode == "CMYK"
    assert_close(pixel(normalise(info.image), 30, 30), (255, 0, 0), tolerance=8)


def test_palette_png_with_transparency_is_composited_on_white() -> None:
    image = Image.new("P", (64, 32), 0)
    image.putpalette([0, 0, 0, 0, 0, 255] + [0] * 762)
    image.paste(1, (32, 0, 64, 32))
    info = accepted(encode(image, "PNG", transparency=0))
    assert info.mode == "P"
    rgb = normalise(info.image)
    assert pixel(rgb, 5, 5) == (255, 255, 255)
    assert pixel(rgb, 50, 5) == (0, 0, 255)


def test_la_png_is_composited_on_white() -> None:
    image = Image.new("LA", (64, 32), (0, 0))
    image.paste((0, 255), (32, 0, 64, 32))
    info = accepted(encode(image, "PNG"))
    assert info.mode == "LA"
    rgb = normalise(info.image)
    assert pixel(rgb, 5, 5) == (255, 255, 255)
    assert pixel(rgb, 50, 5) == (0, 0, 0)


def test_half_transparent_rgba_is_blended_with_white() -> None:
    info = accepted(encode(Image.new("RGBA", (40, 40), (255, 0, 0, 128)), "PNG"))
    assert_close(pixel(normalise(info.image), 5, 5), (255, 127, 127), tolerance=1)


def test_exif_rotated_jpeg_thumbnail_is_upright() -> None:
    stored = two_colour_image((200, 100), left=(255, 0, 0), right=(0, 0, 255))
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    info = accepted(encode(stored, "JPEG", exif=exif.tobytes(), quality=95))
    assert (info.width, info.height) == (200, 100)
    thumbnail = Image.open(io.BytesIO(make_thumbnail(info.image, max_side=64)))
    assert thumbnail.format == "JPEG"
    assert thumbnail.size == (32, 64)
    assert_close(pixel(thumbnail.convert("RGB"), 16, 8), (255, 0, 0), tolerance=20)
    assert_close(pixel(thumbnail.convert("RGB"), 16, 56), (0, 0, 255), tolerance=20)


def test_thumbnail_shrinks_keeping_aspect_but_never_enlarges() -> None:
    large = Image.open(io.BytesIO(make_thumbnail(Image.new("RGB", (1000, 500), "green"))))
    small = Image.open(io.BytesIO(make_thumbnail(Image.new("RGB", (100, 50), "green"))))
    assert large.size == (256, 128)
    assert small.size == (100, 50)


def horizontal_gradient(brighter_on_left: bool) -> Image.Image:
    ramp = np.linspace(255, 0, 90) if brighter_on_left else np.linspace(0, 255, 90)
    return Image.fromarray(np.tile(ramp.astype(np.uint8), (80, 1))).convert("RGB")


def test_dhash_bits_follow_left_to_right_brightness() -> None:
    assert dhash64(horizontal_gradient(brighter_on_left=True)) == -1  # all 64 bits set, as a signed int64
    assert dhash64(horizontal_gradient(brighter_on_left=False)) == 0


def test_dhash_is_stable_for_near_duplicates_and_differs_for_other_images() -> None:
    rng = np.random.default_rng(1)
    scene = Image.fromarray(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)).resize((640, 480))
    recompressed = Image.open(io.BytesIO(encode(scene.resize((320, 240)), "JPEG", quality=70)))
    other = Image.fromarray(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)).resize((640, 480))
    hashes = [dhash64(image) for image in (scene, recompressed, other)]
    assert all(-(2**63) <= value < 2**63 for value in hashes)
    assert dhash_distance(hashes[0], hashes[1]) <= 6
    assert dhash_distance(hashes[0], hashes[2]) >= 16


def test_load_rgb_returns_rgb_or_raises_with_the_rejection() -> None:
    assert load_rgb(encode(Image.new("L", (40, 40), 9), "PNG")).mode == "RGB"
    with pytest.raises(ImageRejectedError) as raised:
        load_rgb(b"%PDF-1.4 nope")
    assert raised.value.rejection.reason == "PDF is not supported"
