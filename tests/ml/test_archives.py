import gzip
import io
import os
import stat
import struct
import tarfile
import zipfile
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from app.ml.archives import (
    ArchiveEntry,
    ArchiveError,
    ArchiveLimits,
    RejectedEntry,
    UnsafePathError,
    is_ignored_path,
    iter_zip,
    normalise_relative_path,
)

JPEG_LIKE = b"\xff\xd8\xff\xe0" + b"not really a jpeg" * 10


def write_zip(path: Path, entries: Sequence[tuple[str | zipfile.ZipInfo, bytes]]) -> Path:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, data in entries:
            archive.writestr(name, data)
    return path


def results(path: Path, limits: ArchiveLimits = ArchiveLimits()) -> list[ArchiveEntry | RejectedEntry]:
    return list(iter_zip(path, limits=limits))


def single_rejection(path: Path) -> RejectedEntry:
    (result,) = results(path)
    assert isinstance(result, RejectedEntry), result
    return result


@dataclass(frozen=True)
class RawEntry:
    """A ZIP entry written byte by byte, to build archives `zipfile` refuses to write."""

    name: bytes
    data: bytes
    flags: int = 0
    method: int = 0
    crc: int | None = None
    declared_compress_size: int | None = None

    def fields(self) -> tuple[int, int, int, int, int]:
        crc = zlib.crc32(self.data) if self.crc is None else self.crc
        compress_size = len(self.data) if self.declared_compress_size is None else self.declared_compress_size
        return self.flags, self.method, crc, compress_size, len(self.data)

    def local_header(self) -> bytes:
        flags, method, crc, compress_size, size = self.fields()
        header = struct.pack(
            "<4s5H3L2H", b"PK\x03\x04", 20, flags, method, 0, 33, crc, compress_size, size, len(self.name), 0
        )
        return header + self.name

    def central_record(self, offset: int) -> bytes:
        flags, method, crc, compress_size, size = self.fields()
        fixed = (
            b"PK\x01\x02",
            3 << 8 | 20,
            20,
            flags,
            method,
            0,
            33,
            crc,
            compress_size,
            size,
            len(self.name),
        )
        return struct.pack("<4s6H3L5H2L", *fixed, 0, 0, 0, 0, (stat.S_IFREG | 0o644) << 16, offset) + self.name


def write_raw_zip(path: Path, entries: list[RawEntry], *, extra_records: Sequence[tuple[RawEntry, int]] = ()) -> Path:
    body, records = b"", []
    for entry in entries:
        records.append(entry.central_record(len(body)))
        body += entry.local_header() + entry.data
    records += [entry.central_record(offset) for entry, offset in extra_records]
    directory = b"".join(records)
    end = struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, len(records), len(records), len(directory), len(body), 0)
    path.write_bytes(body + directory + end)
    return path


def test_plain_entries_are_yielded_with_normalised_paths_and_their_bytes(tmp_path: Path) -> None:
    archive = write_zip(tmp_path / "a.zip", [("cat/./x.jpg", JPEG_LIKE), ("./dog//y.jpg", b"y" * 10)])
    assert results(archive) == [ArchiveEntry("cat/x.jpg", JPEG_LIKE), ArchiveEntry("dog/y.jpg", b"y" * 10)]


def test_unicode_names_are_normalised_to_nfc(tmp_path: Path) -> None:
    archive = write_zip(tmp_path / "a.zip", [("cafe\u0301/x.jpg", JPEG_LIKE)])
    (entry,) = results(archive)
    assert isinstance(entry, ArchiveEntry)
    assert entry.path == "caf\u00e9/x.jpg"


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("../evil.jpg", "name contains a '..' component"),
        ("cat/../../evil.jpg", "name contains a '..' component"),
        ("/abs.jpg", "absolute path"),
        ("C:\\x.jpg", "name starts with a drive letter"),
        ("c:/x.jpg", "name starts with a drive letter"),
        ("a\\b.jpg", "name contains a backslash"),
    ],
)
def test_unsafe_entry_names_are_rejected(tmp_path: Path, name: str, reason: str) -> None:
    archive = write_zip(tmp_path / "a.zip", [(name, JPEG_LIKE), ("ok.jpg", JPEG_LIKE)])
    rejection, accepted = results(archive)
    assert rejection == RejectedEntry(name, "unsafe_path", reason)
    assert accepted == ArchiveEntry("ok.jpg", JPEG_LIKE)


def test_control_characters_in_an_entry_name_are_rejected_and_shown_escaped(tmp_path: Path) -> None:
    rejection = single_rejection(write_zip(tmp_path / "a.zip", [("bell\x07.jpg", JPEG_LIKE)]))
    assert rejection == RejectedEntry("bell\\x07.jpg", "unsafe_path", "name contains control characters")


