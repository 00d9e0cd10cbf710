"""Artefacts by key on the local backend: the files stay where they always were, under the data dir."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.core.artefacts import LocalArtefacts, check_key
from app.core.settings import Settings
from app.storage.backends import blob_store


def test_keys_name_files_in_their_areas_only() -> None:
    assert check_key("runs/3/model.onnx") == "runs/3/model.onnx"
    for bad in ("runs", "secret_key", "errorbook.db/x", "runs/../secret_key", "/etc/passwd", "runs//x", "runs/.x"):
        with pytest.raises(ValueError, match="not an artefact key"):
            check_key(bad)


def test_the_local_backend_keeps_todays_paths(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    artefacts = blob_store(settings).artefacts
    scratch = tmp_path / "jobs" / "9" / "export"
    scratch.mkdir(parents=True)
    (scratch / "model.pt").write_bytes(b"weights")
    artefacts.put_file("runs/4/model.pt", scratch / "model.pt")
    assert (settings.resolved_data_dir / "runs" / "4" / "model.pt").read_bytes() == b"weights"
    assert not (scratch / "model.pt").exists()  # moved, not copied
    assert artefacts.local_path("runs/4/model.pt") == settings.resolved_data_dir / "runs" / "4" / "model.pt"
    # An embedding set is worked on in place: its folder is the data dir's embeddings/dataset-<id>/<backbone>.
    folder = artefacts.mirror("embeddings/dataset-1/b", tmp_path / "elsewhere")
    assert folder == settings.embeddings_dir / "dataset-1" / "b"
    assert [item.key for item in artefacts.iter("")] == ["runs/4/model.pt"]


def test_a_missing_artefact_reads_as_missing(tmp_path: Path) -> None:
    artefacts = LocalArtefacts(tmp_path)
    assert not artefacts.exists("runs/1/model.pt")
    with pytest.raises(FileNotFoundError):
        artefacts.local_path("runs/1/model.pt")
    with pytest.raises(FileNotFoundError):
        artefacts.get_bytes("runs/1/model.pt")
