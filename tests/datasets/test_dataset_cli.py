"""`errorbook import` and `errorbook demo` as a user runs them: real processes on a database of their own."""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.ml.demo import DEMO_CLASSES
from app.models import Dataset, Image, Label
from tests.datasets.conftest import noisy_jpeg, zip_of

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]


def errorbook(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "app.cli", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )


@pytest.fixture
def cli_env(fresh_database, tmp_path: Path) -> dict[str, str]:  # type: ignore[no-untyped-def]
    env = {key: value for key, value in os.environ.items() if not key.startswith("ERRORBOOK_")}
    env.update(
        ERRORBOOK_DATABASE_URL=fresh_database.url,
        ERRORBOOK_DATA_DIR=str(tmp_path / "data"),
        ERRORBOOK_STATE_DIR=str(tmp_path / "state"),
    )
    return env


def _labelled(engine, dataset_name: str) -> dict[str, tuple[str, str]]:  # type: ignore[no-untyped-def]
    with Session(engine) as session:
        rows = session.execute(
            select(Image.filename, Label.name, Image.source)
            .join(Label, Label.id == Image.label_id)
            .join(Dataset, Dataset.id == Image.dataset_id)
            .where(Dataset.name == dataset_name)
        ).all()
    return {filename: (label, source) for filename, label, source in rows}


def test_import_reads_a_folder_with_a_labels_csv_and_then_a_zip(cli_env, fresh_database, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    folder = tmp_path / "shots"
    for index in range(6):
        (folder / "inbox").mkdir(parents=True, exist_ok=True)
        (folder / "inbox" / f"{index}.jpg").write_bytes(noisy_jpeg(index))
    (folder / "inbox" / "broken.jpg").write_bytes(b"\xff\xd8\xff not really")
    labels = tmp_path / "labels.csv"
    labels.write_text(
        "filename,label\n" + "".join(f"{i}.jpg,{'cat' if i < 3 else 'dog'}\n" for i in range(6)) + "ghost.jpg,cat\n"
    )

    result = errorbook(
        cli_env, "import", str(folder), "--dataset", "Shots", "--source", "phone", "--labels-csv", str(labels)
    )
    assert result.returncode == 0, result.stderr
    assert "created dataset 'Shots'" in result.stdout
    assert "7 files: 6 added, 0 duplicates, 0 conflicts, 1 rejected" in result.stdout
    # Every reason that applies, the content first (issue 15 item 6).
    expected = "rejected: inbox/broken.jpg: truncated or corrupt JPEG data; no label: the labels CSV has no usable row"
    assert expected in result.stdout
    assert "labels CSV row 8: ghost.jpg is not in the upload" in result.stdout
    found = _labelled(fresh_database.engine, "Shots")
    assert found == {f"inbox/{i}.jpg": ("cat" if i < 3 else "dog", "phone") for i in range(6)}

    archive = tmp_path / "more.zip"
    archive.write_bytes(zip_of([("train/bird/a.jpg", noisy_jpeg(50)), ("test/bird/b.jpg", noisy_jpeg(0))]))
    again = errorbook(cli_env, "import", str(archive), "--dataset", "Shots")
    assert again.returncode == 0, again.stderr
    assert "adding to dataset 'Shots'" in again.stdout
    assert "2 files: 1 added, 0 duplicates, 1 conflicts, 0 rejected" in again.stdout
    assert _labelled(fresh_database.engine, "Shots")["more.zip/train/bird/a.jpg"] == ("bird", "default")

    missing = errorbook(cli_env, "import", str(tmp_path / "nowhere"), "--dataset", "Shots")
    assert missing.returncode != 0 and "does not exist" in missing.stderr


def test_demo_creates_a_ready_dataset_with_a_target_source_and_known_flips(cli_env, fresh_database) -> None:  # type: ignore[no-untyped-def]
    result = errorbook(cli_env, "demo", "--images", "60", "--name", "Shapes")
    assert result.returncode == 0, result.stderr
    assert "demo dataset 'Shapes' is ready" in result.stdout
    with Session(fresh_database.engine) as session:
        dataset = session.scalar(select(Dataset).where(Dataset.name == "Shapes"))
        assert dataset is not None
        assert dataset.target_source == "phone"
        assert "3 labels (5%) are flipped" in dataset.description
    found = _labelled(fresh_database.engine, "Shapes")
    assert len(found) == 60
    assert Counter(source for _, source in found.values()) == {"phone": 40, "render": 20}
    assert {label for label, _ in found.values()} == set(DEMO_CLASSES)
    assert all(name.startswith("demo.zip/") for name in found)
    taken = errorbook(cli_env, "demo", "--images", "40", "--name", "Shapes")
    assert taken.returncode != 0 and "already exists" in taken.stderr


def test_import_unlabeled_stores_the_pool(cli_env, fresh_database, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    folder = tmp_path / "unsorted"
    folder.mkdir()
    for index in range(3):
        (folder / f"{index}.jpg").write_bytes(noisy_jpeg(100 + index))
    refused = errorbook(cli_env, "import", str(folder), "--dataset", "pool", "--unlabeled", "--label", "cat")
    assert refused.returncode != 0 and "an unlabeled upload takes no label" in refused.stdout + refused.stderr
    done = errorbook(cli_env, "import", str(folder), "--dataset", "pool", "--unlabeled")
    assert done.returncode == 0, done.stdout + done.stderr
    with Session(fresh_database.engine) as session:
        rows = session.execute(select(Image.label_id, Image.from_pool).join(Dataset).where(Dataset.name == "pool"))
        assert sorted(rows) == [(None, True)] * 3
