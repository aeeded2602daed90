"""Trace connections: ``fltemu trace`` subscribers, each with a bounded queue of events.

The kernel model reports each port operation to ``FilterManager.tracer`` (see
``fltemu.kernel.trace``); while at least one trace connection is open, that is
``TraceHub.publish``, which hands each record to every subscriber whose filter it passes.
A subscriber turns the record into a ``TraceEvent`` (with only the first ``preview_bytes`` of
the payload) and queues it; the queue is written out once per loop iteration. A reader that
does not keep up fills the socket buffer, then the queue (``MAX_QUEUED_EVENTS``); what comes
after is counted, not kept, and the reader gets one ``dropped`` event with the count once it
reads again. So a slow reader costs the daemon a bounded amount of memory and no waiting.
Not here: what is recorded (``fltemu.kernel``), printing (``fltemu.cli.tracefmt``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from typing import Final, cast

from ..kernel import FilterManager
from ..kernel.trace import Tracer, TraceRecord
from ..status import NtStatus
from ..wire import Goodbye, Trace, TraceEvent, WireConnection

__all__ = [
    "MAX_PREVIEW_BYTES",
    "MAX_QUEUED_EVENTS",
    "TraceHub",
    "TraceSubscriber",
]

log = logging.getLogger(__name__)

#: Events one subscriber may have waiting for its socket; later ones are dropped (counted).
#: With previews of at most MAX_PREVIEW_BYTES this bounds a subscriber to a few MiB.
MAX_QUEUED_EVENTS: Final = 1024
#: The most payload bytes an event carries (``Trace.preview_bytes`` is capped to it).
MAX_PREVIEW_BYTES: Final = 4096


class TraceHub:
    """The daemon's trace subscribers; installs itself as the manager's tracer while any."""

    def __init__(self, manager: FilterManager) -> None:
        self._manager = manager
        self._subscribers: set[TraceSubscriber] = set()
        self._listeners: list[Tracer] = []

    @property
    def subscribers(self) -> frozenset[TraceSubscriber]:
        """The open trace connections."""
        return frozenset(self._subscribers)

    def add(self, subscriber: TraceSubscriber) -> None:
        """Start sending events to ``subscriber``."""
        self._subscribers.add(subscriber)
        self._manager.tracer = self.publish

    def remove(self, subscriber: TraceSubscriber) -> None:
        """Stop; the last one gone turns tracing off (the kernel's cost is back to nothing)."""
        self._subscribers.discard(subscriber)
        if not self._subscribers and not self._listeners:
            self._manager.tracer = None

    def add_listener(self, listener: Tracer) -> None:
        """Call ``listener`` inline with every record, in the daemon's process (``fltemu
        faults`` watches the agent this way); it must be quick and must not raise."""
        self._listeners.append(listener)
        self._manager.tracer = self.publish

    def remove_listener(self, listener: Tracer) -> None:
        """Stop calling ``listener``; with no subscriber left either, tracing is off."""
        if listener in self._listeners:
            self._listeners.remove(listener)
        if not self._subscribers and not self._listeners:
            self._manager.tracer = None

    def publish(self, record: TraceRecord) -> None:
        """Offer one record to every subscriber and listener (called inline by the kernel
        model)."""
        for subscriber in self._subscribers:
            subscriber.offer(record)
        for listener in self._listeners:
            listener(record)

    def close_all(self, reason: str) -> None:
        """End every trace connection (daemon shutdown)."""
        for subscriber in list(self._subscribers):
            subscriber.close(reason)


def _event(record: TraceRecord, preview: int) -> TraceEvent:
    data = record.data
    return TraceEvent(
        record.kind,
        record.time,
        record.port,
        record.connection,
        record.pid,
        record.uid,
        None if record.status is None else int(record.status),
        record.message_id,
        record.size,
        record.buffer,
        record.reply_size,
        None if record.reply_status is None else int(record.reply_status),
        record.timeout,
        record.latency,
        bytes(data[:preview]) if preview else b"",
        0,
        record.text,
    )


class TraceSubscriber(asyncio.Protocol):
    """One trace connection: it takes over a session's transport once ``Trace`` arrived.

    Args:
        hub: the daemon's hub.
        transport: the connection's transport (its protocol becomes this object).
        wire: the connection's wire state (TRACE).
        request: what to trace.
    """

    def __init__(
        self,
        hub: TraceHub,
        transport: asyncio.BaseTransport,
        wire: WireConnection,
        request: Trace,
    ) -> None:
        self._hub = hub
        self._transport = cast(asyncio.Transport, transport)
        self._wire = wire
        self._port = request.port
        self._connection = request.connection
        self._kinds = frozenset(request.kinds)
        self._preview = min(request.preview_bytes, MAX_PREVIEW_BYTES)
        self._queue: deque[TraceEvent] = deque()
        self.dropped = 0
        self._paused = False
        self._closed = False
        self._flush_handle: asyncio.Handle | None = None
        self._loop = asyncio.get_running_loop()

    @property
    def queued(self) -> int:
        """Events waiting to be written."""
        return len(self._queue)

    def start(self, note: str = "") -> None:
        """Take over the transport, send the ``start`` event and subscribe.

        Args:
            note: what the trace waits for that is not there now, added to the start event's
                text (a port or connection that does not exist yet).
        """
        self._transport.set_protocol(self)
        what = []
        if self._port:
            what.append(f"port {self._port}")
        if self._connection is not None:
            what.append(f"connection #{self._connection}")
        if self._kinds:
            what.append(", ".join(sorted(self._kinds)) + " events")
        text = ", ".join(what) or "everything"
        if note:
            text += f"; {note}"
        self._queue.append(TraceEvent("start", time.time(), text=text))
        self._hub.add(self)
        self._schedule()

    def offer(self, record: TraceRecord) -> None:
        """Queue ``record`` if it passes the filter; count it dropped if the queue is full."""
        if (
            (self._port and record.port != self._port)
            or (self._connection is not None and record.connection != self._connection)
            or (self._kinds and record.kind not in self._kinds)
            or self._closed
        ):
            return
        if len(self._queue) >= MAX_QUEUED_EVENTS:
            self.dropped += 1
            return
        self._queue.append(_event(record, self._preview))
        self._schedule()

    def _schedule(self) -> None:
        if self._flush_handle is None and not self._paused and not self._closed:
            self._flush_handle = self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_handle = None
        if self._paused or self._closed:
            return
        out = bytearray()
        queue = self._queue
        while queue:
            self._wire.send_into(queue.popleft(), out)
        if self.dropped:
            # Events are dropped only while the queue is full: they came after all of it.
            dropped, self.dropped = self.dropped, 0
            self._wire.send_into(TraceEvent("dropped", time.time(), count=dropped), out)
        if out:
            self._transport.write(out)  # may call pause_writing: later events wait or drop

    def close(self, reason: str) -> None:
        """End the trace connection with a Goodbye."""
        if self._closed:
            return
        self._flush()
        self._closed = True
        self._hub.remove(self)
        self._transport.write(self._wire.send(Goodbye(int(NtStatus.STATUS_SUCCESS), reason)))
        self._transport.close()

    # --- asyncio.Protocol ----------------------------------------------------------------------

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        self._schedule()

    def data_received(self, data: bytes) -> None:
        # The reader sends nothing after Trace; anything else ends the trace.
        self.close("a trace connection only receives")

    def eof_received(self) -> bool:
        self.close("the reader closed its end")
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        self._hub.remove(self)
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
