"""Ingest measures each new image's statistics in the decode that makes its thumbnail and stores one row."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.models import Image, ImageStat
from tests.datasets.conftest import Ingest, jpeg, noisy_jpeg


def test_every_new_image_gets_one_statistics_row_with_plausible_values(ingest: Ingest) -> None:
    dataset_id = ingest.create_dataset()
    files = [
        ("night/dark.jpg", jpeg((8, 8, 8), size=(200, 150))),
        ("day/bright.jpg", jpeg((250, 250, 245), size=(200, 150))),
        ("day/noise.jpg", noisy_jpeg(3, size=(200, 150))),
        ("day/copy.jpg", jpeg((8, 8, 8), size=(200, 150))),  # a duplicate's content: no second image, no row
    ]
    report = ingest.upload(dataset_id, files)
    assert (report["accepted"], report["conflicts"]) == (3, 1)
    with Session(ingest.engine) as session:
        rows = session.execute(select(Image.filename, ImageStat).join(ImageStat, ImageStat.image_id == Image.id)).all()
        stats = {filename: stat for filename, stat in rows}
        images = session.scalars(select(Image.id).where(Image.dataset_id == dataset_id)).all()
    assert len(stats) == len(images) == 3
    dark, bright, noise = stats["night/dark.jpg"], stats["day/bright.jpg"], stats["day/noise.jpg"]
    assert dark.brightness < 0.1 < 0.9 < bright.brightness
    assert dark.contrast < 0.02 and bright.colourfulness < 0.05  # flat, grey-ish pictures
    assert noise.contrast > 0.1 and noise.sharpness > 100 * max(dark.sharpness, 1e-9)
    assert noise.entropy > 4 > dark.entropy
