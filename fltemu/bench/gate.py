"""``fltemu bench`` as a CI gate: ``--fail-if`` thresholds and ``--baseline`` comparisons.

A threshold says when the run fails, in k6's manner but fltemu's words:
``throughput<5000``, ``p99>2ms``, ``max>=1s``, ``timeouts>0``, ``failures>0.1%``. A baseline
is a report saved with ``fltemu bench --json``: the run fails when its throughput fell, or its
p50 or p99 latency grew, by more than a ratio. Pure functions, no I/O but reading the
baseline file. Not here: the run (``load``), printing (``command``).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Final

import msgspec

from .load import BenchReport

__all__ = [
    "BASELINE_LATENCIES",
    "Check",
    "Threshold",
    "check_thresholds",
    "compare_baseline",
    "load_baseline",
    "parse_threshold",
]

#: The latencies a baseline comparison checks, besides the throughput.
BASELINE_LATENCIES: Final = ("p50", "p99")
#: Settings that must match for a baseline comparison to mean something.
_SETTINGS: Final = ("mode", "rate", "concurrency", "message_bytes", "reply_length", "timeout")
_UNITS: Final = {"ns": 1e-6, "us": 1e-3, "µs": 1e-3, "ms": 1.0, "s": 1000.0}
_PATTERN: Final = re.compile(
    r"^\s*(?P<metric>[a-z_]+|p\d+(?:\.\d+)?)\s*(?P<op><=|>=|<|>)\s*"
    r"(?P<value>\d+(?:\.\d*)?|\.\d+)\s*(?P<unit>ns|us|µs|ms|s|%|/s|msg/s)?\s*$"
)
_HELP: Final = (
    "METRIC<VALUE or METRIC>VALUE (also <=, >=), where METRIC is throughput (msg/s), "
    "p50/p99/p99.9/... or max or mean (a latency, in ms unless it ends in us or s), or "
    "timeouts or failures (a count, or a share of sent ending in %); e.g. 'p99>2ms', "
    "'throughput<5000', 'timeouts>0.1%'"
)


@dataclass(frozen=True)
class Threshold:
    """A condition under which the run fails.

    Attributes:
        metric: ``throughput``, ``pNN`` (``p99.9``...), ``max``, ``mean``, ``timeouts`` or
            ``failures`` (messages not answered, whatever their status).
        op: ``<``, ``<=``, ``>`` or ``>=``: the run fails when ``metric op value`` holds.
        value: msg/s for throughput, milliseconds for a latency, a count (or, with
            ``percent``, a percentage of sent) for timeouts and failures.
        percent: ``value`` is a percentage of the messages sent.
    """

    metric: str
    op: str
    value: float
    percent: bool = False

    def __str__(self) -> str:
        if self.metric == "throughput":
            return f"throughput {self.op} {self.value:g} msg/s"
        if self.metric in ("timeouts", "failures"):
            return f"{self.metric} {self.op} {self.value:g}{'%' if self.percent else ''}"
        return f"{self.metric} {self.op} {self.value:g} ms"

    def holds(self, actual: float) -> bool:
        """``actual op value``: the run fails."""
        return {
            "<": actual < self.value,
            "<=": actual <= self.value,
            ">": actual > self.value,
            ">=": actual >= self.value,
        }[self.op]


def parse_threshold(text: str) -> Threshold:
    """``text`` (e.g. ``p99>2ms``) as a Threshold.

    >>> str(parse_threshold("p99 > 500us"))
    'p99 > 0.5 ms'
    >>> str(parse_threshold("timeouts>=1%"))
    'timeouts >= 1%'

    Raises:
        ValueError: ``text`` is not a threshold; the message says what one looks like.
    """
    found = _PATTERN.match(text.lower())
    if found is None:
        raise ValueError(f"{text!r} is not a threshold: {_HELP}")
    metric, op, value, unit = found["metric"], found["op"], float(found["value"]), found["unit"]
    if metric == "throughput":
        if unit not in (None, "/s", "msg/s"):
            raise ValueError(f"{text!r}: a throughput is in msg/s, not {unit}")
        return Threshold(metric, op, value)
    if metric in ("timeouts", "failures"):
        if unit not in (None, "%"):
            raise ValueError(f"{text!r}: {metric} is a count, or a share of sent ending in %")
        return Threshold(metric, op, value, percent=unit == "%")
    if metric in ("max", "mean") or metric.startswith("p"):
        if metric.startswith("p") and not 0 < float(metric[1:]) < 100:
            raise ValueError(f"{text!r}: a percentile is above 0 and below 100 (p50, p99.9)")
        if unit not in (None, *_UNITS):
            raise ValueError(f"{text!r}: a latency is in ms, us or s, not {unit}")
        return Threshold(metric, op, value * _UNITS[unit or "ms"])
    raise ValueError(f"{text!r}: unknown metric {metric!r}: {_HELP}")


@dataclass(frozen=True)
class Check:
    """One threshold or baseline comparison, and how the run fared.

    Attributes:
        what: the condition that fails the run, in words (e.g. ``p99 > 2 ms``).
        actual: the run's figure, in words (e.g. ``2.315 ms``).
        failed: the condition held: the run fails.
    """

    what: str
    actual: str
    failed: bool

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready summary."""
        return {"fails_if": self.what, "actual": self.actual, "failed": self.failed}


