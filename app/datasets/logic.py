"""Pure rules for labelled images: labels and subsets from folder paths, label CSVs, label-name normalisation,
and CSV export that spreadsheets cannot execute. (Decoding and classifying an upload's files: app/uploads/logic.py.)"""

from __future__ import annotations

import csv
import io
import unicodedata
from collections import defaultdict
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

from app.ml.archives import UnsafePathError, normalise_relative_path

Subset = Literal["train", "dev", "test"]

MAX_NAME_LENGTH = 100
# Folder names recognised as a subset the uploader already chose; validation folders become "dev".
_SUBSET_FOLDERS: dict[str, Subset] = {
    "train": "train",
    "val": "dev",
    "valid": "dev",
    "validation": "dev",
    "dev": "dev",
    "test": "test",
}
_FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")


class InvalidNameError(ValueError):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def normalise_name(raw: str, *, what: str = "label") -> str:
    """A label (or source) name with whitespace trimmed and collapsed and Unicode in NFC form.

    Raises InvalidNameError for empty names, control characters and names over MAX_NAME_LENGTH characters.
    """
    if any(unicodedata.category(character) in ("Cc", "Zl", "Zp") for character in raw):
        raise InvalidNameError(f"{what} contains control characters")
    name = " ".join(unicodedata.normalize("NFC", raw).split())
    if not name:
        raise InvalidNameError(f"empty {what}")
    if len(name) > MAX_NAME_LENGTH:
        raise InvalidNameError(f"{what} is longer than {MAX_NAME_LENGTH} characters")
    return name


@dataclass(frozen=True)
class PathLabel:
    label: str | None
    subset: Subset | None
    source: str | None = None
    # Why a folder name could not be used as a label or source (the image then has none).
    problem: str | None = None


def strip_common_root(paths: Sequence[str], *, meaningful_levels: int = 1) -> list[str]:
    """Drop a leading folder shared by every path, repeatedly, while some path keeps `meaningful_levels`
    folders (class, or source and class) below it.

    `mydata/train/cat/x.jpg` loses `mydata/` (and `mydata/notes.jpg` becomes a top-level file), but
    `cat/x.jpg` and `cat/y.jpg` keep `cat/` (it is the label), and a shared subset folder is never stripped.
    """
    split_paths = [path.split("/") for path in paths]
    while (
        split_paths
        and all(len(parts) >= 2 for parts in split_paths)
        and any(len(parts) >= meaningful_levels + 2 for parts in split_paths)
        and len({parts[0] for parts in split_paths}) == 1
        and split_paths[0][0].lower() not in _SUBSET_FOLDERS
    ):
        split_paths = [parts[1:] for parts in split_paths]
    return ["/".join(parts) for parts in split_paths]


def infer_path_labels(paths: Sequence[str], *, source_folders: bool = False) -> dict[str, PathLabel]:
    """Label, imported subset and (optionally) source of every upload path, keyed by the original path.

    After `strip_common_root`: `[source/][subset/]class/.../file`. A subset folder (train, val, valid,
    validation, dev, test) is kept as the image's imported subset; the next folder is the label; deeper
    folders are ignored; a file with no class folder gets no label. With `source_folders` the first folder
    names the source (distribution); an upload of a single source with subset folders
    (`phone/train/cat/x.jpg` only) is then ambiguous and read as having a root folder.
    """
    return {
        path: _infer_one(stripped.split("/")[:-1], source_folders=source_folders)
        for path, stripped in zip(
            paths, strip_common_root(paths, meaningful_levels=2 if source_folders else 1), strict=True
        )
    }


def _infer_one(folders: list[str], *, source_folders: bool) -> PathLabel:
    source = None
    if source_folders and folders:
        try:
            source = normalise_name(folders[0], what="source")
        except InvalidNameError as error:
            return PathLabel(label=None, subset=None, problem=error.reason)
        folders = folders[1:]
    subset = _SUBSET_FOLDERS.get(folders[0].lower()) if folders else None
    if subset is not None:
        folders = folders[1:]
    if not folders:
        return PathLabel(label=None, subset=subset, source=source)
    try:
        return PathLabel(label=normalise_name(folders[0]), subset=subset, source=source)
    except InvalidNameError as error:
        return PathLabel(label=None, subset=subset, source=source, problem=error.reason)


@dataclass(frozen=True)
class CsvLabel:
    label: str
    source: str | None
    row: int


@dataclass(frozen=True)
class CsvProblem:
    # 1-based CSV record number, the header being row 1; None for problems with the file as a whole.
    row: int | None
    message: str


@dataclass(frozen=True)
class LabelCsvResult:
    labels: dict[str, CsvLabel]
    problems: list[CsvProblem]


