"""An SVG latency plot (percentile distribution, both axes on log scales) that any browser
opens; no dependencies.

Not here: the data (``histogram``), the run (``load``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from html import escape

from .histogram import LatencyHistogram

__all__ = ["percentile_svg"]

_W, _H = 800, 500
_LEFT, _RIGHT, _TOP, _BOTTOM = 80, 30, 70, 70
_MARKS = [(0.0, "0%"), (90.0, "90%"), (99.0, "99%"), (99.9, "99.9%"), (99.99, "99.99%")]


def _x(percent: float) -> float:
    # Log scale of 1 / (1 - p), capped at 99.999 %.
    nines = -math.log10(max(1 - percent / 100, 1e-5))
    return float(_LEFT + (_W - _LEFT - _RIGHT) * nines / 5)


def _decades(low_ms: float, high_ms: float) -> tuple[float, float]:
    """The y-axis range: whole decades around the values (at least one decade)."""
    bottom = 10.0 ** math.floor(math.log10(max(low_ms, 1e-4)))
    top = 10.0 ** math.ceil(math.log10(max(high_ms, bottom * 10)))
    return bottom, max(top, bottom * 10)


def percentile_svg(
    histogram: LatencyHistogram,
    title: str,
    *,
    subtitle: str = "",
    notes: Sequence[str] = (),
    warnings: Sequence[str] = (),
    percentiles: Sequence[float] = (50, 90, 99, 99.9),
) -> str:
    """An SVG of latency (ms, log scale) against percentile, with the percentiles and max
    labelled.

    Args:
        histogram: the latencies to draw.
        title: the first line on top (e.g. what ran and its throughput).
        subtitle: the second line (e.g. the run's settings).
        notes: lines in grey under the plot: what the reader should know (e.g. messages in
            flight at the end).
        warnings: lines in red under the plot: what makes the figures doubtful (e.g. what
            the curve leaves out, a run that ended early).
        percentiles: the percentiles named in the summary line.
    """
    curve = histogram.percentile_curve()
    values = [v / 1e6 for _, v in curve if v > 0]
    bottom, top = _decades(min(values, default=1e-3), max(values, default=1.0))
    span = math.log10(top) - math.log10(bottom)

    def y(value_ns: float) -> float:
        ms = max(value_ns / 1e6, bottom)
        return _TOP + (_H - _TOP - _BOTTOM) * (1 - (math.log10(ms) - math.log10(bottom)) / span)

    lines = [(text, "#c00") for text in warnings] + [(text, "#555") for text in notes]
    height = _H + 18 * len(lines)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{_W}" height="{height}" '
        'font-family="sans-serif" font-size="12">',
        f'<rect width="{_W}" height="{height}" fill="white"/>',
        f'<text x="{_W / 2}" y="22" text-anchor="middle" font-size="15">{escape(title)}</text>',
        f'<text x="{_W / 2}" y="40" text-anchor="middle">{escape(subtitle)}</text>',
    ]
    decade = bottom
    while decade <= top * 1.0001:
        for factor, strong in ((1, True), (2, False), (5, False)):
            value = decade * factor
            if value > top * 1.0001:
                break
            yy = y(value * 1e6)
            colour = "#ccc" if strong else "#eee"
            parts.append(
                f'<line x1="{_LEFT}" y1="{yy:.1f}" x2="{_W - _RIGHT}" y2="{yy:.1f}" '
                f'stroke="{colour}"/>'
            )
            if strong or span <= 3:
                parts.append(
                    f'<text x="{_LEFT - 8}" y="{yy + 4:.1f}" text-anchor="end">{value:g}</text>'
                )
        decade *= 10
    for percent, label in _MARKS:
        xx = _x(percent)
        parts.append(
            f'<line x1="{xx:.1f}" y1="{_TOP}" x2="{xx:.1f}" y2="{_H - _BOTTOM}" stroke="#ddd"/>'
        )
        parts.append(
            f'<text x="{xx:.1f}" y="{_H - _BOTTOM + 18}" text-anchor="middle">{label}</text>'
        )
    if histogram.count:
        points = " ".join(f"{_x(p):.1f},{y(v):.1f}" for p, v in curve)
        parts.append(f'<polyline points="{points}" fill="none" stroke="#1f6feb" stroke-width="2"/>')
    else:
        parts.append(
            f'<text x="{(_LEFT + _W - _RIGHT) / 2}" y="{(_TOP + _H - _BOTTOM) / 2}" '
            'text-anchor="middle" font-size="15" fill="#c00">no values to plot</text>'
        )
    for i, (text, colour) in enumerate(lines):
        parts.append(f'<text x="{_LEFT}" y="{_H + 18 * i}" fill="{colour}">{escape(text)}</text>')
    parts.append(
        f'<text x="{_W / 2}" y="{_H - 20}" text-anchor="middle">percentile (log scale of '
        "1/(1 - p): each step right adds a nine)</text>"
        f'<text x="20" y="{_H / 2}" text-anchor="middle" '
        f'transform="rotate(-90 20 {_H / 2})">latency (ms, log scale)</text>'
    )
    summary = "   ".join(f"p{p:g} {histogram.percentile(p) / 1e6:.3f} ms" for p in percentiles)
    parts.append(
        f'<text x="{_LEFT}" y="{_TOP - 10}">{escape(summary)}   max '
        f"{histogram.max / 1e6:.3f} ms   n={histogram.count}</text>"
    )
    parts.append("</svg>")
    return "\n".join(parts) + "\n"
