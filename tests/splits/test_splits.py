from __future__ import annotations

import csv
import io
import time
import zipfile

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from app.auth import service as auth
from app.core.settings import Settings
from app.core.storage import LocalBlobStore
from app.models import Dataset, Image, Label, Split, SplitAssignment
from app.web.app import create_app
from tests.jobs.inline import drain_jobs


def add_images(
    session: Session,
    dataset: Dataset,
    *,
    count: int,
    sources: tuple[str, ...] = ("default",),
    labels: tuple[str, ...] = ("cat", "dog"),
    start: int = 0,
    phash=None,  # type: ignore[no-untyped-def]
    blobs: LocalBlobStore | None = None,
) -> list[Image]:
    label_rows = {}
    for name in labels:
        row = session.scalar(select(Label).where(Label.dataset_id == dataset.id, Label.name == name))
        if row is None:
            row = Label(dataset_id=dataset.id, name=name)
            session.add(row)
            session.flush()
        label_rows[name] = row
    images = []
    for i in range(start, start + count):
        content = f"image-{dataset.id}-{i}".encode()
        sha = blobs.put_bytes(content) if blobs else f"{dataset.id:08d}{i:056d}"
        image = Image(
            dataset_id=dataset.id,
            sha256=sha,
            filename=f"img_{i}.jpg",
            source=sources[i % len(sources)],
            label_id=label_rows[labels[i % len(labels)]].id,
            phash=phash(i) if phash else None,
        )
        images.append(image)
    session.add_all(images)
    session.flush()
    return images


@pytest.fixture
def client_and_engine(fresh_database, tmp_path):  # type: ignore[no-untyped-def]
    settings = Settings(data_dir=tmp_path / "data", database_url=fresh_database.url)
    app = create_app(settings)
    with Session(fresh_database.engine) as session:
        user = auth.create_user(session, name="rev", role="reviewer")
        _, token = auth.create_token(session, user=user, name="t")
        session.commit()
    with TestClient(app, headers={"authorization": f"Bearer {token}"}) as client:
        yield client, fresh_database.engine, app


def _dataset(engine, name: str = "d", **kwargs) -> int:  # type: ignore[no-untyped-def]
    with Session(engine) as session:
        dataset = Dataset(name=name)
        session.add(dataset)
        session.flush()
        add_images(session, dataset, **kwargs)
        session.commit()
        return dataset.id


def _assignment(engine, split_id: int) -> dict[int, str]:  # type: ignore[no-untyped-def]
    with Session(engine) as session:
        rows = session.execute(
            select(SplitAssignment.image_id, SplitAssignment.subset).where(SplitAssignment.split_id == split_id)
        ).all()
    return dict(rows)  # type: ignore[arg-type]


def test_small_single_source_dataset_splits_60_20_20_through_the_job(client_and_engine) -> None:
    client, engine, _app = client_and_engine
    dataset_id = _dataset(engine, count=1000)
    preview = client.post(f"/api/datasets/{dataset_id}/splits", json={"seed": 1, "dry_run": True})
    assert preview.status_code == 200
    assert {k: v["total"] for k, v in preview.json()["counts"].items() if v["total"]} == {
        "train": 600,
        "dev": 200,
        "test": 200,
    }
    created = client.post(f"/api/datasets/{dataset_id}/splits", json={"seed": 1})
    assert created.status_code == 202
    split_id = created.json()["split_id"]
    assert client.get(f"/api/splits/{split_id}").json()["status"] == "queued"
    (job,) = drain_jobs(engine)
    assert job.status == "succeeded", job.error
    body = client.get(f"/api/splits/{split_id}").json()
    assert body["status"] == "ready"
    assert body["counts"]["dev"]["total"] == 200 and body["counts"]["test"]["total"] == 200
    assert set(body) >= {"id", "dataset_id", "status", "params", "counts", "groups", "warnings"}
    assignment = _assignment(engine, split_id)
    assert len(assignment) == 1000
    manifest = list(csv.reader(io.StringIO(client.get(f"/api/splits/{split_id}/manifest.csv").text)))
    assert manifest[0] == ["filename", "label", "source", "subset", "sha256"]
    assert len(manifest) == 1001
    assert {row[3] for row in manifest[1:]} == {"train", "dev", "test"}


