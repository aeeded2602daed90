"""A deliberately slow agent: it takes DELAY seconds over every kernel message.

Point ``fltemu bench`` at it to see slowness in the percentiles and timeouts:

    fltemu bench '\\ScannerPort' --reply-length 1 --timeout 0.1 --duration 5 \\
        -- python examples/slow_agent.py --delay 0.2

It connects to PORT (default ``\\ScannerPort``) with fltuser, reads messages one at a time
(FilterGetMessage), sleeps, and answers each with one byte 1 ("safe") when a reply is
expected (FilterReplyMessage). It stops when the port is disconnected (0x80070006).
"""

from __future__ import annotations

import argparse
import time

import fltuser


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", default="\\ScannerPort", help="port name (default: %(default)s)")
    parser.add_argument("--delay", type=float, default=0.05, help="seconds per message")
    parser.add_argument("--buffer-size", type=int, default=65536, help="FilterGetMessage buffer")
    args = parser.parse_args()
    with fltuser.connect(args.port) as port:
        while True:
            try:
                msg = port.get_message(args.buffer_size)
            except fltuser.HResultError as exc:
                if exc.hresult == fltuser.HResult.E_HANDLE:
                    return 0  # the port was disconnected: the filter unloaded
                raise
            time.sleep(args.delay)
            if msg.message_id:
                try:
                    port.reply(msg.message_id, b"\x01")
                except fltuser.NoWaiterForReplyError:
                    pass  # the kernel gave up waiting (its timeout): carry on, as real agents do


if __name__ == "__main__":
    raise SystemExit(main())