def parse_label_csv(data: bytes | str, *, upload_paths: Collection[str]) -> LabelCsvResult:
    """Read a `filename,label[,source]` CSV (header required, UTF-8 with or without BOM) against an upload.

    A filename matches an upload path exactly, or by base name when that base name is unique in the upload.
    `labels` is keyed by upload path. Rows with problems are left out; a file given two different labels is
    left out entirely (reported on the later row).
    """
    opened = _open_label_csv(data)
    if isinstance(opened, CsvProblem):
        return LabelCsvResult({}, [opened])
    records, (filename_column, label_column, source_column) = opened

    resolve = _upload_path_resolver(upload_paths)
    labels: dict[str, CsvLabel] = {}
    conflicting: set[str] = set()
    problems: list[CsvProblem] = []
    unmatched: list[CsvProblem] = []
    for row_number, cells in _numbered_records(records, problems):
        cell = _cell_reader(cells)
        raw_source = cell(source_column)
        try:
            filename = normalise_relative_path(cell(filename_column).strip())
            label = normalise_name(cell(label_column))
            source = normalise_name(raw_source, what="source") if raw_source.strip() else None
        except (UnsafePathError, InvalidNameError) as error:
            problems.append(CsvProblem(row_number, error.reason))
            continue
        upload_path, no_match = resolve(filename)
        if upload_path is None:
            unmatched.append(CsvProblem(row_number, no_match))
            continue
        if upload_path in conflicting:
            continue
        earlier = labels.get(upload_path)
        if earlier is not None and earlier.label != label:
            problems.append(
                CsvProblem(
                    row_number,
                    f"{filename} is labelled '{label}' here but '{earlier.label}' in row {earlier.row}; "
                    "both rows ignored",
                )
            )
            conflicting.add(upload_path)
            del labels[upload_path]
            continue
        labels.setdefault(upload_path, CsvLabel(label=label, source=source, row=row_number))
    return LabelCsvResult(labels, problems + unmatched)


def _open_label_csv(data: bytes | str) -> tuple[Iterator[list[str]], tuple[int, int, int | None]] | CsvProblem:
    """The CSV's data records and its (filename, label, source) columns, or the problem with its text or header."""
    try:
        text = data.decode("utf-8-sig") if isinstance(data, bytes) else data.removeprefix("\ufeff")
    except UnicodeDecodeError:
        return CsvProblem(None, "the file is not UTF-8 text")
    records = csv.reader(io.StringIO(text, newline=""))
    try:
        header = [cell.strip().lower() for cell in next(records, [])]
    except csv.Error as error:
        return CsvProblem(1, f"unreadable CSV: {error}")
    missing = [column for column in ("filename", "label") if column not in header]
    if missing:
        return CsvProblem(
            1,
            "missing header row: expected filename,label[,source]"
            if not {"filename", "label", "source"} & set(header)
            else f"header is missing the column(s): {', '.join(missing)}",
        )
    source_column = header.index("source") if "source" in header else None
    return records, (header.index("filename"), header.index("label"), source_column)


def _numbered_records(records: Iterator[list[str]], problems: list[CsvProblem]) -> Iterator[tuple[int, list[str]]]:
    """Non-blank data records with their row numbers; a CSV syntax error is reported and ends the file."""
    row_number = 1
    try:
        for row_number, cells in enumerate(records, start=2):
            if any(cell.strip() for cell in cells):
                yield row_number, cells
    except csv.Error as error:
        problems.append(CsvProblem(row_number + 1, f"unreadable CSV: {error}"))


def _cell_reader(cells: list[str]) -> Callable[[int | None], str]:
    def cell(column: int | None) -> str:
        return cells[column] if column is not None and column < len(cells) else ""

    return cell


def _upload_path_resolver(upload_paths: Collection[str]) -> Callable[[str], tuple[str | None, str]]:
    by_base_name: dict[str, list[str]] = defaultdict(list)
    for path in upload_paths:
        by_base_name[path.rsplit("/", 1)[-1]].append(path)
    exact = set(upload_paths)

    def resolve(filename: str) -> tuple[str | None, str]:
        if filename in exact:
            return filename, ""
        candidates = by_base_name.get(filename, []) if "/" not in filename else []
        if len(candidates) == 1:
            return candidates[0], ""
        if candidates:
            return None, f"{filename} matches {len(candidates)} files in the upload; give its folder path"
        return None, f"{filename} is not in the upload"

    return resolve


def csv_safe_cell(value: object) -> str | int | float:
    """A cell spreadsheets will not evaluate: text starting with = + - @ tab or CR gets a leading quote."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        text = "" if value is None else str(value)
        return "'" + text if text.startswith(_FORMULA_PREFIXES) else text
    return value


def to_csv(header: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    """CSV text (RFC 4180 quoting, CRLF line ends) with every cell passed through `csv_safe_cell`."""
    return "".join(csv_chunks(header, rows))


def csv_chunks(header: Sequence[str], rows: Iterable[Sequence[object]], *, rows_per_chunk: int = 2000) -> Iterator[str]:
    """`to_csv` in pieces of `rows_per_chunk` rows (the header first), for streaming a large export."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow([csv_safe_cell(name) for name in header])
    for count, row in enumerate(rows, start=1):
        writer.writerow([csv_safe_cell(value) for value in row])
        if count % rows_per_chunk == 0:
            yield buffer.getvalue()
            buffer.seek(0)
            buffer.truncate()
    yield buffer.getvalue()
