import io
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from app.ml.backbones import ImageClassifier, load_backbone, model_from_checkpoint, state_dict_sha256
from app.ml.features import decode_image, extract_features
from app.ml.metrics import subset_metrics
from app.ml.modes import propose_mode
from app.ml.training import (
    EpochRecord,
    TrainingCancelled,
    TrainingConfig,
    TrainingMode,
    TrainingState,
    default_config,
    export_model,
    predict_from_features,
    predict_images,
    train_linear_head,
    train_on_images,
)

CLASSES = ("horizontal", "vertical", "disc")


def _draw(rng: np.random.Generator, label: str) -> Image.Image:
    background = tuple(int(value) for value in rng.integers(0, 256, 3))
    colour = tuple(int(value) for value in rng.integers(0, 256, 3))
    picture = Image.new("RGB", (160, 120), background)
    draw = ImageDraw.Draw(picture)
    step = int(rng.integers(10, 20))
    if label == "horizontal":
        for y in range(0, 120, step):
            draw.rectangle((0, y, 160, y + step // 2), fill=colour)
    elif label == "vertical":
        for x in range(0, 160, step):
            draw.rectangle((x, 0, x + step // 2, 120), fill=colour)
    else:
        radius = int(rng.integers(25, 45))
        draw.ellipse((80 - radius, 60 - radius, 80 + radius, 60 + radius), fill=colour)
    return picture


@pytest.fixture(scope="module")
def image_set(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[list[Path], np.ndarray]]:
    """Three learnable classes of generated JPEGs: 8 train and 5 dev images per class."""
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(42)
    subsets: dict[str, tuple[list[Path], np.ndarray]] = {}
    for subset, per_class in (("train", 8), ("dev", 5)):
        paths, labels = [], []
        for class_index, label in enumerate(CLASSES):
            for number in range(per_class):
                path = root / f"{subset}-{label}-{number}.jpg"
                _draw(rng, label).save(path, quality=90)
                paths.append(path)
                labels.append(class_index)
        subsets[subset] = (paths, np.array(labels))
    return subsets


@pytest.fixture(scope="module")
def lite_backbone() -> Any:
    return load_backbone("efficientnet_lite0")


@pytest.fixture(scope="module")
def lite_features(
    lite_backbone: Any, image_set: dict[str, tuple[list[Path], np.ndarray]], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Any]:
    cache_dir = tmp_path_factory.mktemp("cache")
    results = {
        subset: extract_features(backbone=lite_backbone, image_paths=paths, cache_dir=cache_dir)
        for subset, (paths, _labels) in image_set.items()
    }
    return {"cache_dir": cache_dir, "results": results}


def _blobs(seed: int, per_class: int = 40, noise: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Three Gaussian clusters in 16 dimensions."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 3, (3, 16))
    labels = np.repeat(np.arange(3), per_class)
    return (centres[labels] + rng.normal(0, noise, (len(labels), 16))).astype(np.float32), labels


@pytest.fixture(scope="module")
def blobs() -> dict[str, Any]:
    train_x, train_y = _blobs(0)
    rng = np.random.default_rng(1)
    dev_x = train_x + rng.normal(0, 1.0, train_x.shape).astype(np.float32)
    return {
        "train_features": train_x,
        "train_labels": train_y,
        "dev_features": dev_x,
        "dev_labels": train_y,
        "num_classes": 3,
    }


CONFIG = TrainingConfig(mode=TrainingMode.LINEAR, epochs=6, learning_rate=0.05, batch_size=16, patience=10, seed=7)


def test_small_train_sets_get_linear_mode_with_an_explanation() -> None:
    proposal = propose_mode(train_size=240)

    assert proposal.mode is TrainingMode.LINEAR
    assert "240" in proposal.explanation and "last layer" in proposal.explanation
    assert proposal.explanation.count(".") == 1 and proposal.explanation.endswith(".")


def test_larger_train_sets_get_finetune_then_full_and_scratch_models_full() -> None:
    assert propose_mode(train_size=5_000).mode is TrainingMode.FINETUNE
    assert propose_mode(train_size=100_000).mode is TrainingMode.FULL
    assert propose_mode(train_size=50, pretrained=False).mode is TrainingMode.FULL


def test_default_configs_train_pretrained_layers_gently() -> None:
    linear, finetune = default_config(TrainingMode.LINEAR), default_config(TrainingMode.FINETUNE)

    assert finetune.learning_rate < linear.learning_rate
    with pytest.raises(ValueError):
        TrainingConfig(epochs=0)


def test_linear_run_on_generated_images_beats_chance_by_far(
    image_set: dict[str, tuple[list[Path], np.ndarray]], lite_features: dict[str, Any]
) -> None:
    results = lite_features["results"]
    config = TrainingConfig(mode=TrainingMode.LINEAR, epochs=40, learning_rate=3e-3, batch_size=8, seed=0)
    history: list[EpochRecord] = []

    trained = train_linear_head(
        train_features=results["train"].features,
        train_labels=image_set["train"][1],
        dev_features=results["dev"].features,
        dev_labels=image_set["dev"][1],
        num_classes=len(CLASSES),
        config=config,
        on_epoch=history.append,
    )
    dev_probabilities = predict_from_features(head_state=trained.head_state, features=results["dev"].features)

    dev_accuracy = subset_metrics(dev_probabilities, image_set["dev"][1]).accuracy
    assert dev_accuracy >= 0.8  # chance is 1/3
    assert [record.epoch for record in history] == list(range(1, len(history) + 1))
    assert history[trained.best_epoch - 1].dev_loss == min(record.dev_loss for record in history)
    assert dev_probabilities.shape == (15, 3)
    assert np.allclose(dev_probabilities.sum(axis=1), 1.0, atol=1e-5)


def test_second_run_extracts_nothing(
    lite_backbone: Any, image_set: dict[str, tuple[list[Path], np.ndarray]], lite_features: dict[str, Any]
) -> None:
    paths, _labels = image_set["train"]

    again = extract_features(backbone=lite_backbone, image_paths=paths, cache_dir=lite_features["cache_dir"])

    assert again.extracted == 0 and again.cache_hits == len(paths)
    assert np.array_equal(again.features, lite_features["results"]["train"].features)


def test_same_seed_same_run_other_seed_other_run(blobs: dict[str, Any]) -> None:
    first = train_linear_head(**blobs, config=CONFIG)
    again = train_linear_head(**blobs, config=CONFIG)
    other = train_linear_head(**blobs, config=replace(CONFIG, seed=8))

    assert first.history == again.history
    assert state_dict_sha256(first.head_state) == state_dict_sha256(again.head_state)
    assert state_dict_sha256(first.head_state) != state_dict_sha256(other.head_state)


def test_flipped_views_are_used_as_augmentation(blobs: dict[str, Any]) -> None:
    shifted = blobs["train_features"] + 5.0

    plain = train_linear_head(**blobs, config=CONFIG)
    augmented = train_linear_head(**blobs, config=CONFIG, train_flipped_features=shifted)

    assert plain.history[0].train_loss != augmented.history[0].train_loss


def test_cancellation_mid_epoch_raises_and_streams_only_finished_epochs(blobs: dict[str, Any]) -> None:
    progress: list[float] = []
    finished: list[EpochRecord] = []
    batches_per_epoch = 120 // CONFIG.batch_size + 1

    with pytest.raises(TrainingCancelled):
        train_linear_head(
            **blobs,
            config=CONFIG,
            progress=lambda fraction, _message: progress.append(fraction),
            should_stop=lambda: len(progress) >= batches_per_epoch + 3,  # inside the second epoch
            on_epoch=finished.append,
        )

    assert [record.epoch for record in finished] == [1]
    assert 1 / CONFIG.epochs < progress[-1] < 2 / CONFIG.epochs


def _through_disk(state: TrainingState) -> TrainingState:
    buffer = io.BytesIO()
    torch.save(state.to_dict(), buffer)
    buffer.seek(0)
    return TrainingState.from_dict(torch.load(buffer, weights_only=True))


def test_resume_after_a_crash_ends_exactly_like_an_unbroken_run(blobs: dict[str, Any]) -> None:
    unbroken = train_linear_head(**blobs, config=CONFIG)
    saved: list[TrainingState] = []
    progress: list[float] = []

    with pytest.raises(TrainingCancelled):  # the "crash" happens during epoch 4
        train_linear_head(
            **blobs,
            config=CONFIG,
            on_epoch_end=lambda state: saved.append(_through_disk(state)),
            progress=lambda fraction, _message: progress.append(fraction),
            should_stop=lambda: len(saved) == 3 and len(progress) > 3 * 8 + 2,
        )
    resumed = train_linear_head(**blobs, config=CONFIG, resume=saved[-1])

    assert saved[-1].epochs_completed == 3
    assert resumed.history == unbroken.history
    assert state_dict_sha256(resumed.head_state) == state_dict_sha256(unbroken.head_state)


def test_early_stopping_keeps_the_best_dev_loss_epoch(blobs: dict[str, Any]) -> None:
    rng = np.random.default_rng(3)
    noisy = dict(blobs, dev_labels=rng.integers(0, 3, len(blobs["dev_labels"])))  # dev labels carry no signal
    config = replace(CONFIG, epochs=40, learning_rate=0.1, patience=3)
    states: list[TrainingState] = []

    result = train_linear_head(**noisy, config=config, on_epoch_end=states.append)

    assert result.stopped_early
    assert len(result.history) == result.best_epoch + config.patience
    best_state = states[result.best_epoch - 1].model_state
    assert state_dict_sha256(result.head_state) == state_dict_sha256(best_state)
    assert result.backbone_state is None


def test_training_rejects_labels_outside_the_classes(blobs: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="class indices"):
        train_linear_head(**dict(blobs, num_classes=2), config=CONFIG)


@pytest.fixture(scope="module")
def small_cnn() -> Any:
    return load_backbone("simple_cnn", seed=0)


def _parameters_changed(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor], prefix: str) -> bool:
    keys = [key for key in before if key.startswith(prefix)]
    assert keys
    return any(not torch.equal(before[key], after[key]) for key in keys)


def test_finetune_trains_only_the_last_stages_and_the_head(
    small_cnn: Any, image_set: dict[str, tuple[list[Path], np.ndarray]]
) -> None:
    before = {key: value.clone() for key, value in small_cnn.features.state_dict().items()}
    config = TrainingConfig(
        mode=TrainingMode.FINETUNE, epochs=1, learning_rate=1e-2, batch_size=8, finetune_blocks=1, seed=0
    )
    (train_paths, train_labels), (dev_paths, dev_labels) = image_set["train"], image_set["dev"]

    result = train_on_images(
        backbone=small_cnn,
        train_paths=train_paths,
        train_labels=train_labels,
        dev_paths=dev_paths,
        dev_labels=dev_labels,
        num_classes=3,
        config=config,
        num_workers=0,
    )

    assert result.backbone_state is not None
    assert not _parameters_changed(before, result.backbone_state, "blocks.0.")
    assert not _parameters_changed(before, result.backbone_state, "blocks.2.")  # frozen batch-norm stats too
    assert _parameters_changed(before, result.backbone_state, "blocks.3.")
    assert state_dict_sha256(small_cnn.features.state_dict()) == state_dict_sha256(before)  # input untouched
    assert len(result.history) == 1


def test_full_mode_trains_every_stage(small_cnn: Any, image_set: dict[str, tuple[list[Path], np.ndarray]]) -> None:
    before = small_cnn.features.state_dict()
    config = TrainingConfig(mode=TrainingMode.FULL, epochs=1, learning_rate=1e-2, batch_size=8, seed=0)
    (train_paths, train_labels), (dev_paths, dev_labels) = image_set["train"], image_set["dev"]

    result = train_on_images(
        backbone=small_cnn,
        train_paths=train_paths,
        train_labels=train_labels,
        dev_paths=dev_paths,
        dev_labels=dev_labels,
        num_classes=3,
        config=config,
        num_workers=0,
    )

    assert result.backbone_state is not None
    assert _parameters_changed(before, result.backbone_state, "blocks.0.")
    assert _parameters_changed(before, result.backbone_state, "blocks.3.")
    probabilities = predict_images(
        backbone=small_cnn, head_state=result.head_state, image_paths=dev_paths, result=result
    )
    assert probabilities.shape == (len(dev_paths), 3)


def test_linear_mode_is_not_run_on_images(small_cnn: Any, image_set: dict[str, tuple[list[Path], np.ndarray]]) -> None:
    paths, labels = image_set["dev"]

    with pytest.raises(ValueError, match="cached features"):
        train_on_images(
            backbone=small_cnn,
            train_paths=paths,
            train_labels=labels,
            dev_paths=paths,
            dev_labels=labels,
            num_classes=3,
            config=TrainingConfig(mode=TrainingMode.LINEAR),
        )


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")
def test_export_writes_a_reloadable_checkpoint_labels_and_matching_torchscript(
    lite_backbone: Any, image_set: dict[str, tuple[list[Path], np.ndarray]], tmp_path: Path
) -> None:
    torch.manual_seed(0)
    head = torch.nn.Linear(lite_backbone.feature_size, 3)
    dev_paths = image_set["dev"][0][:2]

    exported = export_model(
        backbone=lite_backbone, head_state=head.state_dict(), label_names=list(CLASSES), directory=tmp_path / "out"
    )

    assert json.loads(exported.labels_path.read_text()) == {"0": "horizontal", "1": "vertical", "2": "disc"}
    images = torch.stack([decode_image(path, lite_backbone.input_spec.preprocessing) for path in dev_paths]) / 255
    scripted = torch.jit.load(str(exported.torchscript_path))
    with torch.inference_mode():
        eager = ImageClassifier(lite_backbone, head).eval()(images)
        assert torch.allclose(scripted(images), eager, atol=1e-4)
    restored = model_from_checkpoint(exported.checkpoint_path)
    assert restored.label_names == CLASSES and not restored.head_replaced
    assert torch.equal(restored.head.weight, head.weight)
    features = extract_features(backbone=lite_backbone, image_paths=dev_paths, cache_dir=None).features
    probabilities = predict_from_features(head_state=head.state_dict(), features=features)
    # Extraction runs on the GPU when there is one (TF32 convolutions), the eager reference on the CPU.
    assert np.allclose(probabilities, eager.softmax(dim=1).numpy(), atol=1e-3 if torch.cuda.is_available() else 1e-4)
