"""Pure helpers for splits: parameters to and from JSON, a streamed zip writer, safe export paths."""

from __future__ import annotations

import re
import zipfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, fields
from typing import IO, Any

from app.ml.splitting import SplitParams

_UNSAFE_COMPONENT = re.compile(r"[\\/\x00-\x1f:*?\"<>|]+")


def params_to_dict(params: SplitParams) -> dict[str, Any]:
    data = asdict(params)
    data["small_ratios"] = list(params.small_ratios)
    return data


def params_from_dict(data: dict[str, Any]) -> SplitParams:
    known = {f.name for f in fields(SplitParams)}
    values = {k: v for k, v in data.items() if k in known and v is not None}
    if "small_ratios" in values:
        values["small_ratios"] = tuple(float(x) for x in values["small_ratios"])
    if values.get("target_source") == "":
        values["target_source"] = None
    return SplitParams(**values)


def safe_component(name: str, *, fallback: str = "_") -> str:
    """One path component for an archive: no separators, no dot-only names, no control characters."""
    cleaned = _UNSAFE_COMPONENT.sub("_", name).strip().strip(".")
    return cleaned[:120] or fallback


def export_path(*, subset: str, label: str, filename: str, sha256: str, taken: set[str]) -> str:
    """``subset/label/file`` (ImageFolder layout); a clash of base names gets the content hash prefix."""
    base = safe_component(filename.replace("\\", "/").rsplit("/", 1)[-1], fallback=sha256[:12])
    path = f"{safe_component(subset)}/{safe_component(label)}/{base}"
    if path in taken:
        path = f"{safe_component(subset)}/{safe_component(label)}/{sha256[:12]}-{base}"
    taken.add(path)
    return path


class _Chunks:
    """A write-only file that hands out what was written so far (zipfile streams into it)."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []
        self._offset = 0

    def write(self, data: bytes) -> int:
        self._parts.append(bytes(data))
        self._offset += len(data)
        return len(data)

    def tell(self) -> int:
        return self._offset

    def flush(self) -> None:
        return None

    @property
    def pending(self) -> bool:
        return bool(self._parts)

    def take(self) -> bytes:
        data = b"".join(self._parts)
        self._parts.clear()
        return data


def stream_zip(entries: Iterable[tuple[str, Callable[[], IO[bytes]]]], *, chunk: int = 1024 * 1024) -> Iterator[bytes]:
    """Yield a zip archive piece by piece; memory stays at about one chunk whatever the archive's size.

    Images are already compressed, so entries are stored, not deflated (faster, no bigger).
    """
    sink = _Chunks()
    with zipfile.ZipFile(sink, mode="w", compression=zipfile.ZIP_STORED, allowZip64=True) as archive:  # type: ignore[call-overload]
        for arcname, opener in entries:
            with opener() as source, archive.open(arcname, mode="w", force_zip64=True) as target:
                while block := source.read(chunk):
                    target.write(block)
                    if sink.pending:
                        yield sink.take()
            yield sink.take()
    yield sink.take()
