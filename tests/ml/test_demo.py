import io
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image

from app.datasets.logic import infer_path_labels
from app.ml.archives import ArchiveEntry, iter_zip
from app.ml.demo import (
    DEMO_CLASSES,
    OTHER_SOURCE,
    TARGET_SOURCE,
    DemoImage,
    generate_demo_dataset,
    write_demo_folder,
    write_demo_zip,
)
from app.ml.images import ImageInfo, inspect_image


def small_demo(seed: int = 0) -> list[DemoImage]:
    return generate_demo_dataset(n_images=80, size=64, seed=seed)


def test_same_seed_gives_identical_images_and_labels() -> None:
    assert small_demo(seed=3) == small_demo(seed=3)
    assert [image.jpeg for image in small_demo(seed=3)] != [image.jpeg for image in small_demo(seed=4)]


def test_sources_classes_and_flipped_labels_follow_the_requested_shares() -> None:
    images = generate_demo_dataset(n_images=120, size=64, seed=1, target_share=0.75, flipped_share=0.05)
    assert Counter(image.source for image in images) == {TARGET_SOURCE: 90, OTHER_SOURCE: 30}
    for source in (TARGET_SOURCE, OTHER_SOURCE):
        per_class = Counter(image.true_label for image in images if image.source == source)
        assert set(per_class) == set(DEMO_CLASSES)
        assert max(per_class.values()) - min(per_class.values()) <= 1
    flipped = [image for image in images if image.given_label != image.true_label]
    assert len(flipped) == 6
    assert all(image.given_label in DEMO_CLASSES for image in flipped)
    assert len({image.filename for image in images}) == len(images)


def test_every_image_is_a_valid_jpeg_of_the_requested_size() -> None:
    for image in small_demo():
        info = inspect_image(image.jpeg, filename=image.filename)
        assert isinstance(info, ImageInfo), info
        assert (info.format, info.width, info.height, info.mode) == ("JPEG", 64, 64, "RGB")


def test_zip_round_trips_through_ingest_path_rules(tmp_path: Path) -> None:
    images = small_demo()
    archive = tmp_path / "demo.zip"
    write_demo_zip(images, archive)
    paths = [entry.path for entry in iter_zip(archive) if isinstance(entry, ArchiveEntry)]
    assert len(paths) == len(images)
    inferred = infer_path_labels(paths, source_folders=True)
    assert sorted((i.label, i.source) for i in inferred.values()) == sorted((i.given_label, i.source) for i in images)


def test_folder_layout_is_source_label_file(tmp_path: Path) -> None:
    images = small_demo()
    write_demo_folder(images, tmp_path)
    for image in images:
        assert (tmp_path / image.source / image.given_label / image.filename).read_bytes() == image.jpeg


def test_classes_are_separable_on_phone_shots_by_a_simple_colour_and_layout_classifier() -> None:
    images = generate_demo_dataset(n_images=240, size=160, seed=7)
    features = np.stack([np.asarray(Image.open(io.BytesIO(i.jpeg)).resize((8, 8)), np.float32).ravel() for i in images])
    labels = np.array([DEMO_CLASSES.index(image.true_label) for image in images])
    phone = np.array([image.source == TARGET_SOURCE for image in images])
    train, test = ~phone | (np.arange(len(images)) % 5 != 0), phone & (np.arange(len(images)) % 5 == 0)
    # Least-squares linear classifier on 8x8 colour thumbnails, trained on true labels.
    design = np.hstack([features / 255.0, np.ones((len(images), 1), np.float32)])
    weights, *_ = np.linalg.lstsq(design[train], np.eye(len(DEMO_CLASSES))[labels[train]], rcond=1e-3)
    accuracy = float(np.mean((design[test] @ weights).argmax(axis=1) == labels[test]))
    assert accuracy >= 0.8
