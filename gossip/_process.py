"""Run `python -m gossip node` as a child process and talk to it: the demo, the integration tests
and the benchmarks drive real members, each its own OS process, through this."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import time
from collections.abc import Callable, Iterable
from typing import Any

from gossip._errors import GossipError


class NodeProcess:
    def __init__(
        self,
        name: str,
        bind: str,
        *,
        join: Iterable[str] = (),
        cluster: str = "default",
        keys: Iterable[str] = (),
        insecure: bool = False,
        profile: str = "lan",
        log_level: str = "WARNING",
    ) -> None:
        self.name = name
        self.bind = bind
        self.args = [sys.executable, "-m", "gossip", "node", "--name", name, "--bind", bind,
                     "--cluster", cluster, "--profile", profile, "--log-level", log_level]
        for seed in join:
            self.args += ["--join", seed]
        for key in keys:
            self.args += ["--key", key]
        if insecure:
            self.args.append("--insecure")
        self.events: list[dict[str, Any]] = []
        """Every event line, with "received": the parent's time.time() when it arrived."""
        self.ready: dict[str, Any] = {}
        self._proc: asyncio.subprocess.Process | None = None
        self._replies: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._changed = asyncio.Condition()
        self._reader: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()

    @property
    def pid(self) -> int:
        assert self._proc is not None
        return self._proc.pid

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.returncode is None

    async def start(self, timeout: float = 20.0) -> dict[str, Any]:
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.events.clear()
        self._replies = asyncio.Queue()
        self._proc = await asyncio.create_subprocess_exec(
            *self.args, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, env=env
        )
        self._reader = asyncio.create_task(self._read())
        async with asyncio.timeout(timeout):
            self.ready = await self._replies.get()
        if self.ready.get("type") == "join_failed":
            async with asyncio.timeout(timeout):
                self.ready = await self._replies.get()
        if self.ready.get("type") != "ready":
            raise GossipError(f"{self.name} did not start: {self.ready}")
        return self.ready

    async def _read(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        while True:
            line = await self._proc.stdout.readline()
            if not line:
                return
            try:
                obj = json.loads(line)
            except ValueError:
                continue
            obj["received"] = time.time()
            if obj.get("type") in ("event", "app"):
                self.events.append(obj)
                async with self._changed:
                    self._changed.notify_all()
            else:
                await self._replies.put(obj)

    async def command(self, line: str, timeout: float = 10.0) -> dict[str, Any]:
        async with self._lock:
            assert self._proc is not None and self._proc.stdin is not None
            self._proc.stdin.write(line.encode() + b"\n")
            await self._proc.stdin.drain()
            async with asyncio.timeout(timeout):
                return await self._replies.get()

    async def members(self) -> dict[str, dict[str, Any]]:
        reply = await self.command("members")
        return {m["name"]: m for m in reply["members"]}

    async def stats(self) -> dict[str, int]:
        reply = await self.command("stats")
        stats: dict[str, int] = reply["stats"]
        return stats

    async def wait_event(self, predicate: Callable[[dict[str, Any]], bool], timeout: float) -> dict[str, Any]:
        """The first event (already seen or still to come) matching predicate."""
        async with asyncio.timeout(timeout):
            async with self._changed:
                while True:
                    for event in self.events:
                        if predicate(event):
                            return event
                    await self._changed.wait()

    def kill(self) -> None:
        """kill -9: no leave, no goodbye."""
        if self.running:
            assert self._proc is not None
            self._proc.send_signal(signal.SIGKILL)

    def signal(self, signum: int) -> None:
        if self.running:
            assert self._proc is not None
            self._proc.send_signal(signum)

    async def wait(self, timeout: float = 10.0) -> int | None:
        if self._proc is None:
            return None
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._proc.wait()
        if self._reader is not None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(1.0):
                    await self._reader
        return self._proc.returncode

    async def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM (a graceful leave), then SIGKILL if it lingers."""
        self.signal(signal.SIGTERM)
        code = await self.wait(timeout)
        if code is None:
            self.kill()
            code = await self.wait(timeout)
        return code


async def wait_until(check: Callable[[], Any], timeout: float, interval: float = 0.1) -> Any:
    """Poll an async or plain check until it returns something truthy; TimeoutError otherwise."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return result
        if time.monotonic() >= deadline:
            raise TimeoutError(f"condition not met within {timeout}s")
        await asyncio.sleep(interval)
