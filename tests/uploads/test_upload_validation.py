"""Every validation case reaches the upload report with its reason: real uploads through the API, the ingest
job run inline, on SQLite and on Postgres. (The pure checks themselves are tested in tests/ml.)"""

from __future__ import annotations

import io
import stat
import struct
import zipfile
import zlib

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image, PngImagePlugin
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.core.db import session_factory
from app.models import Image as ImageRow
from app.models import Upload
from app.web.app import create_app
from tests.conftest import api_client
from tests.datasets.conftest import Ingest, jpeg, noisy_jpeg, reasons, zip_of
from tests.ml.test_archives import RawEntry, write_raw_zip


def encode(image: Image.Image, image_format: str, **params: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=image_format, **params)
    return buffer.getvalue()


def png_claiming_size(width: int, height: int) -> bytes:
    """A small PNG whose header claims another size (a decompression bomb needs no more than that)."""
    data = bytearray(encode(Image.new("L", (20, 20)), "PNG"))
    ihdr = 8 + 8  # signature, then the IHDR chunk's length and type
    data[ihdr : ihdr + 8] = struct.pack(">II", width, height)
    data[ihdr + 13 : ihdr + 17] = struct.pack(">I", zlib.crc32(bytes(data[ihdr - 4 : ihdr + 13])))
    return bytes(data)


def iso_media(brand: bytes) -> bytes:
    box = b"ftyp" + brand + b"\x00\x00\x00\x00" + b"mif1" + brand
    return struct.pack(">I", 4 + len(box)) + box + b"\x00" * 64


def thumbnail_of(client: TestClient, image_id: int) -> Image.Image:
    response = client.get(f"/images/{image_id}/thumb")
    assert response.status_code == 200
    assert response.headers["content-type"] == "image/jpeg"
    return Image.open(io.BytesIO(response.content))


