"""Probes check one instance once and say whether it passed; they never raise."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

import aiohttp


@dataclass(frozen=True, slots=True)
class ProbeResult:
    ok: bool
    detail: str = ""


class Probe(Protocol):
    async def check(self, host: str, timeout: float, source: str | None = None) -> ProbeResult:
        """One check of the instance reachable at `host`, from the local address `source` (the
        observer's own address, so network rules apply to it as to its gossip); never raises."""


class HttpProbe:
    """Passes on an HTTP status below 400 from GET http://host:port/path."""

    def __init__(self, port: int, path: str = "/") -> None:
        self.port = port
        self.path = path if path.startswith("/") else "/" + path

    async def check(self, host: str, timeout: float, source: str | None = None) -> ProbeResult:
        literal = f"[{host}]" if ":" in host else host
        try:
            url = f"http://{literal}:{self.port}{self.path}"
            connector = aiohttp.TCPConnector(local_addr=(source, 0) if source else None, force_close=True)
            async with (
                aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout), connector=connector) as session,
                session.get(url, allow_redirects=False) as reply,
            ):
                await reply.read()
                return ProbeResult(reply.status < 400, f"HTTP {reply.status}")
        except (aiohttp.ClientError, TimeoutError, OSError) as error:
            return ProbeResult(False, f"{type(error).__name__}: {error}"[:200])


class TcpProbe:
    """Passes when a TCP connection to host:port opens."""

    def __init__(self, port: int) -> None:
        self.port = port

    async def check(self, host: str, timeout: float, source: str | None = None) -> ProbeResult:
        try:
            async with asyncio.timeout(timeout):
                _, writer = await asyncio.open_connection(host, self.port,
                                                          local_addr=(source, 0) if source else None)
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
            return ProbeResult(True, "connected")
        except (TimeoutError, OSError) as error:
            return ProbeResult(False, f"{type(error).__name__}: {error}"[:200])


class ExecProbe:
    """Passes when the command exits 0 within the timeout (run on the instance's own node)."""

    def __init__(self, command: tuple[str, ...], env: Mapping[str, str] | None = None) -> None:
        self.command = command
        self.env = dict(env or {})

    async def check(self, host: str, timeout: float, source: str | None = None) -> ProbeResult:
        try:
            proc = await asyncio.create_subprocess_exec(
                *self.command, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.DEVNULL, env={**self.env, "NODEORCH_NODE_ADDR": host} if self.env else None,
            )
        except OSError as error:
            return ProbeResult(False, f"cannot run {self.command[0]!r}: {error.strerror}")
        try:
            async with asyncio.timeout(timeout):
                code = await proc.wait()
        except TimeoutError:
            proc.kill()
            await proc.wait()
            return ProbeResult(False, f"timed out after {timeout}s")
        return ProbeResult(code == 0, f"exit {code}")
