"""An engine's connection to one replica server: authenticated, pipelined, in order.

A request is written to the socket the moment it is made (before any await), so requests reach the
replica in the order the engine made them. Any connection problem fails every pending request
with ReplicaLost and the client stays closed: the engine ejects the replica.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import Callable
from typing import Any, Protocol

from drivers.volumes._batched_writer import BatchedWriter
from drivers.volumes._errors import Fenced, ProtocolError, VolumeError
from drivers.volumes._local_view import FileView, LocalView
from drivers.volumes._wire import (
    BLOCK_CHANGES,
    READ_CHUNK,
    STATUS_FENCED,
    STATUS_OK,
    FrameSplitter,
    Secrets,
    client_handshake,
    frame_head,
)

Reply = asyncio.Future[tuple[int, dict[str, Any], bytes]]
"""(status, header, data) of one request."""


class ReplicaLink(Protocol):
    """An engine's connection to one replica: TCP (ReplicaClient) or in memory (simulations)."""

    address: str
    closed_because: str

    @property
    def connected(self) -> bool: ...

    @property
    def outstanding(self) -> int:
        """Requests sent and not yet answered."""
        ...

    @property
    def oldest_unanswered(self) -> float | None:
        """When the oldest request still waiting for its answer was sent (loop time), or None."""
        ...

    async def connect(self, timeout: float) -> None: ...

    def send(self, op: int, header: dict[str, Any], data: bytes = b"") -> Reply: ...

    async def call(self, op: int, header: dict[str, Any], data: bytes = b"") -> tuple[dict[str, Any], bytes]: ...

    def attach_local(self, volume: str, offered: object) -> None:
        """After OPEN: read `volume` directly when the replica is on this host (see _local_view)."""
        ...

    def read_locally(self, offset: int, length: int, epoch: int) -> bytes | None:
        """The bytes read directly, or None: ask the replica server (not local, another epoch,
        a write of ours still unanswered there, not connected)."""
        ...

    def close(self, reason: str = "closed") -> None: ...

    async def aclose(self) -> None: ...


LinkFactory = Callable[[str, Callable[[str, str], None]], ReplicaLink]
"""(address, on_lost) -> a link, not yet connected."""


def outcome(address: str, reply: tuple[int, dict[str, Any], bytes]) -> tuple[dict[str, Any], bytes]:
    """A reply's header and data, or its refusal raised (Fenced or VolumeError)."""
    status, answer, payload = reply
    if status == STATUS_OK:
        return answer, payload
    message = f"{address}: {answer.get('error', 'refused')}"
    raise Fenced(message) if status == STATUS_FENCED else VolumeError(message)


class ReplicaLost(VolumeError):
    """The replica server cannot be reached, or the connection broke."""


def split_address(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise VolumeError(f"{address!r} is not HOST:PORT")
    return host.strip("[]"), int(port)


class ReplicaClient:
    def __init__(self, address: str, secrets: Secrets, on_lost: Callable[[str, str], None] | None = None) -> None:
        self.address = address
        self._on_lost = on_lost
        self._secrets = secrets
        self._writer: asyncio.StreamWriter | None = None
        self._out: BatchedWriter | None = None
        self._reader_task: asyncio.Task[None] | None = None
        self._pending: dict[int, Reply] = {}
        self._sent_at: dict[int, float] = {}
        """When each pending request was sent; oldest first."""
        self._ids = itertools.count(1)
        self._changes: set[int] = set()
        """Writes and zeroes sent and not answered yet: direct reads wait until there are none."""
        self._view: LocalView | None = None
        self.closed_because = ""

    async def connect(self, timeout: float) -> None:
        host, port = split_address(self.address)
        try:
            async with asyncio.timeout(timeout):
                reader, writer = await asyncio.open_connection(host, port)
                try:
                    await client_handshake(reader, writer, self._secrets)
                except BaseException:
                    writer.close()
                    raise
        except (OSError, TimeoutError, asyncio.IncompleteReadError) as error:
            raise ReplicaLost(f"{self.address}: {error or type(error).__name__}") from None
        except ProtocolError as error:
            raise ReplicaLost(f"{self.address}: {error}") from None
        self._writer = writer
        self._out = BatchedWriter(writer)
        self._reader_task = asyncio.create_task(self._read(reader))

    @property
    def connected(self) -> bool:
        return self._writer is not None and not self.closed_because

    @property
    def outstanding(self) -> int:
        return len(self._pending)

    @property
    def oldest_unanswered(self) -> float | None:
        return next(iter(self._sent_at.values()), None)

    async def _read(self, reader: asyncio.StreamReader) -> None:
        frames = FrameSplitter()
        try:
            while True:
                chunk = await reader.read(READ_CHUNK)
                if not chunk:
                    raise ConnectionError("closed by the replica server")
                for request_id, status, header, data in frames.feed(chunk):
                    future = self._pending.pop(request_id, None)
                    self._sent_at.pop(request_id, None)
                    self._changes.discard(request_id)
                    if future is not None and not future.done():
                        future.set_result((status, header, data))
        except (asyncio.IncompleteReadError, ConnectionError, OSError, ProtocolError) as error:
            self._fail(f"connection lost: {error or type(error).__name__}")
            if self._on_lost is not None:
                self._on_lost(self.address, self.closed_because)

    def _fail(self, reason: str) -> None:
        if not self.closed_because:
            self.closed_because = reason
        for future in self._pending.values():
            if not future.done():
                future.set_exception(ReplicaLost(f"{self.address}: {self.closed_because}"))
        self._pending.clear()
        self._sent_at.clear()
        self._changes.clear()
        if self._view is not None:
            self._view.close()
            self._view = None
        if self._writer is not None:
            self._writer.close()

    def send(self, op: int, header: dict[str, Any], data: bytes = b"") -> Reply:
        """Queue the request (it leaves with the others of this loop turn); the future resolves
        with (status, header, data)."""
        loop = asyncio.get_running_loop()
        future: Reply = loop.create_future()
        if self._out is None or self.closed_because:
            future.set_exception(ReplicaLost(f"{self.address}: {self.closed_because or 'not connected'}"))
            return future
        request_id = next(self._ids)
        self._pending[request_id] = future
        self._sent_at[request_id] = loop.time()
        if op in BLOCK_CHANGES:
            self._changes.add(request_id)
        self._out.write(frame_head(request_id, op, header, len(data)))
        if data:
            self._out.write(data)
        return future

    def attach_local(self, volume: str, offered: object) -> None:
        if self._view is not None:
            self._view.close()
        self._view = FileView.accept(offered) if self.connected else None

    def read_locally(self, offset: int, length: int, epoch: int) -> bytes | None:
        if self._view is None or self._changes or self.closed_because:
            return None
        return self._view.read(offset, length, epoch)

    async def call(self, op: int, header: dict[str, Any], data: bytes = b"") -> tuple[dict[str, Any], bytes]:
        return outcome(self.address, await self.send(op, header, data))

    def close(self, reason: str = "closed") -> None:
        self._fail(reason)
        if self._reader_task is not None:
            self._reader_task.cancel()

    async def aclose(self) -> None:
        self.close()
        if self._reader_task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader_task
