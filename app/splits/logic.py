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


# ---- the split form: raw text fields to parameters, with problems in the user's words beside each field ----

FORM_DEFAULTS: dict[str, str] = {
    "seed": "0",
    "target_source": "",
    "target_train_fraction": "0.8",
    "train_dev_fraction": "0.0",
    "dev_cap": "10000",
    "test_cap": "10000",
    "ratio_train": "0.6",
    "ratio_dev": "0.2",
    "ratio_test": "0.2",
    "near_duplicate_threshold": "4",
}
RATIO_FIELDS = ("ratio_train", "ratio_dev", "ratio_test")
# Which input a problem belongs beside; the three ratios share one message ("ratios").
WHOLE_NUMBER_FIELDS = {
    "seed": "The seed is a whole number, 0 or more (the same seed gives the same split).",
    "dev_cap": "The dev cap is a whole number of images, 0 or more.",
    "test_cap": "The test cap is a whole number of images, 0 or more.",
    "near_duplicate_threshold": "Near-duplicate bits are a whole number from 0 to 16 (4 is the default).",
}
_BOUNDS = {"seed": (0, None), "dev_cap": (0, None), "test_cap": (0, None), "near_duplicate_threshold": (0, 16)}
_SHARES = {
    "target_train_fraction": "The target share to train is a number from 0 to 1, e.g. 0.8 for 80%.",
    "train_dev_fraction": "The train-dev share is a number from 0 up to (not including) 1, e.g. 0.1 for 10%.",
}


def _whole(text: str, low: int, high: int | None) -> int | None:
    try:
        value = int(text.strip())
    except ValueError:
        return None
    return value if value >= low and (high is None or value <= high) else None


def _share(text: str, *, below_one: bool = False) -> float | None:
    try:
        value = float(text.strip())
    except ValueError:
        return None
    if value != value or value < 0 or value > 1 or (below_one and value >= 1):  # NaN, or out of range
        return None
    return value


def _ratios(raw: dict[str, str]) -> tuple[tuple[float, float, float] | None, str | None]:
    shares = [_share(raw[name]) for name in RATIO_FIELDS]
    if any(share is None for share in shares):
        return None, "Train, dev and test are each a share from 0 to 1, e.g. 0.6, 0.2 and 0.2."
    train, dev, test = (float(share) for share in shares if share is not None)
    total = train + dev + test
    if abs(total - 1.0) > 1e-6:
        return None, (f"Train, dev and test add up to {total:.4g}; they must add up to 1 (e.g. 0.6, 0.2 and 0.2).")
    return (train, dev, test), None


def read_split_form(form: dict[str, str]) -> tuple[dict[str, Any], dict[str, str]]:
    """The split form's text fields as split parameters, and a message per field (or "ratios") that cannot be
    used, in words a person acts on. Missing fields take their defaults; the checkbox is on when sent."""
    raw = {name: str(form.get(name, default)) for name, default in FORM_DEFAULTS.items()}
    values: dict[str, Any] = {"target_source": raw["target_source"].strip() or None}
    values["use_imported"] = str(form.get("use_imported", "")).lower() in ("on", "true", "1")
    problems: dict[str, str] = {}
    for name, message in WHOLE_NUMBER_FIELDS.items():
        low, high = _BOUNDS[name]
        number = _whole(raw[name], low, high)
        if number is None:
            problems[name] = message
        values[name] = number
    for name, message in _SHARES.items():
        share = _share(raw[name], below_one=name == "train_dev_fraction")
        if share is None:
            problems[name] = message
        values[name] = share
    values["small_ratios"], ratio_problem = _ratios(raw)
    if ratio_problem:
        problems["ratios"] = ratio_problem
    return values, problems
