"""The web process works out torch's hub cache and torchvision's weight file names without importing torch;
these must be what torch itself uses."""

from __future__ import annotations

from pathlib import Path

import torch
from torchvision.models import get_model_weights

from app.ml.backbone_choices import TORCHVISION_WEIGHT_URLS, backbone_choices, torch_hub_dir
from app.ml.backbones import TORCHVISION_ARCHITECTURES, torchvision_weights_file


def test_weight_urls_and_hub_dir_are_torchs_own(tmp_path: Path, monkeypatch) -> None:
    assert set(TORCHVISION_WEIGHT_URLS) == set(TORCHVISION_ARCHITECTURES)
    for architecture, url in TORCHVISION_WEIGHT_URLS.items():
        assert get_model_weights(architecture).DEFAULT.url == url
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "th"))
    assert torch_hub_dir({"TORCH_HOME": str(tmp_path / "th")}) == Path(torch.hub.get_dir())
    monkeypatch.delenv("TORCH_HOME")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert torch_hub_dir({"XDG_CACHE_HOME": str(tmp_path / "xdg")}) == Path(torch.hub.get_dir())


def test_a_torchvision_backbone_is_available_once_its_file_is_where_the_loader_looks(tmp_path: Path) -> None:
    environ = {"TORCH_HOME": str(tmp_path)}
    assert not {c.name: c for c in backbone_choices(environ)}["torchvision:resnet18"].available
    path = torchvision_weights_file("resnet18", tmp_path)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"x")
    assert {c.name: c for c in backbone_choices(environ)}["torchvision:resnet18"].available
