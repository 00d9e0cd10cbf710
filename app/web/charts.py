"""Small server-side SVG charts: no JavaScript, no inline styles (the CSP allows neither), labels escaped."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from markupsafe import Markup, escape

from app.core.palette import CATEGORY_PALETTE as CATEGORY_PALETTE

PALETTE = ("#3b82f6", "#f59e0b", "#10b981", "#ef4444", "#8b5cf6", "#14b8a6", "#ec4899", "#84cc16")
LEGEND_ROW = 18
CHAR_PX = 6.5  # about the width of one character of an 11-12 px label, to lay out legends and cut long names


def _short(label: str, room_px: float) -> str:
    """A label cut to the room it has (the full text stays in the element's <title>)."""
    fits = max(int(room_px / CHAR_PX), 4)
    return label if len(label) <= fits else label[: fits - 1] + "…"


def _svg(width: int, height: int, body: str, title: str, *, fixed: bool = False) -> Markup:
    """``fixed`` draws at its natural size (labels stay at their CSS pixel size) and scrolls sideways where the
    page is narrower, instead of shrinking with the page."""
    size = f'width="{width}" height="{height}"' if fixed else 'width="100%"'
    svg = (
        f'<svg class="chart{" chart-fixed" if fixed else ""}" viewBox="0 0 {width} {height}" {size} role="img" '
        f'aria-label="{escape(title)}" xmlns="http://www.w3.org/2000/svg"><title>{escape(title)}</title>'
        f"{body}</svg>"
    )
    return Markup(f'<div class="chart-scroll">{svg}</div>' if fixed else svg)


def bar_chart(
    items: Sequence[tuple[str, float]],
    *,
    title: str,
    value_format: str = "{:g}",
    colors: Mapping[str, str] | None = None,
) -> Markup:
    """Horizontal bars, one row per item (class balance, error categories: each in its own colour)."""
    row, label_w, bar_w = 24, 150, 300
    top = max((v for _, v in items), default=0) or 1
    parts = []
    for i, (label, value) in enumerate(items):
        y = i * row
        width = bar_w * value / top
        colour = (colors or {}).get(label, PALETTE[0])
        parts.append(
            f'<text x="{label_w - 6}" y="{y + 16}" text-anchor="end" class="chart-label chart-bar-label">'
            f"<title>{escape(label)}</title>{escape(_short(label, label_w - 10))}</text>"
            f'<rect x="{label_w}" y="{y + 3}" width="{width:.1f}" height="{row - 6}" fill="{colour}"/>'
            f'<text x="{label_w + width + 4:.1f}" y="{y + 16}" class="chart-label">'
            f"{escape(value_format.format(value))}</text>"
        )
    return _svg(label_w + bar_w + 70, max(row * len(items), row), "".join(parts), title, fixed=True)


def _legend(names: Sequence[str], *, x0: float, y0: float, width: float) -> tuple[list[str], float]:
    """Colour swatches with names in rows under a chart (never over its lines); returns the parts and height."""
    parts, x, y = [], x0, y0
    for k, name in enumerate(names):
        item_w = 14 + CHAR_PX * len(name) + 16
        if x > x0 and x + item_w > width:
            x, y = x0, y + LEGEND_ROW
        colour = PALETTE[k % len(PALETTE)]
        parts.append(
            f'<g class="chart-legend-item"><rect x="{x:.1f}" y="{y}" width="10" height="10" fill="{colour}"/>'
            f'<text x="{x + 14:.1f}" y="{y + 9}" class="chart-label">{escape(name)}</text></g>'
        )
        x += item_w
    return parts, y - y0 + LEGEND_ROW


def _number(value: float) -> str:
    """Counts whole with thousands separators (980,000, not 980000 or 1e+06); other values (percentages such as
    8.69565) with one decimal."""
    return f"{int(value):,}" if float(value).is_integer() else f"{value:.1f}"


def stacked_bar_chart(rows: Sequence[tuple[str, Sequence[tuple[str, float]]]], *, title: str) -> Markup:
    """One bar per row, split into coloured segments (split composition: subset x source)."""
    row_h, label_w, bar_w = 28, 90, 420
    keys: list[str] = []
    for _, segments in rows:
        for key, _value in segments:
            if key not in keys:
                keys.append(key)
    top = max((sum(v for _, v in segs) for _, segs in rows), default=0) or 1
    parts = []
    for i, (label, segments) in enumerate(rows):
        y, x = i * row_h, float(label_w)
        parts.append(
            f'<text x="{label_w - 6}" y="{y + 18}" text-anchor="end" class="chart-label">{escape(label)}</text>'
        )
        for key, value in segments:
            width = bar_w * value / top
            colour = PALETTE[keys.index(key) % len(PALETTE)]
            parts.append(
                f'<rect x="{x:.1f}" y="{y + 4}" width="{width:.1f}" height="{row_h - 8}" fill="{colour}">'
                f"<title>{escape(label)} · {escape(key)}: {_number(value)}</title></rect>"
            )
            x += width
        total = sum(v for _, v in segments)
        parts.append(f'<text x="{x + 4:.1f}" y="{y + 18}" class="chart-value">{_number(total)}</text>')
    legend_y = len(rows) * row_h + 8
    legend, legend_h = _legend(keys, x0=label_w, y0=legend_y, width=label_w + bar_w + 70)
    parts.extend(legend)
    return _svg(label_w + bar_w + 70, int(legend_y + legend_h + 2), "".join(parts), title)


def line_chart(series: Sequence[tuple[str, Sequence[float | None]]], *, title: str, y_label: str = "") -> Markup:
    """Learning curves: one polyline per series over epochs 1..n."""
    width, height, pad = 460, 220, 36
    values = [v for _, ys in series for v in ys if v is not None]
    if not values:
        return _svg(width, 40, '<text x="10" y="24" class="chart-label">no data yet</text>', title)
    lo, hi = min(values), max(values)
    if hi - lo < 1e-9:
        hi = lo + 1
    n = max(len(ys) for _, ys in series)
    sx = (width - 2 * pad) / max(n - 1, 1)

    def point(i: int, v: float) -> str:
        return f"{pad + i * sx:.1f},{height - pad - (v - lo) / (hi - lo) * (height - 2 * pad):.1f}"

    parts = [
        f'<line x1="{pad}" y1="{height - pad}" x2="{width - pad}" y2="{height - pad}" class="axis"/>',
        f'<line x1="{pad}" y1="{pad}" x2="{pad}" y2="{height - pad}" class="axis"/>',
        f'<text x="{pad}" y="{pad - 8}" class="chart-label">{escape(y_label)} {hi:.3g}</text>',
        f'<text x="{pad}" y="{height - pad + 14}" class="chart-label">{lo:.3g}</text>',
        f'<text x="{width - pad}" y="{height - pad + 14}" text-anchor="end" class="chart-label">epoch {n}</text>',
    ]
    for k, (_name, ys) in enumerate(series):
        pts = " ".join(point(i, v) for i, v in enumerate(ys) if v is not None)
        colour = PALETTE[k % len(PALETTE)]
        parts.append(f'<polyline points="{pts}" fill="none" stroke="{colour}" stroke-width="2"/>')
    legend, legend_h = _legend([name for name, _ in series], x0=pad, y0=height - pad + 24, width=width - pad)
    parts.extend(legend)
    return _svg(width, int(height - pad + 24 + legend_h), "".join(parts), title)


def heatmap(labels: Sequence[str], matrix: Sequence[Sequence[int]], *, title: str) -> Markup:
    """Confusion matrix: rows are true labels, columns predicted (both axes titled); darker is more."""
    n = len(labels)
    cell, label_w, axis = (max(18, min(44, 440 // max(n, 1)))), 110, 20
    left = top = label_w + axis  # room for the labels and, outside them, the axis titles
    most = max((v for row in matrix for v in row), default=0) or 1
    parts = [
        f'<text x="{left + n * cell / 2:.1f}" y="14" text-anchor="middle" class="chart-axis-title">predicted</text>',
        f'<text x="14" y="{top + n * cell / 2:.1f}" text-anchor="middle" class="chart-axis-title" '
        f'transform="rotate(-90 14 {top + n * cell / 2:.1f})">true label</text>',
    ]
    for i, row in enumerate(matrix):
        y = top + i * cell
        parts.append(
            f'<text x="{left - 4}" y="{y + cell * 0.65:.1f}" text-anchor="end" class="chart-label">'
            f"<title>{escape(labels[i])}</title>{escape(_short(labels[i], label_w - 6))}</text>"
        )
        for j, value in enumerate(row):
            x = left + j * cell
            opacity = 0.08 + 0.92 * value / most if value else 0.03
            fill = PALETTE[2] if i == j else PALETTE[3]
            parts.append(
                f'<rect x="{x}" y="{y}" width="{cell - 1}" height="{cell - 1}" fill="{fill}" '
                f'fill-opacity="{opacity:.2f}"><title>true {escape(labels[i])}, predicted '
                f"{escape(labels[j])}: {value}</title></rect>"
            )
            if cell >= 26:
                parts.append(
                    f'<text x="{x + cell / 2:.1f}" y="{y + cell * 0.62:.1f}" text-anchor="middle" '
                    f'class="chart-value">{value}</text>'
                )
    for j, name in enumerate(labels):
        column_x = left + j * cell + cell / 2
        parts.append(
            f'<text x="{column_x:.1f}" y="{top - 6}" transform="rotate(-45 {column_x:.1f} {top - 6})" '
            f'class="chart-label"><title>{escape(name)}</title>{escape(_short(name, label_w - 6))}</text>'
        )
    size = left + n * cell + 10
    # The last column's slanted name runs right of the grid: room for it, so it is not cut at the edge.
    return _svg(size + label_w // 2, size, "".join(parts), title)
