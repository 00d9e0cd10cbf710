"""HTTP routes (pages and JSON API) for splits; thin: parse, call the service, render."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter()