def _latency_ms(report: BenchReport, metric: str) -> float:
    if metric == "max":
        return report.latency.max / 1e6
    if metric == "mean":
        return report.latency.mean / 1e6
    return report.latency.percentile(float(metric[1:])) / 1e6


def check_thresholds(report: BenchReport, thresholds: list[Threshold]) -> list[Check]:
    """Each threshold against the run."""
    checks = []
    for t in thresholds:
        if t.metric == "throughput":
            actual = report.throughput
            words = f"{actual:,.1f} msg/s"
        elif t.metric in ("timeouts", "failures"):
            count = report.timeouts if t.metric == "timeouts" else report.not_answered
            share = 100 * count / report.sent if report.sent else 0.0
            actual = share if t.percent else count
            words = f"{count} ({share:.2f}% of sent)"
        else:
            actual = _latency_ms(report, t.metric)
            words = f"{actual:.3f} ms"
        checks.append(Check(str(t), words, t.holds(actual)))
    return checks


def load_baseline(path: str) -> dict[str, Any]:
    """A report saved by ``fltemu bench --json``.

    Raises:
        ValueError: the file cannot be read or is not such a report; the message says why.
    """
    try:
        with open(path, "rb") as f:
            data = msgspec.json.decode(f.read())
    except OSError as exc:
        raise ValueError(f"cannot read it: {exc.strerror or exc}") from None
    except msgspec.DecodeError as exc:
        raise ValueError(f"not JSON ({exc}); save one with fltemu bench --json > FILE") from None
    latency = data.get("latency_ms") if isinstance(data, dict) else None
    if (
        not isinstance(data, dict)
        or not isinstance(data.get("throughput"), int | float)
        or not isinstance(latency, dict)
        or not all(isinstance(latency.get(p), int | float) for p in BASELINE_LATENCIES)
    ):
        raise ValueError("not a report of fltemu bench --json (no throughput or latency_ms)")
    if not data.get("answered"):
        raise ValueError("that run answered no message: there is nothing to compare with")
    return data


def compare_baseline(
    report: BenchReport, baseline: dict[str, Any], ratio: float
) -> tuple[list[Check], list[str]]:
    """The run against a saved report: it fails when its throughput is below the baseline's
    divided by ``ratio``, or its p50 or p99 above the baseline's times ``ratio``.

    Returns:
        The checks, and a warning for each setting that differs from the baseline's (the
        comparison is then between different loads).
    """
    base_throughput = float(baseline["throughput"])
    checks = [
        Check(
            f"throughput < {base_throughput:,.1f} / {ratio:g} (baseline)",
            f"{report.throughput:,.1f} msg/s ({_change(report.throughput, base_throughput)})",
            report.throughput * ratio < base_throughput,
        )
    ]
    for name in BASELINE_LATENCIES:
        base = float(baseline["latency_ms"][name])
        now = _latency_ms(report, name)
        checks.append(
            Check(
                f"{name} > {base:.3f} ms x {ratio:g} (baseline)",
                f"{now:.3f} ms ({_change(now, base)})",
                now > base * ratio,
            )
        )
    mine = report.to_dict()
    warnings = [
        f"the baseline ran with {key} {baseline.get(key)!r}, this run with {mine[key]!r}"
        for key in _SETTINGS
        if key in baseline and baseline.get(key) != mine[key]
    ]
    return checks, warnings


def _change(now: float, base: float) -> str:
    if base == 0 or math.isnan(now):
        return "baseline 0"
    return f"{now / base:.2f}x the baseline's"