def test_image_files_are_refused_with_their_reason(ingest: Ingest) -> None:
    dataset = ingest.create_dataset()
    text = PngImagePlugin.PngInfo()
    text.add_text("Comment", "a" * (3 * 2**20), zip=True)
    truncated = jpeg(size=(200, 200), quality=95)
    files = [
        ("cat/ok.jpg", noisy_jpeg(1)),
        ("cat/empty.jpg", b""),
        ("cat/notes.jpg", b"just some text, not a picture"),
        ("cat/truncated.jpg", truncated[: len(truncated) // 2]),
        ("cat/bomb.png", png_claiming_size(30_000, 30_000)),
        ("cat/text.png", encode(Image.new("RGB", (40, 40)), "PNG", pnginfo=text)),
        ("cat/tiny.png", encode(Image.new("RGB", (8, 40)), "PNG")),
        ("cat/photo.heic", iso_media(b"heic")),
        ("cat/drawing.svg", b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg"></svg>'),
        ("cat/page.html", b"<!DOCTYPE html><html><body><script>alert(1)</script></body></html>"),
        ("cat/scan.pdf", b"%PDF-1.7\n1 0 obj\n"),
        ("cat/archive.rar", b"Rar!\x1a\x07\x00" + b"\x00" * 40),
        ("cat/float.tif", encode(Image.new("F", (40, 40), 0.5), "TIFF")),
    ]
    report = ingest.upload(dataset, files)
    assert report["status"] == "done"
    assert reasons(report) == {
        "cat/empty.jpg": "empty file (0 bytes)",
        "cat/notes.jpg": "not an image (content is not JPEG, PNG, WebP, BMP, GIF or TIFF)",
        "cat/truncated.jpg": "truncated or corrupt JPEG data",
        "cat/bomb.png": "image has more than 64,000,000 pixels (decompression-bomb guard)",
        "cat/text.png": "PNG text metadata is too large",
        "cat/tiny.png": "image is too small (8x40; each side must be at least 16 px)",
        "cat/photo.heic": "HEIC/HEIF is not supported",
        "cat/drawing.svg": "SVG is not supported",
        "cat/page.html": "HTML is not supported",
        "cat/scan.pdf": "PDF is not supported",
        "cat/archive.rar": "RAR archive is not supported",
        "cat/float.tif": "colour mode F is not supported",
    }
    assert (report["accepted"], report["rejected_count"], report["files"]) == (1, 12, 13)
    # Nothing refused became an image, so no SVG or HTML is ever served from an image URL.
    listing = ingest.viewer.get(f"/api/datasets/{dataset}/images").json()
    assert [item["filename"] for item in listing["items"]] == ["cat/ok.jpg"]


def test_odd_but_valid_images_are_normalised_for_thumbnails_and_noted(ingest: Ingest) -> None:
    dataset = ingest.create_dataset()
    frames = [Image.new("RGB", (48, 48), colour) for colour in ((255, 0, 0), (0, 255, 0))]
    palette = Image.new("P", (64, 32), 0)
    palette.putpalette([0, 0, 0, 0, 0, 255] + [0] * 762)
    la = Image.new("LA", (64, 32), (0, 0))
    grey16 = Image.fromarray(np.full((32, 32), 32768, dtype=np.uint16))
    upright = Image.new("RGB", (200, 100), (255, 0, 0))
    upright.paste((0, 0, 255), (100, 0, 200, 100))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    files = [
        ("shapes/animated.gif", encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100)),
        ("shapes/cmyk.jpg", encode(Image.new("CMYK", (64, 64), (0, 255, 255, 0)), "JPEG")),
        ("shapes/palette.png", encode(palette, "PNG", transparency=0)),
        ("shapes/la.png", encode(la, "PNG")),
        ("shapes/grey16.png", encode(grey16, "PNG")),
        ("shapes/rotated.jpg", encode(upright, "JPEG", exif=exif.tobytes(), quality=95)),
        ("shapes/really-a-png.jpg", encode(Image.new("RGB", (40, 40), "green"), "PNG")),
    ]
    report = ingest.upload(dataset, files)
    assert (report["accepted"], report["rejected"]) == (7, [])
    notes = {item["name"]: item["reason"] for item in report["notes"]}
    assert notes == {
        "shapes/animated.gif": "2 frames (animated or multi-page); only the first frame is used",
        "shapes/really-a-png.jpg": "extension .jpg does not match the content, which is PNG",
    }
    ids = {
        item["filename"]: item["id"] for item in ingest.viewer.get(f"/api/datasets/{dataset}/images").json()["items"]
    }
    thumbs = {name.split("/")[1]: thumbnail_of(ingest.viewer, image_id) for name, image_id in ids.items()}
    assert all(thumb.mode == "RGB" for thumb in thumbs.values())
    assert np.allclose(thumbs["animated.gif"].getpixel((20, 20)), (255, 0, 0), atol=12)
    assert np.allclose(thumbs["cmyk.jpg"].getpixel((30, 30)), (255, 0, 0), atol=12)
    assert np.allclose(thumbs["palette.png"].getpixel((5, 5)), (255, 255, 255), atol=8)  # transparent: white
    assert np.allclose(thumbs["la.png"].getpixel((5, 5)), (255, 255, 255), atol=8)
    assert np.allclose(thumbs["grey16.png"].getpixel((10, 10)), (128, 128, 128), atol=3)  # scaled, not clipped
    assert thumbs["rotated.jpg"].size == (100, 200)  # upright: the stored 200x100 turned a quarter
    assert np.allclose(thumbs["rotated.jpg"].getpixel((50, 20)), (255, 0, 0), atol=30)
    detail = ingest.viewer.get(f"/api/images/{ids['shapes/animated.gif']}").json()
    assert detail["notes"] == notes["shapes/animated.gif"]


def _special(name: str, file_type: int) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name)
    info.create_system = 3
    info.external_attr = (file_type | 0o644) << 16
    return info


def test_zip_entries_are_refused_with_their_reason_and_os_metadata_is_skipped(ingest: Ingest) -> None:
    dataset = ingest.create_dataset()
    archive = zip_of(
        [
            ("dog/good.jpg", noisy_jpeg(2)),
            ("../evil.jpg", noisy_jpeg(3)),
            ("/abs.jpg", noisy_jpeg(4)),
            (_special("dog/link.jpg", stat.S_IFLNK), b"/etc/passwd"),
            (_special("dog/device.jpg", stat.S_IFCHR), b""),
            ("dog/inner.zip", zip_of([("x.jpg", noisy_jpeg(5))])),
            ("dog/sneaky.jpg", zip_of([("x.jpg", noisy_jpeg(6))])),
            ("__MACOSX/dog/._good.jpg", b"resource fork"),
            ("dog/.DS_Store", b"finder"),
        ]
    )
    report = ingest.upload(dataset, [("pets.zip", archive)])
    assert reasons(report) == {
        "pets.zip/../evil.jpg": "name contains a '..' component",
        "pets.zip//abs.jpg": "absolute path",
        "pets.zip/dog/link.jpg": "symbolic links are not allowed",
        "pets.zip/dog/device.jpg": "special files (devices, FIFOs, sockets, links) are not allowed",
        "pets.zip/dog/inner.zip": "archives inside the archive are not supported",
        "pets.zip/dog/sneaky.jpg": "archives inside the archive are not supported",
    }
    assert report["accepted"] == 1
    assert report["files"] == 7  # the metadata files are not even listed
    image = ingest.viewer.get(f"/api/datasets/{dataset}/images").json()["items"][0]
    assert (image["filename"], image["label"]) == ("pets.zip/dog/good.jpg", "dog")


def test_encrypted_entries_are_refused(ingest: Ingest, tmp_path) -> None:  # type: ignore[no-untyped-def]
    dataset = ingest.create_dataset()
    archive = write_raw_zip(tmp_path / "locked.zip", [RawEntry(b"cat/secret.jpg", b"\x00" * 40, flags=0x1)])
    report = ingest.upload(dataset, [("locked.zip", archive.read_bytes())])
    assert reasons(report) == {"locked.zip/cat/secret.jpg": "encrypted (password-protected) entries are not supported"}


def test_zip_bombs_fail_their_whole_archive_and_nothing_of_it_is_added(ingest: Ingest, tmp_path) -> None:  # type: ignore[no-untyped-def]
    dataset = ingest.create_dataset()
    ratio_bomb = zip_of(
        [("cat/first.jpg", noisy_jpeg(7)), ("cat/zeros.bmp", bytes(8 * 2**20))], compression=zipfile.ZIP_DEFLATED
    )
    shared = RawEntry(b"cat/a.jpg", noisy_jpeg(8))
    overlap = write_raw_zip(
        tmp_path / "overlap.zip", [shared], extra_records=[(RawEntry(b"cat/b.jpg", shared.data), 0)]
    )
    files = [
        ("ratio.zip", ratio_bomb),
        ("overlap.zip", overlap.read_bytes()),
        ("not-a-zip.zip", b"plain text with a zip name"),
        ("cat/fine.jpg", noisy_jpeg(9)),
    ]
    report = ingest.upload(dataset, files)
    assert reasons(report) == {
        "ratio.zip": "cat/zeros.bmp expands more than 250 times (zip bomb guard)",
        "overlap.zip": "archive entries overlap (a zip bomb technique)",
        "not-a-zip.zip": "not a ZIP archive",
    }
    # The bomb's first entry was read before the bomb was found; it is dropped with its archive.
    names = [item["filename"] for item in ingest.viewer.get(f"/api/datasets/{dataset}/images").json()["items"]]
    assert names == ["cat/fine.jpg"]
    assert report["files"] == 4


def test_labels_csv_rows_and_files_are_checked(ingest: Ingest) -> None:
    dataset = ingest.create_dataset()
    labels = (
        "\ufefffilename,label,source\n"
        "a.jpg,cat,phone\n"
        "b.jpg,dog,\n"
        "b.jpg,cat,\n"
        "../c.jpg,cat,\n"
        "/abs/d.jpg,cat,\n"
        "ghost.jpg,cat,\n"
        "e.jpg,,\n"
        '=f.jpg,=HYPERLINK("x"),\n'
    ).encode()
    files = [
        ("x/a.jpg", noisy_jpeg(10)),
        ("x/b.jpg", noisy_jpeg(11)),
        ("x/e.jpg", noisy_jpeg(12)),
        ("=f.jpg", noisy_jpeg(13)),
        ("x/g.jpg", noisy_jpeg(14)),
    ]
    report = ingest.upload(dataset, files, labels_csv=labels, source="web")
    problems = [(problem["row"], problem["reason"]) for problem in report["csv_problems"]]
    assert problems == [
        (4, "b.jpg is labelled 'cat' here but 'dog' in row 3; both rows ignored"),
        (5, "name contains a '..' component"),
        (6, "absolute path"),
        (8, "empty label"),
        (7, "ghost.jpg is not in the upload"),
    ]
    no_row = "no label: the labels CSV has no usable row for it"
    assert reasons(report) == {"x/b.jpg": no_row, "x/e.jpg": no_row, "x/g.jpg": no_row}
    items = {item["filename"]: item for item in ingest.viewer.get(f"/api/datasets/{dataset}/images").json()["items"]}
    assert {name: (item["label"], item["source"]) for name, item in items.items()} == {
        "x/a.jpg": ("cat", "phone"),  # the CSV's source column wins over the upload's
        "=f.jpg": ('=HYPERLINK("x")', "web"),
    }
    export = ingest.viewer.get(f"/api/datasets/{dataset}/images.csv")
    assert export.status_code == 200
    assert '\'=f.jpg,"\'=HYPERLINK(""x"")",web' in export.text  # formula cells neutralised
    assert "\n=" not in export.text and ",=" not in export.text
    report_csv = ingest.viewer.get(f"/api/uploads/{report['id']}/report.csv").text
    assert "'=f.jpg,accepted" in report_csv


@pytest.mark.parametrize(
    ("labels", "reason"),
    [
        (b"a.jpg,cat\n", "labels CSV: missing header row: expected filename,label[,source]"),
        (b"filename,class\na.jpg,cat\n", "labels CSV: header is missing the column(s): label"),
        (b"filename,label\n\xff\xfe,cat\n", "labels CSV: the file is not UTF-8 text"),
    ],
)
def test_an_unreadable_labels_csv_is_refused_before_anything_is_ingested(
    ingest: Ingest, labels: bytes, reason: str
) -> None:
    dataset = ingest.create_dataset()
    response = ingest.reviewer.post(
        f"/api/datasets/{dataset}/uploads",
        files=[("files", ("a.jpg", noisy_jpeg(15), "image/jpeg")), ("labels_csv", ("labels.csv", labels, "text/csv"))],
    )
    assert response.status_code == 422
    assert response.json()["detail"] == reason
    with Session(ingest.engine) as session:
        assert session.scalar(select(func.count()).select_from(Upload).where(Upload.dataset_id == dataset)) == 0


def test_duplicates_are_stored_once_and_conflicts_can_be_settled(ingest: Ingest) -> None:
    dataset = ingest.create_dataset()
    same = noisy_jpeg(20)
    first = ingest.upload(dataset, [("cat/a.jpg", same), ("cat/copy.jpg", same), ("dog/b.jpg", same)])
    assert (first["accepted"], first["duplicates"], first["conflicts"]) == (1, 1, 1)
    (image_id,) = {item["image_id"] for item in first["duplicate_items"] + first["conflict_items"]}
    assert first["duplicate_items"][0]["reason"] == f"same content as cat/a.jpg (image {image_id})"
    conflict = first["conflict_items"][0]
    assert conflict["reason"] == (
        f"same content as cat/a.jpg (image {image_id}), which is labelled 'cat'; this file says 'dog'"
    )
    again = ingest.upload(dataset, [("more/cat/a-again.jpg", same)], label="cat")
    assert (again["accepted"], again["duplicates"]) == (0, 1)

    settle = ingest.reviewer.post(f"/api/uploads/{first['id']}/conflicts/{conflict['entry_id']}", json={"keep": "new"})
    assert settle.status_code == 200, settle.text
    detail = ingest.viewer.get(f"/api/images/{image_id}").json()
    assert detail["label"] == "dog"
    assert [(h["kind"], h["old_label"], h["new_label"]) for h in detail["history"]] == [
        ("import", None, "cat"),
        ("relabel", "cat", "dog"),
    ]
    assert (
        ingest.reviewer.post(
            f"/api/uploads/{first['id']}/conflicts/{conflict['entry_id']}", json={"keep": "new"}
        ).status_code
        == 409
    )
    with Session(ingest.engine) as session:
        assert session.scalar(select(func.count()).select_from(ImageRow).where(ImageRow.dataset_id == dataset)) == 1


def test_request_limits_are_refused_early_and_leave_no_files_behind(ingest: Ingest) -> None:
    dataset = ingest.create_dataset()
    strict = ingest.settings.model_copy(
        update={"max_upload_files": 3, "max_form_fields": 2, "max_part_bytes": 1024, "max_request_bytes": 200_000}
    )
    app = create_app(strict, session_maker=session_factory(ingest.engine))
    token = ingest.reviewer.headers["authorization"].removeprefix("Bearer ")
    url = f"/api/datasets/{dataset}/uploads"
    with api_client(app, token) as client:
        too_many_files = client.post(
            url, files=[("files", (f"{i}.jpg", noisy_jpeg(i), "image/jpeg")) for i in range(4)]
        )
        assert too_many_files.status_code == 400
        assert too_many_files.json()["detail"] == "Too many files. Maximum number of files is 3."
        too_many_fields = client.post(
            url, files=[("files", ("a.jpg", noisy_jpeg(1), "image/jpeg"))], data={"label": "a", "source": "b", "x": "c"}
        )
        assert too_many_fields.status_code == 400
        assert too_many_fields.json()["detail"] == "Too many fields. Maximum number of fields is 2."
        long_field = client.post(
            url, files=[("files", ("a.jpg", noisy_jpeg(1), "image/jpeg"))], data={"label": "x" * 2000}
        )
        assert long_field.status_code == 400
        assert "maximum size of 1KB" in long_field.json()["detail"]
        too_big = client.post(url, files=[("files", ("big.bmp", b"\x00" * 300_000, "image/bmp"))])
        assert too_big.status_code == 413
        assert too_big.json()["error"] == "too_large"
    anonymous = TestClient(app).post(url, files=[("files", ("a.jpg", noisy_jpeg(1), "image/jpeg"))])
    assert anonymous.status_code == 401
    assert list((strict.blob_dir / "tmp").iterdir()) == []
    assert not strict.staging_dir.exists() or list(strict.staging_dir.rglob("*")) == []
    with Session(ingest.engine) as session:
        assert session.scalar(select(func.count()).select_from(Upload)) == 0
