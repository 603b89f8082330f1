"""Helpers shared by the benchmarks: member processes watched through their output lines,
ports, polling, formatting."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time a process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0

# Event lines -------------------------------------------------------------------------------------

SERF_PATTERNS = [
    (re.compile(r"serf: EventMemberJoin: (\S+)"), "join"),
    (re.compile(r"memberlist: Suspect (\S+) has failed"), "suspect"),
    (re.compile(r"serf: EventMemberFailed: (\S+)"), "dead"),
    (re.compile(r"serf: EventMemberLeave: (\S+)"), "left"),
]


def parse_json_line(line: str) -> tuple[str, str] | None:
    try:
        obj = json.loads(line)
    except ValueError:
        return None
    if obj.get("type") == "event":
        return obj["kind"], obj["member"]["name"]
    return None


def parse_serf_line(line: str) -> tuple[str, str] | None:
    for pattern, kind in SERF_PATTERNS:
        match = pattern.search(line)
        if match:
            return kind, match.group(1)
    return None


@dataclass
class MonitoredProcess:
    name: str
    port: int
    argv: list[str]
    parse: Callable[[str], tuple[str, str] | None]
    proc: asyncio.subprocess.Process | None = None
    events: list[tuple[float, str, str]] = field(default_factory=list)
    reader: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self.events = []
        self.proc = await asyncio.create_subprocess_exec(
            *self.argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT, env=dict(os.environ, PYTHONUNBUFFERED="1"),
        )
        self.reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        while line := await self.proc.stdout.readline():
            parsed = self.parse(line.decode(errors="replace"))
            if parsed:
                self.events.append((time.time(), *parsed))

    def first(self, kind: str, member: str, after: float) -> float | None:
        for at, k, m in self.events:
            if k == kind and m == member and at >= after:
                return at
        return None

    def seen(self, kind: str) -> set[str]:
        return {m for _, k, m in self.events if k == kind}

    def signal(self, signum: int) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.send_signal(signum)

    async def stop(self) -> None:
        if self.proc is None:
            return
        self.signal(signal.SIGKILL)
        await self.proc.wait()

    def cpu_seconds(self) -> float:
        assert self.proc is not None
        return cpu_seconds(self.proc.pid)

    def rss_mb(self) -> float:
        assert self.proc is not None
        return rss_mb(self.proc.pid)


def free_ports(count: int, start: int) -> list[int]:
    ports: list[int] = []
    port = start
    while len(ports) < count:
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u, socket.socket() as t:
                u.bind(("127.0.0.1", port))
                t.bind(("127.0.0.1", port))
            ports.append(port)
        except OSError:
            pass
        port += 1
    return ports


async def wait_for(check: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        await asyncio.sleep(0.02)
    return check()


def fmt(value: float | None, unit: str = "", digits: int = 2) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}{unit}"


def median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


