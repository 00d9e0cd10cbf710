from __future__ import annotations

import numpy as np
from sqlalchemy import func, select

from app.models import Prediction
from tests.factories import make_run


def test_make_run_builds_consistent_predictions(db) -> None:
    fixture = make_run(db, sizes={"dev": 200}, error_rate=0.25, seed=3)
    rows = db.scalars(select(Prediction).where(Prediction.run_id == fixture.run.id)).all()
    assert len(rows) == 200
    for row in rows:
        probs = np.frombuffer(row.probs, dtype=np.float32)
        assert abs(float(probs.sum()) - 1) < 1e-5
        assert row.is_error == (row.predicted_label_id != row.label_id)
    errors = db.scalar(select(func.count()).where(Prediction.run_id == fixture.run.id, Prediction.is_error))
    assert 30 <= (errors or 0) <= 70
