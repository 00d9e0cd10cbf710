"""Embedding set states, as stored in embedding_sets.status."""

from __future__ import annotations

from enum import StrEnum


class EmbeddingSetStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    READY = "ready"
    FAILED = "failed"


UNFINISHED = frozenset({EmbeddingSetStatus.QUEUED, EmbeddingSetStatus.RUNNING})
