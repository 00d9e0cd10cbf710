"""get_or_404 over the real schema: found, missing, and scoped to another dataset."""

from __future__ import annotations

import pytest
from sqlalchemy.orm import Session

from app.core.errors import NotFound
from app.core.lookup import get_or_404
from app.models import Dataset, Label


def test_found_and_missing(db: Session) -> None:
    dataset = Dataset(name="lookup-a")
    db.add(dataset)
    db.flush()
    assert get_or_404(db, Dataset, dataset.id) is dataset
    with pytest.raises(NotFound, match=r"^dataset 999999 does not exist$"):
        get_or_404(db, Dataset, 999999)


def test_scope_hides_rows_of_another_dataset(db: Session) -> None:
    first, second = Dataset(name="lookup-b"), Dataset(name="lookup-c")
    db.add_all([first, second])
    db.flush()
    label = Label(dataset_id=first.id, name="cat")
    db.add(label)
    db.flush()
    assert get_or_404(db, Label, label.id, dataset_id=first.id) is label
    with pytest.raises(NotFound, match=rf"label {label.id} does not exist in dataset {second.id}"):
        get_or_404(db, Label, label.id, dataset_id=second.id)
