"""The replica server: one process per node serving every replica in its directory to engines.

Each connection is authenticated first (see _wire), then served in order: requests on one
connection are applied in the order they were sent, which is what lets an engine read its own
acknowledged writes from any replica. Garbage gets the connection closed and is counted; a
refused request (a fenced epoch, a bad range) gets an error reply and the connection goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections import Counter
from pathlib import Path
from types import TracebackType
from typing import Self

from drivers.volumes._batched_writer import BatchedWriter
from drivers.volumes._errors import ProtocolError
from drivers.volumes._replica_service import ReplicaService
from drivers.volumes._store import ReplicaStore
from drivers.volumes._wire import (
    OP_FLUSH,
    READ_CHUNK,
    FrameSplitter,
    Secrets,
    frame_head,
    server_handshake,
)

log = logging.getLogger(__name__)


class ReplicaServer:
    """`async with ReplicaServer(directory, host, port, secrets)` serves until exit."""

    def __init__(self, directory: Path, host: str, port: int, secrets: Secrets) -> None:
        self.store = ReplicaStore(directory)
        self.service = ReplicaService(self.store)
        self._host, self._port = host, port
        self._secrets = secrets
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()
        self.drops: Counter[str] = Counter()
        self._sessions = itertools.count(1)
        self.address = f"{host}:{port}"

    async def __aenter__(self) -> Self:
        self._server = await asyncio.start_server(self._serve, self._host, self._port, reuse_address=True)
        port = self._server.sockets[0].getsockname()[1]
        self.address = f"{self._host}:{port}"
        return self

    async def __aexit__(self, et: type[BaseException] | None, e: BaseException | None,
                        tb: TracebackType | None) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._connections):
            task.cancel()
        for task in list(self._connections):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self.service.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        peer = writer.get_extra_info("peername")
        session = next(self._sessions)
        try:
            await server_handshake(reader, writer, self._secrets)
            out = BatchedWriter(writer)
            frames = FrameSplitter()
            while chunk := await reader.read(READ_CHUNK):
                for request_id, op, header, data in frames.feed(chunk):
                    if op == OP_FLUSH:  # fdatasync may take a while: off the loop, in request order still
                        status, answer, payload = await asyncio.to_thread(self.service.answer, op, header, data,
                                                                          session)
                    else:
                        status, answer, payload = self.service.answer(op, header, data, session)
                    out.write(frame_head(request_id, status, answer, len(payload)))
                    if payload:
                        out.write(payload)
                await out.drain()
        except (asyncio.IncompleteReadError, ConnectionError, TimeoutError):
            pass
        except ProtocolError as error:
            self.drops["protocol"] += 1
            log.warning("replica server %s: dropped %s: %s", self.address, peer, error)
        finally:
            self._connections.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
