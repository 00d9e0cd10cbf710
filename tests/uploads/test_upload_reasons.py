"""Issue 15 item 6: a file without a label still gets its content checked, and is reported with every reason
that applies (content first), not only "no label"."""

from __future__ import annotations

from PIL import Image

from tests.datasets.conftest import Ingest, jpeg, noisy_jpeg, reasons
from tests.uploads.test_upload_validation import encode


def test_loose_files_without_a_label_get_their_content_reasons_first(ingest: Ingest) -> None:
    dataset = ingest.create_dataset()
    truncated = jpeg(size=(200, 200), quality=95)
    files = [
        ("good.jpg", noisy_jpeg(3)),
        ("truncated.jpg", truncated[: len(truncated) // 2]),
        ("notes.jpg", b"just some text, not a picture"),
        ("tiny.png", encode(Image.new("RGB", (8, 40)), "PNG")),
    ]
    found = reasons(ingest.upload(dataset, files))
    assert set(found) == {"good.jpg", "truncated.jpg", "notes.jpg", "tiny.png"}
    assert found["good.jpg"].startswith("no label")
    assert found["truncated.jpg"].startswith("truncated or corrupt JPEG data; no label")
    assert found["notes.jpg"].startswith("not an image (content is not JPEG, PNG, WebP, BMP, GIF or TIFF); no label")
    assert found["tiny.png"].startswith("image is too small (8x40; each side must be at least 16 px); no label")
