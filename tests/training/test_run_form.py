"""The training form: issue 15 items 10 (backbones available offline), 18 (names the dataset; human-level
error as a percent)."""

from __future__ import annotations

import re

from app.ml.backbone_choices import torchvision_weights_path
from tests.factories import RunFixture, make_run


def _ready_split(db, **options) -> RunFixture:  # type: ignore[no-untyped-def]
    fixture = make_run(db, sizes={"train": 4, "dev": 4}, **options)
    fixture.split.counts = {"train": {"total": 4}, "dev": {"total": 4}}
    db.commit()
    return fixture


def _options(page: str) -> dict[str, str]:
    select = re.search(r'<select name="backbone"[^>]*>(.*?)</select>', page, re.S)
    assert select, page
    return {m.group(1): m.group(0) for m in re.finditer(r'<option value="([^"]+)"[^>]*>', select.group(1))}


def test_backbones_without_weights_on_this_machine_are_disabled_with_how_to_add_them(
    db, as_reviewer, tmp_path, monkeypatch
) -> None:
    fixture = _ready_split(db)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    page = as_reviewer.get(f"/runs/new?split_id={fixture.split.id}").text
    options = _options(page)
    assert "disabled" not in options["efficientnet_lite0"] and "disabled" not in options["simple_cnn"]
    assert "disabled" in options["torchvision:resnet18"]
    place = torchvision_weights_path("resnet18", {"TORCH_HOME": str(tmp_path / "torch-home")})
    assert str(place) in page and "resnet18-f37072fd.pth" in page  # where to put which file

    place.parent.mkdir(parents=True)
    place.write_bytes(b"weights")
    options = _options(as_reviewer.get(f"/runs/new?split_id={fixture.split.id}").text)
    assert "disabled" not in options["torchvision:resnet18"]
    assert "disabled" in options["torchvision:resnet50"]


def test_the_form_names_the_dataset_and_takes_human_level_error_as_a_percent(db, as_reviewer, as_viewer) -> None:
    fixture = _ready_split(db, name="Kitchen photos")
    page = as_reviewer.get(f"/runs/new?split_id={fixture.split.id}").text
    assert "Kitchen photos" in page
    assert re.search(r'name="human_error_percent"[^>]*max="100"', page)
    form = {"dataset_id": fixture.dataset.id, "split_id": fixture.split.id, "human_error_percent": "2.5"}
    created = as_reviewer.post("/runs", data=form)
    assert created.status_code == 303
    run_page = as_viewer.get(created.headers["location"]).text
    assert "human-level error 2.5%" in run_page
