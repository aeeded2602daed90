"""The built-in schedules, one or more for each sample filter (``fltemu faults list``).

Each is kept as the TOML text a user would write (``fltemu faults show NAME`` prints it, to
copy and change), parsed like a file.
Not here: the format (``schedule``).
"""

from __future__ import annotations

import tomllib
from typing import Final

from .schedule import Schedule, ScheduleError, parse_schedule

__all__ = ["BUILTIN_SCHEDULES", "builtin_schedule", "builtin_text"]

_SCANNER_RELOAD: Final = r"""
format = 1
name = "scanner-reload"
# scanner unloaded and reloaded ten times while files keep coming; every file must
# still get one verdict.
description = "scanner reloaded ten times; every file must still get one verdict"
filter = "scanner"
seed = 1

[thresholds]
reconnect_within = 2.0   # seconds after the reload
answer_within = 5.0
lost = 0                 # every file answered by the end

[[step]]
fault = "files"
files = 5

[[step]]
fault = "unload_reload"
repeat = 10
delay = [0.05, 0.3]      # drawn from the seed for each reload
files = 3                # in flight when the filter unloads

[[step]]
fault = "files"
files = 5
"""

_SCANNER_FAULTS: Final = r"""
format = 1
name = "scanner-faults"
description = "scanner: every kind of fault once, in an order drawn from the seed"
filter = "scanner"
seed = 1

[thresholds]
reconnect_within = 2.0
answer_within = 5.0

[[step]]
fault = "files"
files = 4

[[step]]
fault = "close_connection"
which = "all"
files = 2

[[step]]
fault = "short_timeout"  # FltSendMessage polls: each reply comes late (0x801F0020)
count = 5

[[step]]
fault = "burst"
count = 200

[[step]]
fault = "rate"
rate = 500
duration = 1.0
timeout = 0.5

[[step]]
fault = "refuse_connects"
count = 3

[[step]]
fault = "malformed"
kind = "any"
count = 6

[[step]]
fault = "restart_daemon"
delay = [0.1, 0.5]
files = 2

[[step]]
fault = "random"
repeat = 4
choices = ["unload_reload", "close_connection", "burst", "malformed"]
files = 1
"""

_AVSCAN_FAULTS: Final = r"""
format = 1
name = "avscan-faults"
# scans through the sample while its scan connection is closed, messages time out or
# break the layout, and the filter reloads.
description = "avscan: scans through timeouts, malformed messages, closes and a reload"
filter = "avscan"
settings = { scan_timeout = "3" }
seed = 1

[thresholds]
reconnect_within = 2.0
answer_within = 5.0

[[step]]
fault = "files"
files = 3

[[step]]
fault = "short_timeout"
count = 3

[[step]]
fault = "malformed"
kind = "any"
count = 3

[[step]]
fault = "close_connection"
which = "one"

[[step]]
fault = "unload_reload"
delay = 0.1
files = 2
"""

_MINISPY_FAULTS: Final = r"""
format = 1
name = "minispy-faults"
description = "minispy: its polls (GetMiniSpyLog) delayed and failed, closed, reloaded"
filter = "minispy"
seed = 1

[thresholds]
reconnect_within = 2.0
answer_within = 5.0      # it must poll again within this

[[step]]
fault = "notify_fault"   # slow answers
delay = [0.2, 0.5]
status = "STATUS_SUCCESS"
count = 2

[[step]]
fault = "notify_fault"   # failed answers
delay = 0.0
status = "STATUS_INSUFFICIENT_RESOURCES"
count = 3

[[step]]
fault = "close_connection"
which = "all"

[[step]]
fault = "unload_reload"
delay = 0.1
"""

_TEXTS: Final = {
    "scanner-reload": _SCANNER_RELOAD,
    "scanner-faults": _SCANNER_FAULTS,
    "avscan-faults": _AVSCAN_FAULTS,
    "minispy-faults": _MINISPY_FAULTS,
}

#: The built-in schedules by name.
BUILTIN_SCHEDULES: Final[tuple[str, ...]] = tuple(_TEXTS)


def builtin_text(name: str) -> str:
    """The TOML text of a built-in schedule.

    Raises:
        ScheduleError: no built-in schedule has that name (the message lists them).
    """
    try:
        return _TEXTS[name].lstrip()
    except KeyError:
        raise ScheduleError(
            f"no built-in schedule {name!r}; built-in: {', '.join(BUILTIN_SCHEDULES)} "
            "(or give a schedule file's path)"
        ) from None


def builtin_schedule(name: str) -> Schedule:
    """A built-in schedule, parsed.

    Raises:
        ScheduleError: no built-in schedule has that name.
    """
    return parse_schedule(tomllib.loads(builtin_text(name)), f"built-in schedule {name}")
