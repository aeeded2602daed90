"""The Python counterpart of ``benchagent.exe get`` for ``bench_wine.py``: an agent that keeps
N gets pending (N tasks on one AsyncPort) and replies to every message with 4 bytes.

    python benchmarks/_k2u_agent.py PORT N

It runs until the port is disconnected (``fltemu bench`` ends the run by stopping it).
"""

from __future__ import annotations

import asyncio
import sys

import fltuser


async def main(port_name: str, pending: int) -> None:
    port = await fltuser.aconnect(port_name)

    async def reader() -> None:
        while True:
            message = await port.get_message(buffer_size=16 + 4096)
            if message.message_id:
                await port.reply(message.message_id, b"\0\0\0\0")

    try:
        await asyncio.gather(*(reader() for _ in range(pending)))
    except fltuser.HResultError:
        pass
    finally:
        await port.aclose()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2])))
