"""An SVG latency plot (percentile distribution) that any browser opens; no dependencies.

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


def percentile_svg(
    histogram: LatencyHistogram, title: str, *, subtitle: str = "", notes: Sequence[str] = ()
) -> str:
    """An SVG of latency (ms) against percentile, with p50/p90/p99/p99.9/max labelled.

    Args:
        histogram: the latencies to draw.
        title: the first line on top (e.g. what ran and its throughput).
        subtitle: the second line (e.g. the run's settings).
        notes: lines in red under the plot (e.g. what the curve leaves out).
    """
    curve = histogram.percentile_curve()
    top_ms = max((v for _, v in curve), default=0) / 1e6 or 1.0
    scale = 10.0 ** math.floor(math.log10(top_ms))
    top_ms = math.ceil(top_ms / scale) * scale

    def y(value_ns: float) -> float:
        return _TOP + (_H - _TOP - _BOTTOM) * (1 - (value_ns / 1e6) / top_ms)

    height = _H + 18 * len(notes)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{_W}" height="{height}" '
        'font-family="sans-serif" font-size="12">',
        f'<rect width="{_W}" height="{height}" fill="white"/>',
        f'<text x="{_W / 2}" y="22" text-anchor="middle" font-size="15">{escape(title)}</text>',
        f'<text x="{_W / 2}" y="40" text-anchor="middle">{escape(subtitle)}</text>',
    ]
    for i in range(6):
        value = top_ms * i / 5
        yy = y(value * 1e6)
        parts.append(
            f'<line x1="{_LEFT}" y1="{yy:.1f}" x2="{_W - _RIGHT}" y2="{yy:.1f}" stroke="#ddd"/>'
        )
        parts.append(f'<text x="{_LEFT - 8}" y="{yy + 4:.1f}" text-anchor="end">{value:g}</text>')
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
    for i, note in enumerate(notes):
        parts.append(f'<text x="{_LEFT}" y="{_H + 18 * i}" fill="#c00">{escape(note)}</text>')
    parts.append(
        f'<text x="{_W / 2}" y="{_H - 20}" text-anchor="middle">percentile (log scale of '
        "1/(1 - p): each step right adds a nine)</text>"
        f'<text x="20" y="{_H / 2}" text-anchor="middle" '
        f'transform="rotate(-90 20 {_H / 2})">latency (ms)</text>'
    )
    summary = "   ".join(
        f"{name} {histogram.percentile(p) / 1e6:.3f} ms"
        for name, p in (("p50", 50), ("p90", 90), ("p99", 99), ("p99.9", 99.9))
    )
    parts.append(
        f'<text x="{_LEFT}" y="{_TOP - 10}">{escape(summary)}   max '
        f"{histogram.max / 1e6:.3f} ms   n={histogram.count}</text>"
    )
    parts.append("</svg>")
    return "\n".join(parts) + "\n"
