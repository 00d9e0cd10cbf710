"""The split form read in the user's words (issue 15.7): each problem belongs beside one field, and a page
with a bad field answers with the form as typed, not a flash of parameter names at the top."""

from __future__ import annotations

from app.splits.logic import FORM_DEFAULTS, read_split_form


def test_ratios_adding_to_1_3_are_explained_beside_the_ratios() -> None:
    values, problems = read_split_form({**FORM_DEFAULTS, "ratio_train": "0.9"})
    assert set(problems) == {"ratios"}
    assert "add up to 1.3" in problems["ratios"] and "must add up to 1" in problems["ratios"]
    assert "small_ratios" not in problems["ratios"]
    assert values["small_ratios"] is None


def test_each_unusable_field_gets_its_own_message_and_good_values_pass() -> None:
    form = {"seed": "-1", "dev_cap": "lots", "train_dev_fraction": "1", "near_duplicate_threshold": "17"}
    _values, problems = read_split_form(form)
    assert set(problems) == {"seed", "dev_cap", "train_dev_fraction", "near_duplicate_threshold"}
    assert "whole number" in problems["dev_cap"] and "below" not in problems["seed"]
    values, problems = read_split_form({**FORM_DEFAULTS, "target_source": " phone ", "use_imported": "on"})
    assert problems == {}
    assert values["small_ratios"] == (0.6, 0.2, 0.2) and values["target_source"] == "phone"
    assert values["use_imported"] is True and values["seed"] == 0


def test_the_page_keeps_the_form_as_typed_with_the_message_beside_the_field(as_reviewer, db) -> None:  # type: ignore[no-untyped-def]
    from tests.factories import make_run

    dataset_id = make_run(db, sizes={"dev": 6}, seed=3).dataset.id
    db.commit()
    form = {**FORM_DEFAULTS, "ratio_train": "0.9"}
    preview = as_reviewer.post(f"/datasets/{dataset_id}/splits/preview", data=form)
    assert preview.status_code == 200
    assert "data-preview-blocked" in preview.text and "add up to 1.3" in preview.text
    created = as_reviewer.post(f"/datasets/{dataset_id}/splits", data=form)
    assert created.status_code == 422
    assert 'name="ratio_train" type="number" step="0.05" min="0" max="1" value="0.9"' in created.text
    assert 'data-field-error="ratios" role="alert">Train, dev and test add up to 1.3' in created.text
    assert "small_ratios" not in created.text
