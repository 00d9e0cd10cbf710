import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from app.ml.backbones import Preprocessing, load_backbone, state_dict_sha256, with_weights
from app.ml.features import (
    TrainingCancelled,
    decode_image,
    extract_features,
    file_sha256,
)

PREPROCESSING = Preprocessing(resize_size=40, crop_size=32, mean=(0.5,) * 3, std=(0.5,) * 3)


@pytest.fixture(scope="module")
def backbone() -> Any:
    return load_backbone("simple_cnn", seed=3)


@pytest.fixture
def image_paths(tmp_path: Path) -> list[Path]:
    rng = np.random.default_rng(0)
    paths = []
    for index in range(10):
        path = tmp_path / "images" / f"{index}.jpg"
        path.parent.mkdir(exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (90, 120, 3), dtype=np.uint8)).save(path, quality=90)
        paths.append(path)
    return paths


def _solid_jpeg(path: Path, size: tuple[int, int], colour: tuple[int, int, int]) -> Path:
    Image.new("RGB", size, colour).save(path, quality=95)
    return path


def test_decode_gives_a_centre_crop_of_the_resized_image(tmp_path: Path) -> None:
    picture = np.zeros((100, 200, 3), dtype=np.uint8)
    picture[:, :50] = (255, 0, 0)  # a red band on the left, outside the centre crop
    picture[:, 50:150] = (0, 0, 255)
    path = tmp_path / "bands.png"
    Image.fromarray(picture).save(path)

    decoded = decode_image(path, PREPROCESSING)

    assert decoded.dtype == torch.uint8 and decoded.shape == (3, 32, 32)
    assert decoded[2].min() > 240 and decoded[0].max() < 15  # only the blue middle remains


def test_decode_of_a_large_jpeg_at_reduced_size_keeps_its_content(tmp_path: Path) -> None:
    path = _solid_jpeg(tmp_path / "large.jpg", (2400, 1800), (30, 160, 90))

    decoded = decode_image(path, PREPROCESSING)

    assert decoded.shape == (3, 32, 32)
    assert np.allclose(decoded.float().mean(dim=(1, 2)).numpy(), (30, 160, 90), atol=4)


def test_decode_random_crop_follows_torch_seed(tmp_path: Path) -> None:
    path = tmp_path / "noise.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (60, 200, 3), dtype=np.uint8)).save(path)

    torch.manual_seed(0)
    first = decode_image(path, PREPROCESSING, random_crop=True)
    torch.manual_seed(0)
    again = decode_image(path, PREPROCESSING, random_crop=True)
    crops = {decode_image(path, PREPROCESSING, random_crop=True).numpy().tobytes() for _ in range(5)}

    assert torch.equal(first, again)
    assert len(crops) > 1


def test_file_sha256_matches_hashlib(image_paths: list[Path]) -> None:
    assert file_sha256(image_paths[0]) == hashlib.sha256(image_paths[0].read_bytes()).hexdigest()


def test_second_extraction_is_served_from_the_cache(backbone: Any, image_paths: list[Path], tmp_path: Path) -> None:
    cache_dir = tmp_path / "cache"

    first = extract_features(backbone=backbone, image_paths=image_paths, cache_dir=cache_dir, batch_size=4)
    second = extract_features(backbone=backbone, image_paths=image_paths, cache_dir=cache_dir, batch_size=4)

    assert (first.extracted, first.cache_hits) == (10, 0)
    assert (second.extracted, second.cache_hits) == (0, 10)
    assert np.array_equal(first.features, second.features)
    assert first.features.shape == (10, backbone.feature_size) and first.features.dtype == np.float32
    assert not list(cache_dir.rglob("*.tmp"))  # writes are renamed into place


def test_extracted_features_match_the_backbone_run_directly(backbone: Any, image_paths: list[Path]) -> None:
    result = extract_features(backbone=backbone, image_paths=image_paths[:3], cache_dir=None)
    preprocessing = backbone.input_spec.preprocessing
    images = torch.stack([decode_image(path, preprocessing) for path in image_paths[:3]]).float() / 255
    mean = torch.tensor(preprocessing.mean).view(1, 3, 1, 1)
    std = torch.tensor(preprocessing.std).view(1, 3, 1, 1)

    with torch.inference_mode():
        expected = backbone.features((images - mean) / std).numpy()

    assert np.allclose(result.features, expected, atol=1e-4, rtol=1e-4)
    assert result.extracted == 3


def test_worker_processes_and_this_process_compute_the_same_features(backbone: Any, image_paths: list[Path]) -> None:
    here = extract_features(
        backbone=backbone, image_paths=image_paths, cache_dir=None, include_flipped=True, num_workers=0
    )
    in_workers = extract_features(
        backbone=backbone, image_paths=image_paths, cache_dir=None, include_flipped=True, num_workers=2
    )

    assert np.allclose(here.features, in_workers.features, atol=1e-5)
    assert here.flipped_features is not None and in_workers.flipped_features is not None
    assert np.allclose(here.flipped_features, in_workers.flipped_features, atol=1e-5)


