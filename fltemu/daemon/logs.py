"""How ``fltemu serve`` logs: to stderr, as text for people or JSON lines for log collectors.

Not here: what is logged (each module's own ``log``), the ready line on stdout (``runner``).
"""

from __future__ import annotations

import datetime
import logging
import sys
from typing import Final, TextIO

import msgspec

__all__ = ["LOG_FORMATS", "JsonFormatter", "configure_logging"]

#: ``--log-format`` choices.
LOG_FORMATS: Final = ("text", "json")

_TEXT_FORMAT: Final = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class JsonFormatter(logging.Formatter):
    """One JSON object per record: ``time`` (ISO 8601, UTC), ``level``, ``logger``,
    ``message``, and ``exception`` (the formatted traceback) when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        """The record as one line of JSON."""
        document: dict[str, object] = {
            "time": datetime.datetime.fromtimestamp(record.created, datetime.UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            document["exception"] = self.formatException(record.exc_info)
        return msgspec.json.encode(document).decode()


def configure_logging(level: str, fmt: str = "text", stream: TextIO | None = None) -> None:
    """Send fltemu's logs (and its filter modules') to ``stream`` (stderr) at ``level``.

    Raises:
        ValueError: ``fmt`` is not one of ``LOG_FORMATS``.
    """
    if fmt not in LOG_FORMATS:
        raise ValueError(f"log format is one of {', '.join(LOG_FORMATS)}, not {fmt!r}")
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(_TEXT_FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
