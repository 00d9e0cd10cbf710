"""Uploads: staging files (staging), receiving them resumably (receive), finishing, retrying and reporting
(lifecycle), conflicts (conflicts), discarding (discard) and the ingest job's database steps (ingest).

Services take keyword-only arguments, only flush (the caller's unit of work commits) and raise the domain
errors of ``app.core.errors`` with a message a person can act on. The names below are the domain's API.
"""

from app.uploads.service.conflicts import resolve_conflict
from app.uploads.service.discard import discard_upload, release_abandoned
from app.uploads.service.lifecycle import (
    INGEST_KIND,
    ReportItem,
    UploadReport,
    finish_upload,
    report_csv,
    retry_upload,
    upload_report,
    upload_status,
    uploads_of,
)
from app.uploads.service.receive import (
    CHUNKED_FILE_BYTES,
    MAX_CHUNK_BYTES,
    ChunkTarget,
    HaveAnswer,
    append_chunk,
    chunk_target,
    discard_parts,
    have,
    receive_chunk,
)
from app.uploads.service.staging import (
    StageCounts,
    StagedBlob,
    check_can_add_files,
    check_labels_csv,
    check_upload_fields,
    entry_name,
    file_count,
    get_upload,
    is_skipped,
    open_upload_of,
    stage_files,
    stage_local_path,
    start_upload,
    store_files,
)

__all__ = [
    "CHUNKED_FILE_BYTES",
    "INGEST_KIND",
    "MAX_CHUNK_BYTES",
    "ChunkTarget",
    "HaveAnswer",
    "ReportItem",
    "StageCounts",
    "StagedBlob",
    "UploadReport",
    "append_chunk",
    "check_can_add_files",
    "check_labels_csv",
    "check_upload_fields",
    "chunk_target",
    "discard_parts",
    "discard_upload",
    "entry_name",
    "file_count",
    "finish_upload",
    "get_upload",
    "have",
    "is_skipped",
    "open_upload_of",
    "receive_chunk",
    "release_abandoned",
    "report_csv",
    "resolve_conflict",
    "retry_upload",
    "stage_files",
    "stage_local_path",
    "start_upload",
    "store_files",
    "upload_report",
    "upload_status",
    "uploads_of",
]
