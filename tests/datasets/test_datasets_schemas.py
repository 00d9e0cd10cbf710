"""The image list reads its page by attribute: ``split_id`` is the page's split's id, or None without one."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from app.datasets.repository import ImageRow
from app.datasets.schemas import ImagePageOut
from app.datasets.service import ImagePage


def _answer(page: ImagePage) -> dict[str, Any]:
    dumped = ImagePageOut.model_validate(page).model_dump(mode="json", by_alias=True)
    assert ImagePageOut.model_validate(dumped).model_dump(mode="json") == dumped  # what FastAPI does
    return dumped


def test_the_image_page_names_its_split_and_lists_its_rows() -> None:
    row = ImageRow(
        id=3,
        filename="a.jpg",
        label="cat",
        source="web",
        sha256="f" * 64,
        thumb_sha256=None,
        width=8,
        height=6,
        imported_subset=None,
    )
    split = SimpleNamespace(id=9)
    body = _answer(ImagePage(total=1, items=[row], limit=60, offset=0, split=split))  # type: ignore[arg-type]
    assert body == {
        "total": 1,
        "limit": 60,
        "offset": 0,
        "split_id": 9,
        "items": [
            {
                "id": 3,
                "filename": "a.jpg",
                "label": "cat",
                "source": "web",
                "sha256": "f" * 64,
                "width": 8,
                "height": 6,
                "imported_subset": None,
                "score": None,  # set only with a data-health issue filter
            }
        ],
    }
    assert _answer(ImagePage(total=0, items=[], limit=60, offset=0, split=None))["split_id"] is None
