"""Pure rules of ingesting an upload: decoding one staged file (validation, thumbnail, statistics, in a decoder
process), the labels of a whole upload, and the classifier that decides what becomes of each file of a batch
(rejected, duplicate, conflict or new image, and why)."""

from __future__ import annotations

import pickle
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from PIL import Image as PILImage

from app.datasets.logic import CsvProblem, LabelCsvResult, PathLabel, Subset, infer_path_labels, parse_label_csv
from app.ml.image_stats import ImageStats, measure
from app.ml.images import ImageLimits, Rejection, dhash64, encode_thumbnail, inner_dhash64, inspect_image, shrink
from app.uploads.states import EntryOutcome

# ---- decoding one staged file ---------------------------------------------------------------------------

_EXIF_ORIENTATION = 0x0112


@dataclass(frozen=True)
class DecodedImage:
    """What ingest keeps of a valid image: its facts, a JPEG thumbnail, the thumbnail's difference hashes (whole
    and inner view) and the statistics data health reads."""

    width: int
    height: int
    format: str
    notes: tuple[str, ...]
    thumbnail: bytes
    dhash: int
    inner_dhash: int | None = None
    stats: ImageStats | None = None


def decode_for_ingest(
    path: str, *, filename: str, limits: ImageLimits, thumbnail_side: int
) -> DecodedImage | Rejection:
    """Validate the image file at `path` (fully decoded), make its thumbnail and measure its statistics, all from
    this one decode; runs in a decoder process."""
    # Everything below works on the thumbnail, so a JPEG decodes at the smallest scale that still covers it.
    inspected = inspect_image(Path(path), filename=filename, limits=limits, needed_side=thumbnail_side)
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
        inner_dhash=inner_dhash64(thumbnail),
        # Measured on the thumbnail: the statistics work at a smaller side anyway, and it is already in memory.
        stats=measure(thumbnail),
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


# ---- the labels of a whole upload ----------------------------------------------------------------------


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
    `default_source`. With `unlabeled` every file is stored without a label (the pool) and without a subset: it
    enters no split until someone labels it.
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
    plans = {
        staged.key: _plan_one(
            staged.path, from_paths[staged.key], csv_result, typed_label=typed_label, default_source=default_source
        )
        if not unlabeled
        else LabelPlan(label=None, subset=None, source=from_paths[staged.key].source or default_source)
        for staged in files
    }
    return UploadLabels(plans=plans, csv_problems=csv_result.problems if csv_result else [])


def _plan_one(
    path: str, path_label: PathLabel, csv_result: LabelCsvResult | None, *, typed_label: str | None, default_source: str
) -> LabelPlan:
    source = path_label.source or default_source
    if csv_result is not None:
        row = csv_result.labels.get(path)
        label = row.label if row else None
        source = (row.source if row else None) or source
        problem = None if row else "no label: the labels CSV has no usable row for it"
    elif typed_label is not None:
        label, problem = typed_label, None
    else:
        label = path_label.label
        problem = None if label else (path_label.problem and f"no label: {path_label.problem}") or NO_LABEL
    return LabelPlan(label=label, subset=path_label.subset, source=source, problem=problem)


# ---- classifying a batch of decoded files ---------------------------------------------------------------


@dataclass(frozen=True)
class BatchFile:
    """A staged file of the batch with its label plan and what its decode said."""

    entry_id: int
    name: str
    sha256: str
    plan: LabelPlan
    result: DecodedImage | Rejection | None  # None: not decoded (e.g. its blob was missing)
    thumb_sha256: str | None = None


@dataclass(frozen=True)
class KnownImage:
    """An image of the dataset with the same content as a file of the batch."""

    image_id: int
    label: str  # the name of its label
    filename: str


@dataclass(frozen=True)
class Rejected:
    entry_id: int
    reason: str
    label: str | None


@dataclass(frozen=True)
class NewImage:
    file: BatchFile
    decoded: DecodedImage
    label: str | None  # the label it gets (merges followed), as `plan.label` names may be merged ones; None: pool

    @property
    def notes(self) -> str | None:
        return "; ".join(self.decoded.notes) or None