def test_same_seed_gives_the_same_split(client_and_engine) -> None:
    client, engine, _app = client_and_engine
    dataset_id = _dataset(engine, count=300)
    first = client.post(f"/api/datasets/{dataset_id}/splits", json={"seed": 7}).json()["split_id"]
    second = client.post(f"/api/datasets/{dataset_id}/splits", json={"seed": 7}).json()["split_id"]
    third = client.post(f"/api/datasets/{dataset_id}/splits", json={"seed": 8}).json()["split_id"]
    drain_jobs(engine)
    assert _assignment(engine, first) == _assignment(engine, second)
    assert _assignment(engine, first) != _assignment(engine, third)


def test_with_a_target_source_dev_and_test_hold_target_images_only(client_and_engine) -> None:
    client, engine, _app = client_and_engine
    dataset_id = _dataset(engine, count=900, sources=("web", "web", "phone"))
    split_id = client.post(f"/api/datasets/{dataset_id}/splits", json={"seed": 0, "target_source": "phone"}).json()[
        "split_id"
    ]
    drain_jobs(engine)
    body = client.get(f"/api/splits/{split_id}").json()
    for subset in ("dev", "test"):
        by_source = body["counts"][subset]["by_source"]
        assert {source for source, n in by_source.items() if n} == {"phone"}
    assert body["counts"]["dev"]["total"] == 30 and body["counts"]["test"]["total"] == 30  # 300 phone: 80/10/10
    assert client.get(f"/api/datasets/{dataset_id}/splits").json()[0]["params"]["target_source"] == "phone"


def test_extend_places_only_new_images_and_never_moves_dev_or_test(client_and_engine) -> None:
    client, engine, _app = client_and_engine
    dataset_id = _dataset(engine, count=500)
    first = client.post(f"/api/datasets/{dataset_id}/splits", json={"seed": 3}).json()["split_id"]
    drain_jobs(engine)
    with Session(engine) as session:
        dataset = session.get(Dataset, dataset_id)
        assert dataset is not None
        new_images = add_images(session, dataset, count=100, start=500)
        new_ids = {i.id for i in new_images}
        session.commit()
    extended = client.post(f"/api/splits/{first}/extend")
    assert extended.status_code == 202
    drain_jobs(engine)
    before, after = _assignment(engine, first), _assignment(engine, extended.json()["split_id"])
    assert all(after[image_id] == subset for image_id, subset in before.items())
    assert set(after) == set(before) | new_ids
    assert client.get(f"/api/splits/{first}").json()["counts"]["train"]["total"] == 300  # the old version is intact


