"""Colours for categories (error tags, chart series): plain data, so services may pick one without importing
the web layer."""

from __future__ import annotations

# Colours for new error categories: no reds or pinks, which read as "mislabeled" (#dc2626).
CATEGORY_PALETTE = ("#3b82f6", "#f59e0b", "#10b981", "#8b5cf6", "#14b8a6", "#84cc16", "#0ea5e9", "#a16207")