@dataclass(frozen=True)
class Match:
    """A file whose content is already an image: a duplicate when the labels agree, else a conflict."""

    entry_id: int
    sha256: str
    label: str | None  # what this file says (None: an unlabeled upload's file)
    same_as: KnownImage | None  # None: a file earlier in this batch, whose image id comes with the insert
    same_as_name: str
    same_as_label: str

    @property
    def outcome(self) -> EntryOutcome:
        # An unlabeled copy of any image is a duplicate; a labelled copy of an unlabeled one ("") a conflict.
        return EntryOutcome.DUPLICATE if self.label in (None, self.same_as_label) else EntryOutcome.CONFLICT

    def reason(self, image_id: int) -> str:
        same = f"same content as {self.same_as_name} (image {image_id})"
        if self.outcome == EntryOutcome.DUPLICATE:
            return same
        stored = f"labelled {self.same_as_label!r}" if self.same_as_label else "unlabeled"
        return f"{same}, which is {stored}; this file says {self.label!r}"


@dataclass(frozen=True)
class BatchPlan:
    rejected: list[Rejected] = field(default_factory=list)
    new: list[NewImage] = field(default_factory=list)
    matches: list[Match] = field(default_factory=list)

    def count(self, outcome: EntryOutcome) -> int:
        return sum(1 for match in self.matches if match.outcome == outcome)


def rejection(file: BatchFile) -> str | None:
    """Why a file cannot become an image (its content first, then its label), or None."""
    decoded = file.result
    # A plan without a label always names the problem, except an unlabeled upload's (stored in the pool).
    if file.plan.problem is None and isinstance(decoded, DecodedImage):
        return None
    content = decoded.reason if isinstance(decoded, Rejection) else None
    return "; ".join(reason for reason in (content, file.plan.problem) if reason) or "could not be read"


def labels_needed(files: Sequence[BatchFile]) -> list[str]:
    """The label names the batch's acceptable files give, in the order they first appear (labels that do not
    exist yet are created in this order)."""
    names: dict[str, None] = {}
    for file in files:
        if rejection(file) is None and file.plan.label is not None:
            names.setdefault(file.plan.label, None)
    return list(names)


def classify_batch(
    files: Sequence[BatchFile], *, labels: Mapping[str, str], stored: Mapping[str, KnownImage], unlabeled: bool = False
) -> BatchPlan:
    """Decide what becomes of each file: rejected (and why), a duplicate or a conflict of an image already in
    the dataset or earlier in the batch, or a new image.

    `labels` maps each name of `labels_needed` to the label it stands for (merges followed); `stored` the
    sha256 of contents already in the dataset to their image.
    """
    plan = BatchPlan()
    first_in_batch: dict[str, NewImage] = {}
    for file in files:
        reason = rejection(file)
        no_label = file.plan.label is None and not unlabeled  # an unlabeled upload keeps it in the pool
        if reason is not None or not isinstance(file.result, DecodedImage) or no_label:
            plan.rejected.append(Rejected(file.entry_id, reason or "could not be read", file.plan.label))
            continue
        label = labels[file.plan.label] if file.plan.label is not None else None
        known, earlier = stored.get(file.sha256), first_in_batch.get(file.sha256)
        if known is not None:
            plan.matches.append(Match(file.entry_id, file.sha256, label, known, known.filename, known.label))
        elif earlier is not None:
            same_label = earlier.label or ""  # "": that earlier file is going into the pool
            plan.matches.append(Match(file.entry_id, file.sha256, label, None, earlier.file.name, same_label))
        else:
            new = NewImage(file, file.result, label)
            plan.new.append(new)
            first_in_batch[file.sha256] = new
    return plan


def entry_updates(plan: BatchPlan, new_ids: Mapping[str, int]) -> list[dict[str, Any]]:
    """The upload entries' new columns (bulk-update rows by id), once the new images have their ids."""
    updates: list[dict[str, Any]] = [
        {"id": r.entry_id, "outcome": EntryOutcome.REJECTED, "reason": r.reason, "label": r.label}
        for r in plan.rejected
    ]
    updates += [
        {
            "id": new.file.entry_id,
            "outcome": EntryOutcome.ACCEPTED,
            "reason": new.notes,
            "image_id": new_ids[new.file.sha256],
            "label": new.file.plan.label,
        }
        for new in plan.new
    ]
    for match in plan.matches:
        image_id = match.same_as.image_id if match.same_as is not None else new_ids[match.sha256]
        updates.append(
            {
                "id": match.entry_id,
                "outcome": match.outcome,
                "reason": match.reason(image_id),
                "image_id": image_id,
                "label": match.label,
            }
        )
    return updates