def test_near_duplicates_land_in_one_subset(client_and_engine) -> None:
    client, engine, _app = client_and_engine
    # pairs of images share a perceptual hash: 200 groups of 2
    dataset_id = _dataset(engine, count=400, phash=lambda i: (i // 2) * 0x9E3779B97F4A7C15 % (1 << 62))
    split_id = client.post(f"/api/datasets/{dataset_id}/splits", json={"seed": 0}).json()["split_id"]
    drain_jobs(engine)
    assignment = _assignment(engine, split_id)
    with Session(engine) as session:
        images = session.scalars(select(Image).where(Image.dataset_id == dataset_id).order_by(Image.id)).all()
    for a, b in zip(images[::2], images[1::2], strict=True):
        assert assignment[a.id] == assignment[b.id]
    assert client.get(f"/api/splits/{split_id}").json()["groups"]["count"] == 200


def test_a_copy_found_by_the_inner_hash_lands_with_its_original(client_and_engine) -> None:
    client, engine, _app = client_and_engine
    # Whole views far apart in each pair; image 2k's inner view hashes as image 2k+1's whole view (a cropped copy).
    dataset_id = _dataset(engine, count=400, phash=lambda i: (i * 0x9E3779B97F4A7C15) % (1 << 62))
    with Session(engine) as session:
        images = session.scalars(select(Image).where(Image.dataset_id == dataset_id).order_by(Image.id)).all()
        for original, copy in zip(images[::2], images[1::2], strict=True):
            assert bin(original.phash ^ copy.phash).count("1") > 8
            original.inner_phash = copy.phash
        pairs = [(original.id, copy.id) for original, copy in zip(images[::2], images[1::2], strict=True)]
        session.commit()
    split_id = client.post(f"/api/datasets/{dataset_id}/splits", json={"seed": 0}).json()["split_id"]
    drain_jobs(engine)
    assignment = _assignment(engine, split_id)
    for original, copy in pairs:
        assert assignment[original] == assignment[copy]
    assert client.get(f"/api/splits/{split_id}").json()["groups"]["count"] == 200


def test_export_streams_an_imagefolder_zip_with_current_labels(client_and_engine, tmp_path) -> None:
    client, engine, app = client_and_engine
    blobs = app.state.blobs
    dataset_id = _dataset(engine, count=20, labels=("a/../b", "dog"), blobs=blobs)
    split_id = client.post(f"/api/datasets/{dataset_id}/splits", json={"seed": 0}).json()["split_id"]
    drain_jobs(engine)
    with Session(engine) as session:  # a label fixed after the split shows in the export
        image = session.scalars(select(Image).where(Image.dataset_id == dataset_id).order_by(Image.id)).first()
        dog = session.scalar(select(Label).where(Label.dataset_id == dataset_id, Label.name == "dog"))
        assert image is not None and dog is not None
        image.label_id = dog.id
        fixed_sha = image.sha256
        session.commit()
    response = client.get(f"/api/splits/{split_id}/export.zip")
    assert response.status_code == 200
    archive = zipfile.ZipFile(io.BytesIO(response.content))
    names = archive.namelist()
    assert len(names) == 20
    assert all(name.split("/")[0] in {"train", "dev", "test"} and ".." not in name.split("/") for name in names)
    fixed = [n for n in names if archive.read(n) == blobs.path(fixed_sha).read_bytes()]
    assert len(fixed) == 1 and fixed[0].split("/")[1] == "dog"


def test_bad_parameters_are_refused_with_the_reason(client_and_engine) -> None:
    client, engine, _app = client_and_engine
    dataset_id = _dataset(engine, count=10)
    response = client.post(f"/api/datasets/{dataset_id}/splits", json={"small_ratios": [0.5, 0.2, 0.2]})
    assert response.status_code == 422
    assert "add up to 1" in response.json()["detail"]
    assert client.post("/api/datasets/999/splits", json={"dry_run": True}).status_code == 404


def test_an_empty_dataset_cannot_be_split(client_and_engine) -> None:
    client, engine, _app = client_and_engine
    dataset_id = _dataset(engine, count=0)
    response = client.post(f"/api/datasets/{dataset_id}/splits", json={"dry_run": True})
    assert response.status_code == 422 and "no images" in response.json()["detail"]


def test_split_pages_render_preview_and_escape_labels(app, people, db) -> None:
    from tests.conftest import browser_login

    dataset = Dataset(name="<b>ds</b>")
    db.add(dataset)
    db.flush()
    add_images(db, dataset, count=50, labels=("<script>x</script>", "dog"))
    db.add(Split(dataset_id=dataset.id, version=1, status="ready", params={"seed": 0}, counts={}))
    db.commit()
    with TestClient(app, follow_redirects=False) as client:
        token = browser_login(client, people["reviewer"])
        page = client.get(f"/datasets/{dataset.id}/splits")
        assert page.status_code == 200 and "&lt;b&gt;ds&lt;/b&gt;" in page.text
        preview = client.post(
            f"/datasets/{dataset.id}/splits/preview",
            data={"seed": "0", "ratio_train": "0.6", "ratio_dev": "0.2", "ratio_test": "0.2"},
            headers={"x-csrf-token": token, "hx-request": "true"},
        )
        assert preview.status_code == 200, preview.text
        assert "<script>x</script>" not in preview.text and "&lt;script&gt;" in preview.text
        assert "<svg" in preview.text


def test_the_live_preview_does_not_wait_for_the_sqlite_write_lock(client_and_engine) -> None:
    client, engine, _app = client_and_engine
    if engine.dialect.name != "sqlite":
        pytest.skip("only SQLite has one write lock")
    dataset_id = _dataset(engine, count=30)
    assert client.get("/api/me").status_code == 200  # the token's last use is recorded now, not below
    with engine.begin() as writer:  # another request mid-write holds the lock throughout
        writer.execute(update(Dataset).where(Dataset.id == dataset_id).values(description="busy"))
        started = time.monotonic()
        preview = client.post(f"/datasets/{dataset_id}/splits/preview", data={"seed": "0"})
        assert preview.status_code == 200, preview.text
        assert time.monotonic() - started < 10  # a writer would wait for busy_timeout (30 s), then fail
