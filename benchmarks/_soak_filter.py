"""The filter module the soak loads (``fltemu serve --filter _soak_filter``).

* ``\\SoakEcho``: a coroutine MessageNotify that returns its input cut to the output buffer
  (the good clients, the SIGKILLed ones and the ones that do not read their answers use it).
* ``\\SoakCtl``: ``reload`` registers the filter ``soak_dyn`` again, with its port
  ``\\SoakDyn``, once ``fltemu unload soak_dyn`` has unloaded it; ``status`` answers with the
  daemon's connection count.
* ``\\SoakDyn`` (filter ``soak_dyn``): clients wait in FilterGetMessage on it until the
  unload disconnects them; its DisconnectNotify and teardown take a moment, as real ones do.

Not here: the clients (``soak.py``).
"""

from __future__ import annotations

import asyncio
import json
from typing import Final

from fltemu import NtStatus
from fltemu.kernel import ClientPort, Filter

DYN_FILTER: Final = "soak_dyn"
ECHO_PORT: Final = "\\SoakEcho"
CTL_PORT: Final = "\\SoakCtl"
DYN_PORT: Final = "\\SoakDyn"
MAX_CONNECTIONS: Final = 1024

_SUCCESS: Final = NtStatus.STATUS_SUCCESS


def _connect_ok(client_port: ClientPort, cookie: object, context: bytes) -> NtStatus:
    return _SUCCESS


def _disconnect_ok(cookie: object) -> None:
    return None


async def _load_dyn(flt: Filter) -> None:
    dyn = flt.manager.register_filter(DYN_FILTER)

    async def disconnect(cookie: object) -> None:
        await asyncio.sleep(0.001)

    async def teardown(f: Filter) -> None:
        await asyncio.sleep(0.01)

    dyn.unload_callback = teardown
    await dyn.create_communication_port(
        DYN_PORT,
        connect_notify=_connect_ok,
        disconnect_notify=disconnect,
        max_connections=MAX_CONNECTIONS,
    )


async def setup(flt: Filter) -> None:
    """Create the soak's ports and load ``soak_dyn``."""

    async def echo(cookie: object, data: bytes, out_size: int) -> tuple[NtStatus, bytes]:
        return _SUCCESS, data[:out_size]

    async def control(cookie: object, data: bytes, out_size: int) -> tuple[NtStatus, bytes]:
        if data == b"reload":
            if DYN_FILTER not in flt.manager.filters:
                await _load_dyn(flt)
            return _SUCCESS, b"ok"
        if data == b"status":
            count = sum(1 for _ in flt.manager.connections())
            return _SUCCESS, json.dumps({"connections": count}).encode()[:out_size]
        return NtStatus.STATUS_INVALID_PARAMETER, b""

    await flt.create_communication_port(
        ECHO_PORT,
        connect_notify=_connect_ok,
        disconnect_notify=_disconnect_ok,
        message_notify=echo,
        max_connections=MAX_CONNECTIONS,
    )
    await flt.create_communication_port(
        CTL_PORT,
        connect_notify=_connect_ok,
        disconnect_notify=_disconnect_ok,
        message_notify=control,
        max_connections=16,
    )
    await _load_dyn(flt)
