"""The engine's NBD face: asyncio servers on a unix socket and/or a TCP address.

Per connection: the fixed-newstyle handshake (options answered by _nbd.handle_option), then
requests read one after another and served concurrently (replies may go out of order, as the
protocol allows), each checked first: a bad request gets an errno, a broken stream is closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import struct
from collections import Counter
from types import TracebackType
from typing import Self

from drivers.volumes import _nbd
from drivers.volumes._batched_writer import BatchedWriter
from drivers.volumes._engine import Engine
from drivers.volumes._errors import VolumeError
from drivers.volumes._wire import READ_CHUNK

log = logging.getLogger(__name__)

HANDSHAKE_TIMEOUT = 30.0
MAX_OPTIONS = 64


class NbdServer:
    """`async with NbdServer(engine, ["unix:/run/x.sock", "127.0.0.1:10809"])` serves until exit."""

    def __init__(self, engine: Engine, listen: list[str]) -> None:
        self._engine = engine
        self._listen = listen
        self._servers: list[asyncio.Server] = []
        self._connections: set[asyncio.Task[None]] = set()
        self.drops: Counter[str] = Counter()
        self.addresses: list[str] = []

    async def __aenter__(self) -> Self:
        for where in self._listen:
            if where.startswith("unix:"):
                path = where[5:]
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
                server = await asyncio.start_unix_server(self._serve, path)
                os.chmod(path, 0o660)
                self.addresses.append(where)
            else:
                host, _, port = where.rpartition(":")
                server = await asyncio.start_server(self._serve, host.strip("[]"), int(port), reuse_address=True)
                self.addresses.append(f"{host}:{server.sockets[0].getsockname()[1]}")
            self._servers.append(server)
        return self

    async def __aexit__(self, et: type[BaseException] | None, e: BaseException | None,
                        tb: TracebackType | None) -> None:
        for server in self._servers:
            server.close()
        for task in list(self._connections):
            task.cancel()
        for task in list(self._connections):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for where in self._listen:
            if where.startswith("unix:"):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(where[5:])

    @property
    def _exports(self) -> dict[str, int]:
        return {self._engine.status.volume: self._engine.status.size}

    async def _handshake(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> str | None:
        writer.write(_nbd.GREETING)
        await writer.drain()
        (client_flags,) = struct.unpack(">I", await reader.readexactly(4))
        if not client_flags & _nbd.CLIENT_FIXED_NEWSTYLE:
            self.drops["old_client"] += 1
            return None
        no_zeroes = bool(client_flags & _nbd.CLIENT_NO_ZEROES)
        for _ in range(MAX_OPTIONS):
            magic, option, length = _nbd.OPTION_HEADER.unpack(await reader.readexactly(_nbd.OPTION_HEADER.size))
            if magic != _nbd.IHAVEOPT or length > _nbd.MAX_OPTION_DATA:
                self.drops["bad_option"] += 1
                return None
            outcome = _nbd.handle_option(option, await reader.readexactly(length), self._exports, no_zeroes)
            writer.write(outcome.reply)
            await writer.drain()
            if outcome.close:
                return None
            if outcome.export is not None:
                return outcome.export
        self.drops["too_many_options"] += 1
        return None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        inflight: set[asyncio.Task[None]] = set()
        lock = asyncio.Lock()
        try:
            async with asyncio.timeout(HANDSHAKE_TIMEOUT):
                export = await self._handshake(reader, writer)
            if export is None:
                return
            size = self._engine.status.size
            out = BatchedWriter(writer)
            splitter = _nbd.RequestSplitter()
            disconnect = False
            while not disconnect and (chunk := await reader.read(READ_CHUNK)):
                try:
                    requests = splitter.feed(chunk)
                except _nbd.OversizedWrite as error:
                    self.drops["oversized_write"] += 1
                    log.warning("nbd: %s; closing the connection", error)
                    return
                except ValueError as error:
                    self.drops["bad_request"] += 1
                    log.warning("nbd: %s; closing the connection", error)
                    return
                for request, data in requests:
                    if request.command == _nbd.Command.DISC:
                        disconnect = True
                        break
                    problem = _nbd.check_request(request, size)
                    if problem:
                        out.write(_nbd.simple_reply(request.cookie, problem))
                        continue
                    if request.command == _nbd.Command.READ and not out.congested:
                        payload = self._engine.read_at_once(request.offset, request.length)
                        if payload is not None:  # no task needed: answered in this turn
                            out.write(_nbd.simple_reply(request.cookie) + payload)
                            continue
                    job = asyncio.create_task(self._answer(request, data, out, lock))
                    inflight.add(job)
                    job.add_done_callback(inflight.discard)
            if inflight:
                await asyncio.gather(*inflight, return_exceptions=True)
        except (asyncio.IncompleteReadError, ConnectionError, TimeoutError):
            pass
        finally:
            for job in inflight:
                job.cancel()
            self._connections.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _answer(self, request: _nbd.Request, data: bytes, out: BatchedWriter, lock: asyncio.Lock) -> None:
        engine = self._engine
        payload = b""
        error = 0
        try:
            match request.command:
                case _nbd.Command.READ:
                    payload = await engine.read(request.offset, request.length)
                case _nbd.Command.WRITE:
                    await engine.write(request.offset, data, request.fua)
                case _nbd.Command.FLUSH:
                    await engine.flush()
                case _nbd.Command.TRIM | _nbd.Command.WRITE_ZEROES:
                    await engine.zero(request.offset, request.length, request.fua)
        except VolumeError as failure:
            log.warning("nbd: %s %d+%d failed: %s", _nbd.Command(request.command).name, request.offset,
                        request.length, failure)
            error, payload = errno.EIO, b""
        out.write(_nbd.simple_reply(request.cookie, error) + payload)
        async with lock:  # one waiter at a time when the client is slow to read
            with contextlib.suppress(ConnectionError):
                await out.drain()
