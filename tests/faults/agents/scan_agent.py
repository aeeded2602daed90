r"""A scanner agent for the fault tests: answers SCANNER_NOTIFICATIONs ("foul" means unsafe)
with a few pending gets, and, unlike scanUser.c, connects again when its connection ends.

Flags make it break on purpose, so that a test can show the report catches it:

* ``--no-reconnect``: exits 0 when its port is disconnected (as scanUser.c does);
* ``--crash-on-short``: reads BytesToScan without checking the message's length, and dies
  (an uncaught ``struct.error``, exit status 1) on a message shorter than its header;
* ``--wrong``: answers every notification the wrong way round;
* ``--stop-after N``: stops issuing FilterGetMessage after N messages (it hangs, connected);
* ``--leak``: connects again without closing the handle of the connection that ended;
* ``--slow-exit S``: with ``--crash-on-short``, its process ends S seconds after its
  connection was closed (as a Wine process takes a while to end).

Usage: ``python scan_agent.py [--port NAME] [--gets N] [FLAGS]`` (socket: FLTEMU_SOCKET).
"""

from __future__ import annotations

import argparse
import asyncio
import struct
import sys
import time

import fltuser

HEADER = struct.Struct("<II")
BUFFER = fltuser.FILTER_HEADER_BYTES + HEADER.size + 1024
#: Messages taken so far; handles kept open by --leak.
seen = [0]
leaked: list[fltuser.AsyncPort] = []


async def serve(port: fltuser.AsyncPort, args: argparse.Namespace) -> None:
    async def worker() -> None:
        while True:
            if args.stop_after is not None and seen[0] >= args.stop_after:
                await asyncio.Event().wait()  # hung: connected, no get pending
            msg = await port.get_message(BUFFER)
            seen[0] += 1
            if args.crash_on_short:
                (bytes_to_scan, _reserved) = HEADER.unpack_from(msg.data)  # no length check
            elif len(msg.data) < HEADER.size:
                await port.reply(msg.message_id, b"\x00")
                continue
            else:
                (bytes_to_scan, _reserved) = HEADER.unpack_from(msg.data)
            body = msg.data[HEADER.size : HEADER.size + min(bytes_to_scan, 1024)]
            safe = b"foul" not in body
            if args.wrong:
                safe = not safe
            try:
                await port.reply(msg.message_id, b"\x01" if safe else b"\x00")
            except fltuser.NoWaiterForReplyError:
                print("late reply", flush=True)

    workers = [asyncio.ensure_future(worker()) for _ in range(args.gets)]
    try:
        done, _ = await asyncio.wait(workers, return_when=asyncio.FIRST_EXCEPTION)
        for task in done:
            task.result()
    finally:
        for task in workers:
            task.cancel()
        await asyncio.gather(*workers, return_exceptions=True)


async def main(args: argparse.Namespace) -> int:
    while True:
        try:
            port = await fltuser.aconnect(args.port)
        except fltuser.HResultError as exc:
            print(f"connect failed: 0x{exc.hresult:08x}", flush=True)
            await asyncio.sleep(0.02)
            continue
        print("connected", flush=True)
        try:
            await serve(port, args)
        except fltuser.HResultError as exc:
            print(f"disconnected: 0x{exc.hresult:08x}", flush=True)
        finally:
            if args.leak:
                leaked.append(port)
            else:
                await port.aclose()
        if args.no_reconnect:
            return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", default="\\ScannerPort")
    parser.add_argument("--gets", type=int, default=4)
    parser.add_argument("--no-reconnect", action="store_true")
    parser.add_argument("--crash-on-short", action="store_true")
    parser.add_argument("--wrong", action="store_true")
    parser.add_argument("--stop-after", type=int, default=None)
    parser.add_argument("--leak", action="store_true")
    parser.add_argument("--slow-exit", type=float, default=0.0)
    arguments = parser.parse_args()
    try:
        sys.exit(asyncio.run(main(arguments)))
    except struct.error:
        time.sleep(arguments.slow_exit)  # its connection is closed already
        raise
