"""Pure rules for turning an upload into labelled images: labels and subsets from folder paths, label CSVs,
label-name normalisation, and CSV export that spreadsheets cannot execute."""

from __future__ import annotations

import csv
import io
import pickle
import unicodedata
from collections import defaultdict
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Literal

from PIL import Image as PILImage

from app.ml.archives import UnsafePathError, normalise_relative_path
from app.ml.images import ImageLimits, Rejection, dhash64, encode_thumbnail, inspect_image, shrink

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
    try:
        text = data.decode("utf-8-sig") if isinstance(data, bytes) else data.removeprefix("\ufeff")
    except UnicodeDecodeError:
        return LabelCsvResult({}, [CsvProblem(None, "the file is not UTF-8 text")])
    records = csv.reader(io.StringIO(text, newline=""))
    try:
        header = [cell.strip().lower() for cell in next(records, [])]
    except csv.Error as error:
        return LabelCsvResult({}, [CsvProblem(1, f"unreadable CSV: {error}")])
    missing = [column for column in ("filename", "label") if column not in header]
    if missing:
        message = (
            "missing header row: expected filename,label[,source]"
            if not {"filename", "label", "source"} & set(header)
            else f"header is missing the column(s): {', '.join(missing)}"
        )
        return LabelCsvResult({}, [CsvProblem(1, message)])
    filename_column, label_column = header.index("filename"), header.index("label")
    source_column = header.index("source") if "source" in header else None

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


# ---- ingest: one staged file at a time, and the labels of a whole upload ----------------------------------


_EXIF_ORIENTATION = 0x0112


@dataclass(frozen=True)
class DecodedImage:
    """What ingest keeps of a valid image: its facts, a JPEG thumbnail and the thumbnail's difference hash."""

    width: int
    height: int
    format: str
    notes: tuple[str, ...]
    thumbnail: bytes
    dhash: int


def decode_for_ingest(
    path: str, *, filename: str, limits: ImageLimits, thumbnail_side: int
) -> DecodedImage | Rejection:
    """Validate the image file at `path` (fully decoded) and make its thumbnail; runs in a process pool."""
    inspected = inspect_image(Path(path), filename=filename, limits=limits)
    if isinstance(inspected, Rejection):
        return inspected
    image = inspected.image
    if image.mode == "RGB" and image.getexif().get(_EXIF_ORIENTATION, 1) == 1:
        # Already upright RGB (most photos): `shrink` would copy it whole first; this decode is ours to shrink.
        image.thumbnail((thumbnail_side, thumbnail_side), PILImage.Resampling.LANCZOS)
        thumbnail = image
    else:
        thumbnail = shrink(image, max_side=thumbnail_side)
    return DecodedImage(
        width=inspected.width,
        height=inspected.height,
        format=inspected.format,
        notes=inspected.notes,
        thumbnail=encode_thumbnail(thumbnail),
        dhash=dhash64(thumbnail),
    )


def serve_decodes(requests: BinaryIO, replies: BinaryIO) -> None:
    """The loop of a decoder process: for each pickled `(path, filename, limits, thumbnail_side)` request,
    write back the pickled `decode_for_ingest` result, until the requests end.

    One request at a time per process, so when a decoder dies its parent knows exactly which file killed it.
    """
    while True:
        try:
            path, filename, limits, thumbnail_side = pickle.load(requests)
        except EOFError:
            return
        pickle.dump(
            decode_for_ingest(path, filename=filename, limits=limits, thumbnail_side=thumbnail_side),
            replies,
            protocol=pickle.HIGHEST_PROTOCOL,
        )
        replies.flush()


def archive_member_name(archive_name: str, member_path: str) -> str:
    """The upload-entry name of a zip member: the archive's name, then the member's path inside it."""
    return f"{archive_name}/{member_path}"


@dataclass(frozen=True)
class StagedFile:
    key: int
    path: str  # relative path of a loose file, or a zip member's path inside its archive
    archive: int | None = None  # the archive it came from; paths are read per archive


@dataclass(frozen=True)
class LabelPlan:
    label: str | None
    subset: Subset | None
    source: str
    problem: str | None = None  # why the file has no label (it is then rejected)


@dataclass(frozen=True)
class UploadLabels:
    plans: dict[int, LabelPlan]
    csv_problems: list[CsvProblem]


NO_LABEL = "no label: put it in a class folder (class/image.jpg), list it in a labels CSV, or type one label"


def plan_labels(
    files: Sequence[StagedFile],
    *,
    default_source: str,
    typed_label: str | None = None,
    labels_csv: bytes | None = None,
    source_folders: bool = False,
    unlabeled: bool = False,
) -> UploadLabels:
    """Label, imported subset and source of every file of an upload, keyed by `StagedFile.key`.

    Subsets (`train|val|test/class/x.jpg`) always come from paths, read per archive (and once for the loose
    files). Labels come from the labels CSV when one is given (a file it does not label is then rejected, so a
    typo in the CSV never silently falls back to folder names), else from the typed label, else from the class
    folder. Sources come from the CSV's source column, else (with `source_folders`) the top folder, else
    `default_source`. With `unlabeled` every file is stored without a label (the pool) and without a subset:
    it enters no split until someone labels it.
    """
    by_archive: dict[int | None, list[StagedFile]] = defaultdict(list)
    for staged in files:
        by_archive[staged.archive].append(staged)
    from_paths: dict[int, PathLabel] = {}
    for group in by_archive.values():
        inferred = infer_path_labels([staged.path for staged in group], source_folders=source_folders)
        from_paths.update({staged.key: inferred[staged.path] for staged in group})

    csv_result = (
        parse_label_csv(labels_csv, upload_paths={staged.path for staged in files}) if labels_csv is not None else None
    )
    plans = {}
    for staged in files:
        path_label = from_paths[staged.key]
        source = path_label.source or default_source
        if unlabeled:
            plans[staged.key] = LabelPlan(label=None, subset=None, source=source)
            continue
        if csv_result is not None:
            row = csv_result.labels.get(staged.path)
            label = row.label if row else None
            source = (row.source if row else None) or source
            problem = None if row else "no label: the labels CSV has no usable row for it"
        elif typed_label is not None:
            label, problem = typed_label, None
        else:
            label = path_label.label
            problem = None if label else (path_label.problem and f"no label: {path_label.problem}") or NO_LABEL
        plans[staged.key] = LabelPlan(label=label, subset=path_label.subset, source=source, problem=problem)
    return UploadLabels(plans=plans, csv_problems=csv_result.problems if csv_result else [])
