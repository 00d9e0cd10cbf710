"""Ingest stores two dHashes per new image from the decode that makes its thumbnail: its whole view's and its
inner view's (the second candidate key that finds lightly cropped copies)."""

from __future__ import annotations

import io

from PIL import Image as PILImage
from sklearn.datasets import load_sample_images
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.ml.images import dhash_distance, inner_dhash64, shrink
from app.models import Image
from tests.datasets.conftest import Ingest


def _jpeg(picture: PILImage.Image) -> bytes:
    buffer = io.BytesIO()
    picture.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def test_each_new_image_gets_an_inner_hash_that_finds_its_cropped_copy(ingest: Ingest) -> None:
    photo = PILImage.fromarray(load_sample_images().images[0])
    width, height = photo.size
    cropped = photo.crop((width // 20, height // 20, width - width // 20, height - height // 20))  # 5 % a side
    files = [("scene/photo.jpg", _jpeg(photo)), ("scene/cropped.jpg", _jpeg(cropped))]
    dataset_id = ingest.create_dataset()
    assert ingest.upload(dataset_id, files)["accepted"] == 2

    with Session(ingest.engine) as session:
        rows = session.execute(
            select(Image.filename, Image.phash, Image.inner_phash).where(Image.dataset_id == dataset_id)
        ).all()
    hashes = {filename: (whole, inner) for filename, whole, inner in rows}
    (photo_whole, photo_inner), (crop_whole, _crop_inner) = hashes["scene/photo.jpg"], hashes["scene/cropped.jpg"]
    assert photo_inner is not None and photo_inner != photo_whole
    # The stored value is the inner hash of the upload's thumbnail (recomputed here from the same file).
    expected = inner_dhash64(shrink(PILImage.open(io.BytesIO(files[0][1])), max_side=256))
    assert dhash_distance(photo_inner, expected) <= 1
    # The crop's whole view is far from the photo's whole view but close to its inner view.
    assert dhash_distance(crop_whole, photo_whole) > 8
    assert dhash_distance(crop_whole, photo_inner) <= 4
