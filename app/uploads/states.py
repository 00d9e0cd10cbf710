"""The states an upload goes through and what becomes of each of its files (stored as these strings)."""

from __future__ import annotations

from enum import StrEnum


class UploadStatus(StrEnum):
    OPEN = "open"  # files are still being added
    QUEUED = "queued"  # finished; its ingest job waits
    INGESTING = "ingesting"
    DONE = "done"
    # Not stored: how an upload whose ingest job ended without finishing it reads (see upload_status).
    FAILED = "failed"
    CANCELLED = "cancelled"
    # A discarded upload keeps its row (without entries) so that its id is never handed out again: a client
    # still holding the id gets 404, never somebody else's new upload.
    DISCARDED = "discarded"


UNFINISHED = (UploadStatus.OPEN, UploadStatus.QUEUED, UploadStatus.INGESTING)
ENDED = (UploadStatus.DONE, UploadStatus.FAILED, UploadStatus.CANCELLED)


class EntryOutcome(StrEnum):
    STAGED = "staged"  # stored, not ingested yet
    ACCEPTED = "accepted"  # became a new image
    DUPLICATE = "duplicate"  # same content and label as an image already there
    CONFLICT = "conflict"  # same content, another label: for a person to settle
    RESOLVED = "resolved"  # a conflict settled
    REJECTED = "rejected"
    EXPANDED = "expanded"  # a zip whose members were staged as entries of their own