def test_bfloat16_features_are_close_to_float32_and_cached_apart(
    backbone: Any, image_paths: list[Path], tmp_path: Path
) -> None:
    cache_dir = tmp_path / "cache"
    exact = extract_features(backbone=backbone, image_paths=image_paths, cache_dir=cache_dir)
    for num_workers in (0, 2):  # in this process and in worker processes alike
        reduced = extract_features(
            backbone=backbone, image_paths=image_paths, cache_dir=None, precision="bfloat16", num_workers=num_workers
        )
        similarity = torch.nn.functional.cosine_similarity(
            torch.from_numpy(exact.features), torch.from_numpy(reduced.features)
        )
        assert float(similarity.min()) > 0.98
        assert not np.array_equal(exact.features, reduced.features)  # really computed in bfloat16
    cached = extract_features(backbone=backbone, image_paths=image_paths, cache_dir=cache_dir, precision="bfloat16")
    assert (cached.extracted, cached.cache_hits) == (10, 0)  # float32 features are not served for bfloat16
    again = extract_features(backbone=backbone, image_paths=image_paths, cache_dir=cache_dir, precision="bfloat16")
    assert (again.extracted, again.cache_hits) == (0, 10)
    with pytest.raises(ValueError, match="precision must be one of float32, bfloat16"):
        extract_features(backbone=backbone, image_paths=image_paths, cache_dir=None, precision="float16")


def test_only_new_images_are_extracted(backbone: Any, image_paths: list[Path], tmp_path: Path) -> None:
    cache_dir = tmp_path / "cache"
    extract_features(backbone=backbone, image_paths=image_paths[:6], cache_dir=cache_dir)

    result = extract_features(backbone=backbone, image_paths=image_paths, cache_dir=cache_dir)

    assert (result.extracted, result.cache_hits) == (4, 6)


def test_flipped_views_are_cached_alongside(backbone: Any, image_paths: list[Path], tmp_path: Path) -> None:
    cache_dir = tmp_path / "cache"
    plain = extract_features(backbone=backbone, image_paths=image_paths, cache_dir=cache_dir)

    with_flips = extract_features(backbone=backbone, image_paths=image_paths, cache_dir=cache_dir, include_flipped=True)
    again = extract_features(backbone=backbone, image_paths=image_paths, cache_dir=cache_dir, include_flipped=True)

    assert plain.flipped_features is None
    assert with_flips.extracted == 10 and again.extracted == 0
    assert with_flips.flipped_features is not None and again.flipped_features is not None
    assert np.allclose(with_flips.features, plain.features, atol=1e-5)
    assert np.array_equal(with_flips.flipped_features, again.flipped_features)
    assert not np.allclose(with_flips.flipped_features, with_flips.features)


def test_changed_weights_do_not_reuse_cached_features(backbone: Any, image_paths: list[Path], tmp_path: Path) -> None:
    cache_dir = tmp_path / "cache"
    extract_features(backbone=backbone, image_paths=image_paths, cache_dir=cache_dir)
    state = {key: value.clone() for key, value in backbone.features.state_dict().items()}
    state["blocks.0.0.weight"] += 0.1
    changed = with_weights(backbone, state)

    result = extract_features(backbone=changed, image_paths=image_paths, cache_dir=cache_dir)

    assert changed.weights_sha256 == state_dict_sha256(state) != backbone.weights_sha256
    assert result.extracted == 10


def test_damaged_cache_file_is_extracted_again(backbone: Any, image_paths: list[Path], tmp_path: Path) -> None:
    cache_dir = tmp_path / "cache"
    first = extract_features(backbone=backbone, image_paths=image_paths, cache_dir=cache_dir)
    damaged = next(cache_dir.rglob(f"{file_sha256(image_paths[0])}.npy"))
    damaged.write_bytes(b"not an array")

    result = extract_features(backbone=backbone, image_paths=image_paths, cache_dir=cache_dir)

    assert (result.extracted, result.cache_hits) == (1, 9)
    # Bit-identical on the CPU; on a GPU a batch of one may pick other convolution kernels.
    assert np.allclose(result.features, first.features, rtol=1e-3, atol=1e-5)


def test_extraction_reports_progress_and_stops_between_batches(
    backbone: Any, image_paths: list[Path], tmp_path: Path
) -> None:
    reported: list[float] = []

    with pytest.raises(TrainingCancelled):
        extract_features(
            backbone=backbone,
            image_paths=image_paths,
            cache_dir=tmp_path / "cache",
            batch_size=2,
            progress=lambda fraction, _message: reported.append(fraction),
            should_stop=lambda: len(reported) >= 2,
        )

    assert reported == pytest.approx([0.2, 0.4])
    assert len(list((tmp_path / "cache").rglob("*.npy"))) == 4  # finished batches stay cached


def test_caller_supplied_hashes_must_match_the_paths(backbone: Any, image_paths: list[Path]) -> None:
    with pytest.raises(ValueError):
        extract_features(backbone=backbone, image_paths=image_paths, cache_dir=None, image_sha256s=["a"])
