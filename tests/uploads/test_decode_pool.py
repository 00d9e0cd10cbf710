"""The ingest job's decoders: decodes begun early are handed to ingest, and only as many as allowed are held."""

from __future__ import annotations

from pathlib import Path

from app.ml.images import ImageLimits
from app.uploads.decode_pool import Decoders
from app.uploads.logic import DecodedImage
from tests.datasets.conftest import noisy_jpeg


def test_early_decodes_are_bounded_and_handed_over_by_content_and_extension(tmp_path: Path) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    first.write_bytes(noisy_jpeg(1))
    second.write_bytes(noisy_jpeg(2))
    with Decoders(limits=ImageLimits(), thumbnail_side=64, cores=1, early_limit=1) as decoders:
        decoders.decode_early(first, "1" * 64, "zip/cat/a.jpg")  # no pool yet: nothing begins
        assert decoders.held == 0
        decoders.start(32)
        decoders.decode_early(first, "1" * 64, "zip/cat/a.jpg")
        decoders.decode_early(second, "2" * 64, "zip/cat/b.jpg")  # over the limit: left for later
        assert decoders.held == 1
        other_name = decoders.decode(first, "1" * 64, "zip/cat/a.png").result(timeout=60)  # its own decode
        assert decoders.held == 1
        handed = decoders.decode(first, "1" * 64, "zip/dog/a.JPG").result(timeout=60)
        assert decoders.held == 0
    assert isinstance(handed, DecodedImage) and isinstance(other_name, DecodedImage)
    assert handed.notes == () and other_name.notes == ("extension .png does not match the content, which is JPEG",)
    assert handed.stats is not None and handed.stats.brightness > 0.3  # random pixels: mid grey on average
