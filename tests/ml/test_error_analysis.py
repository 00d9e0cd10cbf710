from __future__ import annotations

import csv
import io
import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.ml.error_analysis import (
    CEILING_CSV_HEADER,
    LABEL_SHARE_WORTH_FIXING,
    Z_95,
    ceiling_csv_rows,
    ceiling_table,
    decide_label_fix,
    describe_ceiling,
    neutralise_csv_cell,
    sample_errors,
    wilson_interval,
)


def make_predictions(count: int, error_rate: float, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Scattered, unsorted image ids with 3 classes and about ``error_rate`` of them misclassified."""
    rng = np.random.default_rng(seed)
    image_ids = rng.choice(np.arange(1000, 1000 + 50 * count), size=count, replace=False)
    labels = rng.integers(0, 3, size=count)
    wrong = rng.random(count) < error_rate
    predictions = np.where(wrong, (labels + rng.integers(1, 3, size=count)) % 3, labels)
    return image_ids, labels, predictions


# --- sampling --------------------------------------------------------------------------------------------


def test_sample_is_uniform_over_errors_and_never_holds_correct_examples() -> None:
    image_ids, labels, predictions = make_predictions(60, error_rate=0.4, seed=1)
    error_ids = set(image_ids[labels != predictions].tolist())
    draws, size = 3000, 5
    inclusions = dict.fromkeys(error_ids, 0)
    first_position = dict.fromkeys(error_ids, 0)
    for seed in range(draws):
        sample = sample_errors(image_ids=image_ids, labels=labels, predictions=predictions, seed=seed, size=size)
        assert set(sample.image_ids) <= error_ids
        assert all(sample.is_error)
        for image_id in sample.image_ids:
            inclusions[image_id] += 1
        first_position[sample.image_ids[0]] += 1

    # Each error is in a sample with probability size / errors. Pearson's statistic over the errors has
    # expectation below len(errors) - 1; 3x that is far beyond anything a uniform sampler produces, and a
    # sampler favouring low ids, early rows or the first errors blows well past it. Seeds are fixed.
    expected = draws * size / len(error_ids)
    statistic = sum((count - expected) ** 2 / expected for count in inclusions.values())
    assert statistic < 3 * (len(error_ids) - 1)
    # The grid order is random too: every error is about as likely to come first.
    expected_first = draws / len(error_ids)
    first_statistic = sum((count - expected_first) ** 2 / expected_first for count in first_position.values())
    assert first_statistic < 3 * (len(error_ids) - 1)


def test_sample_is_reproducible_for_a_seed_and_varies_across_seeds() -> None:
    image_ids, labels, predictions = make_predictions(500, error_rate=0.3, seed=2)
    first = sample_errors(image_ids=image_ids, labels=labels, predictions=predictions, seed=7, size=20)
    again = sample_errors(image_ids=image_ids, labels=labels, predictions=predictions, seed=7, size=20)
    other = sample_errors(image_ids=image_ids, labels=labels, predictions=predictions, seed=8, size=20)
    assert first == again
    assert first.image_ids != other.image_ids


def test_sample_does_not_depend_on_row_order() -> None:
    image_ids, labels, predictions = make_predictions(300, error_rate=0.3, seed=3)
    shuffled = np.random.default_rng(99).permutation(image_ids.size)
    for include_correct in (0, 4):
        original = sample_errors(
            image_ids=image_ids,
            labels=labels,
            predictions=predictions,
            seed=11,
            size=15,
            include_correct=include_correct,
        )
        reordered = sample_errors(
            image_ids=image_ids[shuffled],
            labels=labels[shuffled],
            predictions=predictions[shuffled],
            seed=11,
            size=15,
            include_correct=include_correct,
        )
        assert original == reordered


def test_sample_counts_and_default_size() -> None:
    image_ids, labels, predictions = make_predictions(1000, error_rate=0.25, seed=4)
    total = int((labels != predictions).sum())
    sample = sample_errors(image_ids=image_ids, labels=labels, predictions=predictions, seed=0)
    assert sample.total_errors == total
    assert sample.sampled_errors == len(sample.image_ids) == 100
    assert len(set(sample.image_ids)) == 100
    assert sample.sampled_correct == 0


def test_sample_takes_every_error_when_there_are_fewer_than_asked() -> None:
    image_ids, labels, predictions = make_predictions(40, error_rate=0.2, seed=5)
    sample = sample_errors(image_ids=image_ids, labels=labels, predictions=predictions, seed=0, size=100)
    assert sorted(sample.image_ids) == sorted(image_ids[labels != predictions].tolist())
    assert sample.sampled_errors == sample.total_errors == len(sample.image_ids)


def test_correct_examples_only_on_request_tagged_and_without_changing_the_errors() -> None:
    image_ids, labels, predictions = make_predictions(400, error_rate=0.3, seed=6)
    correct_ids = set(image_ids[labels == predictions].tolist())
    plain = sample_errors(image_ids=image_ids, labels=labels, predictions=predictions, seed=3, size=10)
    mixed = sample_errors(
        image_ids=image_ids, labels=labels, predictions=predictions, seed=3, size=10, include_correct=4
    )
    assert not correct_ids & set(plain.image_ids)
    assert (mixed.sampled_errors, mixed.sampled_correct, len(mixed.image_ids)) == (10, 4, 14)
    for image_id, is_error in zip(mixed.image_ids, mixed.is_error, strict=True):
        assert (image_id in correct_ids) is not is_error
    errors_in_mixed = [i for i, is_error in zip(mixed.image_ids, mixed.is_error, strict=True) if is_error]
    assert errors_in_mixed == list(plain.image_ids)
    assert mixed.total_errors == plain.total_errors


def test_correct_examples_are_capped_by_the_pool() -> None:
    sample = sample_errors(image_ids=[1, 2, 3], labels=[0, 1, 1], predictions=[0, 0, 1], seed=0, include_correct=10)
    assert sample.sampled_correct == 2
    assert sorted(sample.image_ids) == [1, 2, 3]
    assert dict(zip(sample.image_ids, sample.is_error, strict=True)) == {1: False, 2: True, 3: False}


@pytest.mark.parametrize(("true_label", "predicted_label"), [(0, None), (None, 2), (1, 0), (2, 2)], ids=str)
def test_filters_restrict_the_pool_and_the_total(true_label: int | None, predicted_label: int | None) -> None:
    image_ids, labels, predictions = make_predictions(600, error_rate=0.4, seed=7)
    keep = labels != predictions
    if true_label is not None:
        keep &= labels == true_label
    if predicted_label is not None:
        keep &= predictions == predicted_label
    sample = sample_errors(
        image_ids=image_ids,
        labels=labels,
        predictions=predictions,
        seed=1,
        size=1000,
        true_label=true_label,
        predicted_label=predicted_label,
    )
    assert sample.total_errors == int(keep.sum())
    assert sorted(sample.image_ids) == sorted(image_ids[keep].tolist())


def test_filters_also_apply_to_correct_examples() -> None:
    image_ids, labels, predictions = make_predictions(300, error_rate=0.3, seed=8)
    sample = sample_errors(
        image_ids=image_ids, labels=labels, predictions=predictions, seed=2, true_label=1, include_correct=5
    )
    label_of = dict(zip(image_ids.tolist(), labels.tolist(), strict=True))
    assert sample.sampled_correct == 5
    assert {label_of[image_id] for image_id in sample.image_ids} == {1}


def test_empty_input_gives_an_empty_sample() -> None:
    sample = sample_errors(image_ids=[], labels=[], predictions=[], seed=0, include_correct=3)
    assert (sample.image_ids, sample.total_errors, sample.sampled_errors, sample.sampled_correct) == (
        (),
        0,
        0,
        0,
    )


@pytest.mark.parametrize(
    "arguments",
    [
        {"image_ids": [1, 1], "labels": [0, 1], "predictions": [1, 0]},
        {"image_ids": [1, 2], "labels": [0], "predictions": [1, 0]},
        {"image_ids": [1, 2], "labels": [0, 1], "predictions": [1, 0], "size": -1},
        {"image_ids": [1, 2], "labels": [0, 1], "predictions": [1, 0], "include_correct": -1},
    ],
)
def test_sample_rejects_bad_input(arguments: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        sample_errors(seed=0, **arguments)  # type: ignore[arg-type]


# --- Wilson interval -------------------------------------------------------------------------------------


def test_wilson_matches_published_values() -> None:
    low, high = wilson_interval(10, 100)
    assert low == pytest.approx(0.0552, abs=5e-5)
    assert high == pytest.approx(0.1744, abs=5e-5)
    # Newcombe (1998), Table I: 81 of 263 -> 0.2553 to 0.3662.
    low, high = wilson_interval(81, 263)
    assert (low, high) == (pytest.approx(0.2553, abs=5e-5), pytest.approx(0.3662, abs=5e-5))


def test_wilson_at_the_edges() -> None:
    assert wilson_interval(0, 0) == (0.0, 1.0)
    low, high = wilson_interval(0, 20)
    # For k = 0 the upper bound has the closed form z^2 / (n + z^2).
    assert low == 0.0
    assert high == pytest.approx(Z_95**2 / (20 + Z_95**2))
    low, high = wilson_interval(20, 20)
    assert high == 1.0
    assert low == pytest.approx(1 - Z_95**2 / (20 + Z_95**2))


@given(st.integers(min_value=1, max_value=10_000).flatmap(lambda n: st.tuples(st.integers(0, n), st.just(n))))
def test_wilson_contains_the_estimate_and_is_symmetric(pair: tuple[int, int]) -> None:
    successes, trials = pair
    low, high = wilson_interval(successes, trials)
    assert 0.0 <= low <= successes / trials <= high <= 1.0
    mirrored_low, mirrored_high = wilson_interval(trials - successes, trials)
    assert low == pytest.approx(1 - mirrored_high, abs=1e-12)
    assert high == pytest.approx(1 - mirrored_low, abs=1e-12)


@pytest.mark.parametrize(("successes", "trials"), [(-1, 10), (11, 10), (0, -1)])
def test_wilson_rejects_impossible_counts(successes: int, trials: int) -> None:
    with pytest.raises(ValueError):
        wilson_interval(successes, trials)


# --- ceiling table ---------------------------------------------------------------------------------------

# Worked example, by hand. Dev error 10%, 250 dev errors, 100 of them reviewed:
#   great cats  61 -> share 0.61, estimated 0.61 * 250 = 152.5 errors, ceiling 0.10 * 0.39 = 0.039
#   blurry      43 -> share 0.43, estimated 107.5, ceiling 0.10 * 0.57 = 0.057
#   mislabeled  12 -> share 0.12, estimated  30.0, ceiling 0.10 * 0.88 = 0.088
#   filter       8 -> share 0.08, estimated  20.0, ceiling 0.10 * 0.92 = 0.092
#   dog          8 -> same share as filter; the tie goes by name, so dog comes before filter
# Shares add up to more than 1 because an example can carry several tags.
WORKED_COUNTS = {"mislabeled": 12, "dog": 8, "blurry": 43, "great cats": 61, "filter": 8}
WORKED_EXPECTED = [
    ("great cats", 61, 0.61, 152.5, 0.039),
    ("blurry", 43, 0.43, 107.5, 0.057),
    ("mislabeled", 12, 0.12, 30.0, 0.088),
    ("dog", 8, 0.08, 20.0, 0.092),
    ("filter", 8, 0.08, 20.0, 0.092),
]


def test_ceiling_table_worked_example() -> None:
    rows = ceiling_table(subset_error=0.10, total_errors=250, reviewed=100, tag_counts=WORKED_COUNTS)
    assert [(r.tag, r.count) for r in rows] == [(tag, count) for tag, count, *_ in WORKED_EXPECTED]
    for row, (_, _, share, estimated, ceiling) in zip(rows, WORKED_EXPECTED, strict=True):
        assert row.share == pytest.approx(share)
        assert row.estimated_errors == pytest.approx(estimated)
        assert row.ceiling_error == pytest.approx(ceiling)
        assert (row.share_low, row.share_high) == wilson_interval(row.count, 100)
    great_cats = rows[0]
    assert describe_ceiling(great_cats, subset_error=0.10) == (
        "Fixing great cats completely brings dev error from 10.0% to at best 3.9%."
    )


def test_ceiling_table_without_reviews_leaves_the_error_where_it_is() -> None:
    rows = ceiling_table(subset_error=0.2, total_errors=50, reviewed=0, tag_counts={"blurry": 0})
    assert len(rows) == 1
    assert (rows[0].share, rows[0].estimated_errors, rows[0].ceiling_error) == (0.0, 0.0, 0.2)
    assert (rows[0].share_low, rows[0].share_high) == (0.0, 1.0)


@pytest.mark.parametrize(
    "arguments",
    [
        {"subset_error": 1.5, "total_errors": 10, "reviewed": 5, "tag_counts": {"a": 1}},
        {"subset_error": 0.1, "total_errors": -1, "reviewed": 5, "tag_counts": {"a": 1}},
        {"subset_error": 0.1, "total_errors": 10, "reviewed": 5, "tag_counts": {"a": 6}},
        {"subset_error": 0.1, "total_errors": 10, "reviewed": 5, "tag_counts": {"a": -1}},
    ],
)
def test_ceiling_table_rejects_impossible_input(arguments: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        ceiling_table(**arguments)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('=HYPERLINK("http://x")', '\'=HYPERLINK("http://x")'),
        ("+1", "'+1"),
        ("-2+3", "'-2+3"),
        ("@SUM(A1)", "'@SUM(A1)"),
        ("\tcmd", "'\tcmd"),
        ("blurry", "blurry"),
        ("a=b", "a=b"),
        ("", ""),
    ],
)
def test_neutralise_csv_cell(text: str, expected: str) -> None:
    assert neutralise_csv_cell(text) == expected


def test_ceiling_csv_rows_neutralise_tags_and_round_trip() -> None:
    counts = {"=cmd|' /C calc'!A0": 5, "-night": 3, "blurry, dark": 2}
    rows = ceiling_table(subset_error=0.1, total_errors=40, reviewed=10, tag_counts=counts)
    buffer = io.StringIO()
    csv.writer(buffer).writerows(ceiling_csv_rows(rows))
    parsed = list(csv.reader(io.StringIO(buffer.getvalue())))
    assert parsed[0] == list(CEILING_CSV_HEADER)
    assert [line[0] for line in parsed[1:]] == ["'=cmd|' /C calc'!A0", "'-night", "blurry, dark"]
    first = dict(zip(parsed[0], parsed[1], strict=True))
    assert first["count"] == "5"
    assert float(first["share"]) == 0.5
    assert float(first["estimated_errors"]) == 20.0
    assert float(first["ceiling_error"]) == pytest.approx(0.05)
    assert not any(cell.startswith(("=", "+", "-", "@")) for line in parsed for cell in line)


# --- is it worth fixing labels? --------------------------------------------------------------------------


def test_few_label_errors_against_a_high_dev_error_are_not_worth_fixing() -> None:
    # 10% dev error, 6 of 100 reviewed errors mislabeled: labels cause 0.6%, other causes 9.4%.
    decision = decide_label_fix(dev_error=0.10, mislabeled=6, reviewed=100)
    assert decision.label_error == pytest.approx(0.006)
    assert decision.other_error == pytest.approx(0.094)
    assert not decision.worth_fixing
    assert decision.settled
    assert "0.60%" in decision.explanation and "9.4%" in decision.explanation
    assert "Not worth it" in decision.explanation
    assert f"at least {LABEL_SHARE_WORTH_FIXING:.0%}" in decision.explanation


def test_label_errors_that_are_a_large_share_of_a_low_dev_error_are_worth_fixing() -> None:
    # 2% dev error, 40 of 100 mislabeled: labels cause 0.8%, other causes 1.2%.
    decision = decide_label_fix(dev_error=0.02, mislabeled=40, reviewed=100)
    assert decision.label_error == pytest.approx(0.008)
    assert decision.other_error == pytest.approx(0.012)
    assert decision.worth_fixing
    assert decision.label_error_low < decision.label_error < decision.label_error_high
    assert "Worth fixing" in decision.explanation and "0.80%" in decision.explanation


def test_runs_closer_than_the_label_error_rate_make_fixing_worth_it() -> None:
    close = decide_label_fix(dev_error=0.10, mislabeled=6, reviewed=100, smallest_run_gap=0.002)
    far = decide_label_fix(dev_error=0.10, mislabeled=6, reviewed=100, smallest_run_gap=0.02)
    assert close.worth_fixing and not far.worth_fixing
    assert "0.20%" in close.explanation and "cannot rank them" in close.explanation


def test_a_verdict_that_could_flip_within_the_interval_is_not_settled() -> None:
    borderline = decide_label_fix(dev_error=0.05, mislabeled=30, reviewed=100)
    clear = decide_label_fix(dev_error=0.05, mislabeled=600, reviewed=1000)
    assert borderline.worth_fixing and not borderline.settled
    assert "review more errors" in borderline.explanation
    assert clear.worth_fixing and clear.settled
    assert "review more errors" not in clear.explanation


def test_no_reviews_means_no_verdict() -> None:
    decision = decide_label_fix(dev_error=0.1, mislabeled=0, reviewed=0)
    assert not decision.worth_fixing and not decision.settled
    assert (decision.share_low, decision.share_high) == (0.0, 1.0)
    assert "No dev errors have been reviewed" in decision.explanation


@pytest.mark.parametrize(
    "arguments",
    [
        {"dev_error": -0.1, "mislabeled": 1, "reviewed": 10},
        {"dev_error": 0.1, "mislabeled": 11, "reviewed": 10},
        {"dev_error": 0.1, "mislabeled": 1, "reviewed": 10, "smallest_run_gap": -0.01},
    ],
)
def test_decision_rejects_impossible_input(arguments: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        decide_label_fix(**arguments)  # type: ignore[arg-type]


@given(
    dev_error=st.floats(0, 1),
    counts=st.integers(1, 500).flatmap(lambda n: st.tuples(st.integers(0, n), st.just(n))),
)
def test_decision_numbers_add_up(dev_error: float, counts: tuple[int, int]) -> None:
    mislabeled, reviewed = counts
    decision = decide_label_fix(dev_error=dev_error, mislabeled=mislabeled, reviewed=reviewed)
    assert math.isclose(decision.label_error + decision.other_error, dev_error, abs_tol=1e-12)
    assert decision.label_error_low <= decision.label_error <= decision.label_error_high + 1e-15
    assert decision.worth_fixing == (mislabeled / reviewed >= LABEL_SHARE_WORTH_FIXING)
