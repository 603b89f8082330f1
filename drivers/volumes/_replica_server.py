"""The replica server: one process per node serving every replica in its directory to engines.

Each connection is authenticated first (see _wire), then served in order: requests on one
connection are applied in the order they were sent, which is what lets an engine read its own
acknowledged writes from any replica. Garbage gets the connection closed and is counted; a
refused request (a fenced epoch, a bad range) gets an error reply and the connection goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from drivers.volumes._errors import Fenced, ProtocolError, VolumeError
from drivers.volumes._store import Replica, ReplicaStore, check_volume_name
from drivers.volumes._wire import (
    OP_ADOPT,
    OP_CLAIM,
    OP_DIGEST,
    OP_EXTENTS,
    OP_FLUSH,
    OP_MEMBERS,
    OP_OPEN,
    OP_READ,
    OP_STATUS,
    OP_WRITE,
    OP_ZERO,
    STATUS_ERROR,
    STATUS_FENCED,
    STATUS_OK,
    Secrets,
    encode_frame,
    field,
    read_frame,
    server_handshake,
)

log = logging.getLogger(__name__)


def _members(header: dict[str, Any]) -> tuple[str, ...]:
    members = header.get("members")
    if not isinstance(members, list) or not all(isinstance(m, str) for m in members) or len(members) > 16:
        raise ProtocolError("members: expected a list of addresses")
    return tuple(members)


class ReplicaServer:
    """`async with ReplicaServer(directory, host, port, secrets)` serves until exit."""

    def __init__(self, directory: Path, host: str, port: int, secrets: Secrets) -> None:
        self.store = ReplicaStore(directory)
        self._host, self._port = host, port
        self._secrets = secrets
        self._open: dict[str, Replica] = {}
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()
        self.drops: Counter[str] = Counter()
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
        for replica in self._open.values():
            replica.close()
        self._open.clear()

    def _replica(self, header: dict[str, Any]) -> Replica:
        volume = check_volume_name(field(header, "volume", str))
        replica = self._open.get(volume)
        if replica is None:
            raise VolumeError(f"{volume} is not open here; OPEN it first")
        return replica

    def _handle(self, op: int, header: dict[str, Any], data: bytes) -> tuple[dict[str, Any], bytes]:
        if op == OP_STATUS:
            return {"replicas": [m.to_json() for m in self.store.volumes()]}, b""
        if op == OP_OPEN:
            volume = check_volume_name(field(header, "volume", str))
            size = field(header, "size", int)
            if volume not in self._open:
                volume_id = header.get("volume_id", "")
                if not isinstance(volume_id, str) or len(volume_id) > 64:
                    raise ProtocolError("volume_id: expected a short string")
                self._open[volume] = self.store.open(volume, size, create=bool(header.get("create")),
                                                     volume_id=volume_id)
            elif self._open[volume].meta.size != size:
                raise VolumeError(f"{volume}: holds {self._open[volume].meta.size} bytes, not {size}")
            replica = self._open[volume]
            return {"meta": replica.meta.to_json(), "applied": replica.seq}, b""
        replica = self._replica(header)
        epoch = field(header, "epoch", int)
        if op == OP_WRITE:
            replica.write(epoch, field(header, "offset", int), data, field(header, "seq", int), bool(header.get("fua")))
            return {}, b""
        if op == OP_READ:
            return {}, replica.read(epoch, field(header, "offset", int), field(header, "length", int))
        if op == OP_ZERO:
            replica.zero(epoch, field(header, "offset", int), field(header, "length", int), field(header, "seq", int))
            return {}, b""
        if op == OP_CLAIM:
            replica.claim(epoch, _members(header), field(header, "set_version", int))
            return {"meta": replica.meta.to_json()}, b""
        if op == OP_ADOPT:
            replica.adopt(epoch)
            return {"meta": replica.meta.to_json()}, b""
        if op == OP_DIGEST:
            return {}, replica.digest(epoch, field(header, "offset", int), field(header, "length", int))
        if op == OP_EXTENTS:
            found = replica.extents(epoch, field(header, "offset", int), field(header, "length", int))
            return {"extents": [list(e) for e in found]}, b""
        if op == OP_MEMBERS:
            replica.set_members(epoch, _members(header), field(header, "set_version", int))
            return {}, b""
        raise ProtocolError(f"unknown op {op}")

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        peer = writer.get_extra_info("peername")
        try:
            await server_handshake(reader, writer, self._secrets)
            while True:
                request_id, op, header, data = await read_frame(reader)
                try:
                    if op == OP_FLUSH:
                        replica = self._replica(header)
                        await asyncio.to_thread(replica.flush, field(header, "epoch", int))
                        answer: dict[str, Any] = {}
                        payload = b""
                    else:
                        answer, payload = self._handle(op, header, data)
                    writer.write(encode_frame(request_id, STATUS_OK, answer, payload))
                except Fenced as error:
                    writer.write(encode_frame(request_id, STATUS_FENCED, {"error": str(error)}))
                except (VolumeError, OSError) as error:
                    if isinstance(error, ProtocolError):
                        raise
                    writer.write(encode_frame(request_id, STATUS_ERROR, {"error": str(error)}))
                await writer.drain()
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
