"""Server-side SVG charts: what the numbers next to the bars read."""

from __future__ import annotations

import re

from app.web.charts import PALETTE, bar_chart, heatmap, line_chart, stacked_bar_chart


def test_stacked_bar_totals_read_as_counts_or_one_decimal() -> None:
    percentages = stacked_bar_chart([("dev error %", [("wrong labels", 100 * 2 / 23), ("other", 0.0)])], title="t")
    assert ">8.7</text>" in percentages and "8.69" not in percentages
    counts = stacked_bar_chart([("train", [("phone", 14), ("web", 980_000)]), ("dev", [("phone", 23)])], title="t")
    assert ">980,014</text>" in counts and ">23</text>" in counts and "web: 980,000" in counts


def _numbers(pattern: str, svg: str) -> list[float]:
    return [float(value) for value in re.findall(pattern, svg)]


def test_learning_curve_legends_have_swatches_below_the_lines() -> None:
    """Issue 15.14: the names were drawn over the top right of the plot, where the curves run."""
    svg = line_chart([("train loss", [1.0, 0.5, 0.2]), ("dev loss", [1.1, 0.8, 0.7])], title="t", y_label="loss")
    items = re.findall(r'<g class="chart-legend-item"><rect x="[\d.]+" y="([\d.]+)"[^>]*fill="([^"]+)"', svg)
    assert [colour for _, colour in items] == [PALETTE[0], PALETTE[1]]
    lowest_line_point = max(_numbers(r",([\d.]+)", " ".join(re.findall(r'points="([^"]+)"', svg))))
    x_axis = max(_numbers(r'<line x1="[\d.]+" y1="([\d.]+)"', svg))
    assert all(float(y) > x_axis >= lowest_line_point for y, _ in items)
    assert "train loss" in svg and "dev loss" in svg


def test_the_confusion_matrix_names_its_axes() -> None:
    svg = heatmap(["cat", "dog"], [[5, 1], [2, 7]], title="t")
    assert ">predicted</text>" in svg and ">true label</text>" in svg


def test_bars_keep_their_pixel_size_and_take_each_category_colour() -> None:
    svg = bar_chart([("mislabeled", 40.0), ("blurry", 60.0)], title="t", colors={"mislabeled": "#dc2626"})
    assert 'class="chart-scroll"' in svg and re.search(r'<svg class="chart chart-fixed"[^>]* width="\d+"', svg)
    fills = re.findall(r'<rect [^>]*fill="([^"]+)"', svg)
    assert fills == ["#dc2626", PALETTE[0]]
