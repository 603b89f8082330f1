"""Frames written in one turn of the event loop leave in one system call.

Under load many requests are answered (or sent) in the same turn: writing each at once costs a
send() apiece, which was the largest single cost of the engine. A BatchedWriter collects them and
hands them to the transport together at the start of the next turn, in order.
"""

from __future__ import annotations

import asyncio

HIGH_WATER = 4 * 1024 * 1024
"""Above this many bytes waiting in the transport, `drain` waits for the peer to read."""


class BatchedWriter:
    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self._writer = writer
        self._parts: list[bytes] = []
        self._waiting = 0
        """Bytes in `_parts`."""
        self._scheduled = False

    @property
    def congested(self) -> bool:
        """More than HIGH_WATER bytes wait to leave: a writer should `drain` before adding more."""
        return self._waiting + self._writer.transport.get_write_buffer_size() > HIGH_WATER

    def write(self, data: bytes) -> None:
        self._parts.append(data)
        self._waiting += len(data)
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self.flush)

    def flush(self) -> None:
        self._scheduled = False
        self._waiting = 0
        if not self._parts or self._writer.is_closing():
            self._parts.clear()
            return
        parts, self._parts = self._parts, []
        self._writer.writelines(parts)  # one writev, no joined copy

    async def drain(self) -> None:
        """Wait only when the peer is not keeping up (backpressure), not after every frame."""
        transport = self._writer.transport
        if transport.get_write_buffer_size() > HIGH_WATER:
            self.flush()
            await self._writer.drain()