def test_nul_byte_in_an_entry_name_is_rejected(tmp_path: Path) -> None:
    archive = write_raw_zip(tmp_path / "a.zip", [RawEntry(b"evil.jpg\x00.png", JPEG_LIKE)])
    rejection = single_rejection(archive)
    assert (rejection.code, rejection.reason) == ("unsafe_path", "name contains a NUL byte")
    assert "\x00" not in rejection.name


@pytest.mark.parametrize(
    ("name", "reason"),
    [("", "empty name"), ("./", "empty name"), ("a/../b", "name contains a '..' component")],
)
def test_normalise_relative_path_refuses_what_is_not_a_file_path(name: str, reason: str) -> None:
    with pytest.raises(UnsafePathError) as raised:
        normalise_relative_path(name)
    assert raised.value.reason == reason


def test_symlink_entry_is_rejected(tmp_path: Path) -> None:
    link = zipfile.ZipInfo("link.jpg")
    link.create_system = 3
    link.external_attr = (stat.S_IFLNK | 0o777) << 16
    rejection = single_rejection(write_zip(tmp_path / "a.zip", [(link, b"/etc/passwd")]))
    assert (rejection.code, rejection.reason) == ("symlink", "symbolic links are not allowed")


@pytest.mark.parametrize("file_type", [stat.S_IFCHR, stat.S_IFBLK, stat.S_IFIFO, stat.S_IFSOCK])
def test_device_and_other_special_entries_are_rejected(tmp_path: Path, file_type: int) -> None:
    special = zipfile.ZipInfo("dev.jpg")
    special.create_system = 3
    special.external_attr = (file_type | 0o644) << 16
    rejection = single_rejection(write_zip(tmp_path / "a.zip", [(special, b"")]))
    assert rejection.code == "special_file"
    assert "special files" in rejection.reason


def test_encrypted_entry_is_rejected(tmp_path: Path) -> None:
    archive = write_raw_zip(tmp_path / "a.zip", [RawEntry(b"secret.jpg", b"\x00" * 40, flags=0x1)])
    rejection = single_rejection(archive)
    assert rejection.code == "encrypted"
    assert "password-protected" in rejection.reason


def inner_zip_bytes() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as inner:
        inner.writestr("x.jpg", JPEG_LIKE)
    return buffer.getvalue()


def tar_bytes() -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        member = tarfile.TarInfo("x.jpg")
        member.size = len(JPEG_LIKE)
        tar.addfile(member, io.BytesIO(JPEG_LIKE))
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("inner.zip", b"anything"),
        ("more/photos.tar.gz", b"anything"),
        ("photos.7z", b"anything"),
        ("photo.jpg", inner_zip_bytes()),
        ("photo.png", gzip.compress(JPEG_LIKE)),
        ("photo.gif", tar_bytes()),
    ],
    ids=["zip-name", "tar.gz-name", "7z-name", "zip-magic", "gzip-magic", "tar-magic"],
)
def test_nested_archives_are_rejected_by_name_and_by_content(tmp_path: Path, name: str, content: bytes) -> None:
    rejection = single_rejection(write_zip(tmp_path / "a.zip", [(name, content)]))
    assert (rejection.code, rejection.reason) == (
        "nested_archive",
        "archives inside the archive are not supported",
    )


def test_os_metadata_and_directories_are_skipped_silently(tmp_path: Path) -> None:
    entries = [
        ("__MACOSX/cat/._x.jpg", b"resource fork"),
        ("cat/.DS_Store", b"finder"),
        ("cat/._x.jpg", b"apple double"),
        ("cat/Thumbs.db", b"windows"),
        (".hidden/y.jpg", JPEG_LIKE),
        ("cat/", b""),
        ("cat/x.jpg", JPEG_LIKE),
    ]
    assert results(write_zip(tmp_path / "a.zip", entries)) == [ArchiveEntry("cat/x.jpg", JPEG_LIKE)]


@pytest.mark.parametrize(
    ("path", "ignored"),
    [
        ("__MACOSX/a.jpg", True),
        ("a/.DS_Store", True),
        ("a/._b.jpg", True),
        ("a/b.jpg", False),
        ("a.b/c.jpg", False),
    ],
)
def test_is_ignored_path(path: str, ignored: bool) -> None:
    assert is_ignored_path(path) is ignored


def test_second_entry_with_the_same_normalised_path_is_rejected(tmp_path: Path) -> None:
    archive = write_zip(tmp_path / "a.zip", [("cat/x.jpg", JPEG_LIKE), ("cat//x.jpg", b"other")])
    first, second = results(archive)
    assert first == ArchiveEntry("cat/x.jpg", JPEG_LIKE)
    assert second == RejectedEntry(
        "cat/x.jpg (duplicate 2)", "duplicate", "another entry of the archive is also named cat/x.jpg"
    )


