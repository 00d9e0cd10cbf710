"""Safe, streaming iteration over an uploaded ZIP archive.

Nothing is extracted to disk: each accepted entry is yielded as a normalised relative path and its bytes
(bounded by a per-entry limit), so only one entry is in memory at a time. Entry names are validated here
rather than trusted to `zipfile`, and bombs are detected by counting the bytes actually decompressed, never
the sizes the archive declares.
"""

from __future__ import annotations

import posixpath
import re
import stat
import unicodedata
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

_READ_CHUNK_BYTES = 64 * 1024
# Fixed part of a ZIP local file header; the entry's data starts after it (plus name and extra field).
_LOCAL_HEADER_BYTES = 30
_FLAG_ENCRYPTED = 0x1
_DRIVE_LETTER = re.compile(r"^[A-Za-z]:")
# Silently skipped: macOS resource forks and Windows/macOS folder metadata (dotfiles are skipped as well).
_IGNORED_PARTS = frozenset({"__macosx", "thumbs.db", "desktop.ini"})
_ARCHIVE_SUFFIXES = (".zip", ".zipx", ".tar", ".tgz", ".gz", ".bz2", ".xz", ".zst", ".7z", ".rar")
_ARCHIVE_SIGNATURES = (
    b"PK\x03\x04",
    b"PK\x05\x06",
    b"PK\x07\x08",
    b"\x1f\x8b",
    b"BZh",
    b"\xfd7zXZ\x00",
    b"7z\xbc\xaf\x27\x1c",
    b"Rar!\x1a\x07",
    b"\x28\xb5\x2f\xfd",
)
_TAR_MAGIC_OFFSET = 257


@dataclass(frozen=True)
class ArchiveLimits:
    max_entries: int = 50_000
    max_total_bytes: int = 20 * 2**30
    max_entry_bytes: int = 50 * 2**20
    # Decompressed/compressed ratio above which an entry is a bomb, checked once it has produced
    # `ratio_grace_bytes` (small flat images legitimately compress very well).
    max_ratio: float = 250.0
    ratio_grace_bytes: int = 2**20


DEFAULT_ARCHIVE_LIMITS = ArchiveLimits()


@dataclass(frozen=True)
class ArchiveEntry:
    path: str
    data: bytes


@dataclass(frozen=True)
class RejectedEntry:
    name: str
    code: str
    reason: str


class ArchiveError(Exception):
    """The whole archive is refused (not a ZIP, or a bomb); iteration stops."""

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


class UnsafePathError(ValueError):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def normalise_relative_path(name: str) -> str:
    """`name` as a clean relative POSIX path (NFC, no empty or "." parts); else raises UnsafePathError."""
    if "\x00" in name:
        raise UnsafePathError("name contains a NUL byte")
    # isprintable() is false for every control character: the per-character look only for the rare others.
    if not name.isprintable() and any(unicodedata.category(character) == "Cc" for character in name):
        raise UnsafePathError("name contains control characters")
    if _DRIVE_LETTER.match(name):
        raise UnsafePathError("name starts with a drive letter")
    if name.startswith("/"):
        raise UnsafePathError("absolute path")
    if "\\" in name:
        raise UnsafePathError("name contains a backslash")
    parts = name.split("/")
    if ".." in parts:
        raise UnsafePathError("name contains a '..' component")
    relative = unicodedata.normalize("NFC", "/".join(part for part in parts if part not in ("", ".")))
    if not relative:
        raise UnsafePathError("empty name")
    root = "/archive"
    if posixpath.commonpath([root, posixpath.normpath(posixpath.join(root, relative))]) != root:
        raise UnsafePathError("name escapes the archive")
    return relative


def is_ignored_path(path: str) -> bool:
    """True for OS metadata that uploads carry by accident (`__MACOSX/`, `.DS_Store`, `._x`, `Thumbs.db`)."""
    return any(part.startswith(".") or part.lower() in _IGNORED_PARTS for part in path.split("/"))


