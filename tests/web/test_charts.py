"""Server-side SVG charts: what the numbers next to the bars read."""

from __future__ import annotations

from app.web.charts import stacked_bar_chart


def test_stacked_bar_totals_read_as_counts_or_one_decimal() -> None:
    percentages = stacked_bar_chart([("dev error %", [("wrong labels", 100 * 2 / 23), ("other", 0.0)])], title="t")
    assert ">8.7</text>" in percentages and "8.69" not in percentages
    counts = stacked_bar_chart([("train", [("phone", 14), ("web", 980_000)]), ("dev", [("phone", 23)])], title="t")
    assert ">980,014</text>" in counts and ">23</text>" in counts and "web: 980,000" in counts