def test_not_a_zip_is_an_archive_error(tmp_path: Path) -> None:
    path = tmp_path / "notes.zip"
    path.write_text("hello")
    with pytest.raises(ArchiveError) as raised:
        results(path)
    assert (raised.value.code, raised.value.reason) == ("not_zip", "not a ZIP archive")


def test_too_many_entries_stops_before_anything_is_read(tmp_path: Path) -> None:
    archive = write_zip(tmp_path / "a.zip", [(f"{index}.jpg", JPEG_LIKE) for index in range(5)])
    entries = iter_zip(archive, limits=ArchiveLimits(max_entries=3))
    with pytest.raises(ArchiveError) as raised:
        next(entries)
    assert raised.value.code == "too_many_entries"
    assert "5 entries" in raised.value.reason


def test_highly_compressed_entry_is_a_zip_bomb(tmp_path: Path) -> None:
    archive = write_zip(tmp_path / "bomb.zip", [("ok.jpg", JPEG_LIKE), ("zeros.bmp", bytes(4 * 2**20))])
    assert archive.stat().st_size < 20_000
    entries = iter_zip(archive, limits=ArchiveLimits(max_ratio=100, ratio_grace_bytes=64 * 1024))
    assert next(entries) == ArchiveEntry("ok.jpg", JPEG_LIKE)
    with pytest.raises(ArchiveError) as raised:
        next(entries)
    assert raised.value.code == "compression_bomb"
    assert "zeros.bmp expands more than 100 times" in raised.value.reason


def test_total_decompressed_bytes_are_limited(tmp_path: Path) -> None:
    payloads = [os.urandom(2**20) for _ in range(3)]
    archive = write_zip(tmp_path / "a.zip", [(f"{index}.jpg", data) for index, data in enumerate(payloads)])
    entries = iter_zip(archive, limits=ArchiveLimits(max_total_bytes=int(2.5 * 2**20)))
    assert [next(entries), next(entries)] == [
        ArchiveEntry("0.jpg", payloads[0]),
        ArchiveEntry("1.jpg", payloads[1]),
    ]
    with pytest.raises(ArchiveError) as raised:
        next(entries)
    assert raised.value.code == "too_much_data"


def test_entry_over_the_size_limit_is_rejected_and_iteration_goes_on(tmp_path: Path) -> None:
    archive = write_zip(tmp_path / "a.zip", [("big.jpg", os.urandom(300_000)), ("small.jpg", JPEG_LIKE)])
    big, small = results(archive, ArchiveLimits(max_entry_bytes=100_000))
    assert big == RejectedEntry("big.jpg", "file_too_large", "file is larger than 100,000 bytes")
    assert small == ArchiveEntry("small.jpg", JPEG_LIKE)


def test_entries_sharing_the_same_data_are_an_overlap_bomb(tmp_path: Path) -> None:
    shared = RawEntry(b"a.jpg", JPEG_LIKE)
    archive = write_raw_zip(tmp_path / "a.zip", [shared], extra_records=[(RawEntry(b"b.jpg", JPEG_LIKE), 0)])
    with pytest.raises(ArchiveError) as raised:
        results(archive)
    assert (raised.value.code, raised.value.reason) == (
        "overlapping_entries",
        "archive entries overlap (a zip bomb technique)",
    )


def test_compressed_size_reaching_into_the_central_directory_is_refused(tmp_path: Path) -> None:
    archive = write_raw_zip(tmp_path / "a.zip", [RawEntry(b"a.jpg", JPEG_LIKE, declared_compress_size=10_000)])
    with pytest.raises(ArchiveError) as raised:
        results(archive)
    assert raised.value.code == "overlapping_entries"


def test_entry_with_a_bad_checksum_is_rejected_as_corrupt(tmp_path: Path) -> None:
    archive = write_raw_zip(tmp_path / "a.zip", [RawEntry(b"a.jpg", JPEG_LIKE, crc=12345)])
    assert single_rejection(archive) == RejectedEntry(
        "a.jpg", "corrupt", "corrupt archive entry (bad data or checksum)"
    )


def test_unsupported_compression_method_is_rejected(tmp_path: Path) -> None:
    archive = write_raw_zip(tmp_path / "a.zip", [RawEntry(b"a.jpg", JPEG_LIKE, method=9)])  # 9: Deflate64
    assert single_rejection(archive) == RejectedEntry(
        "a.jpg", "unsupported_compression", "compression method is not supported"
    )
