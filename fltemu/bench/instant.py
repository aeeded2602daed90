"""The instant-reply agent that ``fltemu bench`` measures its own limit against.

It connects to PORT with the async fltuser client, keeps GETTERS FilterGetMessage calls
pending and answers every message at once with as many zero bytes as the kernel's reply
buffer holds (no reply when the kernel asked for none), sending each reply with the next get
(``reply_and_get``), until the port is disconnected. It
runs in a process of its own, so that what it costs is not charged to the process that hosts
the port and drives the load:

    python -m fltemu.bench.instant PORT [--getters N] [--buffer-size BYTES]

Not here: the calibration run that starts it (``load``).
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Callable

import fltuser

__all__ = ["main", "serve"]


async def serve(port_name: str, getters: int, buffer_size: int) -> None:
    """Answer every message on ``port_name`` until the port is disconnected."""
    port = await fltuser.aconnect(port_name)

    async def reader() -> None:
        message = await port.get_message(buffer_size)
        while True:
            if not message.reply_length:  # the kernel's buffer + the 16-byte header; 0: none
                message = await port.get_message(buffer_size)
                continue
            # The reply and the next get in one write: one round trip per message, the least
            # any agent can take.
            try:
                message = await port.reply_and_get(
                    message.message_id, bytes(message.reply_length - 16), buffer_size
                )
            except fltuser.NoWaiterForReplyError:  # the sender timed out meanwhile
                message = await port.get_message(buffer_size)

    try:
        await asyncio.gather(*(reader() for _ in range(getters)))
    except fltuser.HResultError as exc:
        if exc.hresult != fltuser.HResult.E_HANDLE:  # anything but "disconnected" is a failure
            raise
    finally:
        await port.aclose()


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop]:
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop
    return uvloop.new_event_loop


def main(argv: list[str] | None = None) -> int:
    """Parse the arguments and serve; the exit status."""
    parser = argparse.ArgumentParser(prog="python -m fltemu.bench.instant", description=__doc__)
    parser.add_argument("port", metavar="PORT")
    parser.add_argument("--getters", type=int, default=16, help="FilterGetMessage calls pending")
    parser.add_argument("--buffer-size", type=int, default=65536, help="FilterGetMessage buffer")
    args = parser.parse_args(argv)
    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        runner.run(serve(args.port, max(1, args.getters), args.buffer_size))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