def iter_zip(
    zip_path: Path, *, limits: ArchiveLimits = DEFAULT_ARCHIVE_LIMITS
) -> Iterator[ArchiveEntry | RejectedEntry]:
    """Yield each file entry of the ZIP at `zip_path`, accepted or rejected with a reason.

    Directories and OS metadata are skipped silently. Raises ArchiveError for archive-level problems: not a
    ZIP, too many entries, overlapping entries, or too much decompressed data overall or per compressed byte.
    Those checks happen while streaming, so a bomb may be detected after earlier entries were yielded: treat
    an ArchiveError as failing the whole upload.
    """
    try:
        archive = zipfile.ZipFile(zip_path)
    except zipfile.BadZipFile as error:
        raise ArchiveError("not_zip", "not a ZIP archive") from error
    with archive:
        entries = archive.infolist()
        if len(entries) > limits.max_entries:
            raise ArchiveError(
                "too_many_entries",
                f"archive has {len(entries):,} entries (the limit is {limits.max_entries:,})",
            )
        _check_entries_do_not_overlap(entries, central_directory_offset=archive.start_dir)
        seen_paths: dict[str, int] = {}  # path -> entries with it so far
        total_bytes = 0
        for entry in entries:
            if entry.is_dir() or stat.S_ISDIR(entry.external_attr >> 16):
                continue
            display_name = _printable(entry.orig_filename)
            try:
                path = normalise_relative_path(entry.orig_filename)
            except UnsafePathError as error:
                yield RejectedEntry(display_name, "unsafe_path", error.reason)
                continue
            if is_ignored_path(path):
                continue
            if path in seen_paths:
                # Named apart, so the report lists it rather than folding it into the first under one name.
                seen_paths[path] += 1
                name = f"{path} (duplicate {seen_paths[path]})"
                yield RejectedEntry(name, "duplicate", f"another entry of the archive is also named {path}")
                continue
            refusal = _entry_refusal(entry, path)
            if refusal is not None:
                yield RejectedEntry(display_name, *refusal)
                continue
            seen_paths[path] = 1
            data, entry_bytes = _read_entry(archive, entry, limits=limits, total_bytes_before=total_bytes)
            total_bytes += entry_bytes
            if isinstance(data, bytes):
                yield ArchiveEntry(path, data)
            else:
                yield RejectedEntry(display_name, *data)


def _check_entries_do_not_overlap(entries: list[zipfile.ZipInfo], *, central_directory_offset: int) -> None:
    # Overlapping-entry bombs point many central-directory records at the same (or nested) compressed data,
    # so each entry's span [header offset, header + compressed data) must end before the next one starts.
    previous_end = 0
    for entry in sorted(entries, key=lambda info: info.header_offset):
        if entry.header_offset < previous_end:
            raise ArchiveError("overlapping_entries", "archive entries overlap (a zip bomb technique)")
        previous_end = entry.header_offset + _LOCAL_HEADER_BYTES + entry.compress_size
    if previous_end > central_directory_offset:
        raise ArchiveError("overlapping_entries", "archive entries overlap the central directory")


def _entry_refusal(entry: zipfile.ZipInfo, path: str) -> tuple[str, str] | None:
    # ZIP has no hard-link entry type; any unix file type other than a regular file is refused.
    file_type = stat.S_IFMT(entry.external_attr >> 16)
    if file_type == stat.S_IFLNK:
        return ("symlink", "symbolic links are not allowed")
    if file_type not in (0, stat.S_IFREG):
        return ("special_file", "special files (devices, FIFOs, sockets, links) are not allowed")
    if entry.flag_bits & _FLAG_ENCRYPTED:
        return ("encrypted", "encrypted (password-protected) entries are not supported")
    if path.lower().endswith(_ARCHIVE_SUFFIXES):
        return ("nested_archive", "archives inside the archive are not supported")
    return None


def _read_entry(
    archive: zipfile.ZipFile, entry: zipfile.ZipInfo, *, limits: ArchiveLimits, total_bytes_before: int
) -> tuple[bytes | tuple[str, str], int]:
    """The entry's bytes (or a (code, reason) refusal) and how many bytes were decompressed to find out."""
    chunks: list[bytes] = []
    decompressed = 0
    try:
        with archive.open(entry) as stream:
            while chunk := stream.read(_READ_CHUNK_BYTES):
                decompressed += len(chunk)
                if total_bytes_before + decompressed > limits.max_total_bytes:
                    raise ArchiveError(
                        "too_much_data",
                        f"archive expands to more than {limits.max_total_bytes:,} bytes (zip bomb guard)",
                    )
                expands_too_much = decompressed > limits.max_ratio * max(entry.compress_size, 1)
                if decompressed > limits.ratio_grace_bytes and expands_too_much:
                    raise ArchiveError(
                        "compression_bomb",
                        f"{_printable(entry.orig_filename)} expands more than {limits.max_ratio:g} times "
                        "(zip bomb guard)",
                    )
                if decompressed > limits.max_entry_bytes:
                    too_large = f"file is larger than {limits.max_entry_bytes:,} bytes"
                    return ("file_too_large", too_large), decompressed
                chunks.append(chunk)
    except NotImplementedError:
        return ("unsupported_compression", "compression method is not supported"), decompressed
    except (zipfile.BadZipFile, zlib.error, EOFError):
        return ("corrupt", "corrupt archive entry (bad data or checksum)"), decompressed
    data = b"".join(chunks)
    if data.startswith(_ARCHIVE_SIGNATURES) or data[_TAR_MAGIC_OFFSET : _TAR_MAGIC_OFFSET + 5] == b"ustar":
        return ("nested_archive", "archives inside the archive are not supported"), decompressed
    return data, decompressed


def _printable(name: str) -> str:
    return name if name.isprintable() else repr(name)[1:-1]
