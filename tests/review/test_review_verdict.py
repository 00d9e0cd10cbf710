"""Issue 15 item 4: the "worth fixing labels" verdict on a model that has not learned, and estimated label
issue counts that say how they were computed and never read 0 beside flagged-looking images."""

from __future__ import annotations

import re

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.error_analysis import service as error_analysis
from app.ml.error_analysis import decide_label_fix
from app.models import Prediction, User
from tests.factories import RunFixture, make_run


def _tag_mislabeled(db: Session, fixture: RunFixture, reviewer: User, *, mislabeled: int, other: int) -> None:
    error_analysis.add_tag(db, dataset_id=fixture.dataset.id, name="blurry")
    sample = error_analysis.error_sample(db, run_id=fixture.run.id, subset="dev")
    errors = [item for item in sample.items if item.is_error]
    tagged = [(item, "mislabeled") for item in errors[:mislabeled]]
    tagged += [(item, "blurry") for item in errors[mislabeled : mislabeled + other]]
    for item, tag in tagged:
        error_analysis.set_annotation(
            db, run_id=fixture.run.id, image_id=item.image_id, tags=[tag], note=None, actor=reviewer
        )
    db.commit()


def test_large_avoidable_bias_means_fix_bias_first_whatever_the_mislabeled_share() -> None:
    decision = decide_label_fix(dev_error=0.67, mislabeled=10, reviewed=20, avoidable_bias=0.6)
    assert decision.bias_first and not decision.worth_fixing
    assert "bias first" in decision.explanation.lower() and "60.0%" in decision.explanation
    small = decide_label_fix(dev_error=0.1, mislabeled=10, reviewed=20, avoidable_bias=0.02)
    assert small.worth_fixing and not small.bias_first


def test_the_review_page_of_a_model_that_has_not_learned_says_fix_bias_first_and_why(db, as_viewer, people) -> None:
    fixture = make_run(db, sizes={"train": 30, "dev": 40, "test": 40}, error_rate=0.65, seed=5)
    fixture.run.metrics = {"train": {"error": 0.6}, "dev": {"error": 0.65}}
    gaps = {"avoidable_bias": 0.6, "variance": 0.05}
    fixture.run.diagnosis = {"human_error": 0.0, "gaps": gaps, "largest": "avoidable_bias"}
    db.commit()
    _tag_mislabeled(db, fixture, db.get(User, people["reviewer"].user_id), mislabeled=4, other=4)  # type: ignore[arg-type]
    page = as_viewer.get(f"/runs/{fixture.run.id}/review").text
    recommendation = re.search(r"data-recommendation>(.*?)</p>", page, re.S)
    assert recommendation
    assert "Worth fixing labels." not in recommendation.group(1)
    assert "Fix bias first" in recommendation.group(1)
    assert "avoidable bias" in page and "60.0%" in page


def test_estimated_issue_counts_say_how_and_never_read_0_beside_flagged_images(db, as_viewer) -> None:
    fixture = make_run(db, sizes={"dev": 40, "test": 40}, seed=8)
    label_index = {label.id: index for index, label in enumerate(fixture.labels)}
    obvious = fixture.images["dev"][0]
    for prediction in db.scalars(select(Prediction).where(Prediction.run_id == fixture.run.id)):
        given = label_index[prediction.label_id]
        probs = np.full(3, 0.01, dtype=np.float32)
        if prediction.image_id == obvious.id:  # labelled one class, confidently another: a mislabel
            probs[:] = 0.05
            probs[(given + 1) % 3] = 0.9
        else:
            probs[given] = 0.98
        prediction.probs = probs.tobytes()
        prediction.predicted_label_id = fixture.labels[int(probs.argmax())].id
        prediction.is_error = prediction.predicted_label_id != prediction.label_id
    db.commit()
    page = as_viewer.get(f"/runs/{fixture.run.id}/review").text
    dev = re.search(r'<div data-suspicion="dev">(.*?)</div>\s*</div>', page, re.S)
    assert dev
    heading = " ".join(re.search(r"<h3>(.*?)</h3>", dev.group(1), re.S).group(1).split())  # type: ignore[union-attr]
    assert not re.search(r">0</span> estimated label issues", heading), heading
    assert "the model disagrees with 1" in heading
    flagged_marks = dev.group(1).count('data-flag="flagged"')
    shown_count = int(re.search(r"data-flagged[^>]*>(\d+)<", dev.group(1)).group(1))  # type: ignore[union-attr]
    assert flagged_marks <= shown_count and (flagged_marks > 0) == (shown_count > 0)
    assert "confident learning" in page and "average" in page  # how the count was computed
