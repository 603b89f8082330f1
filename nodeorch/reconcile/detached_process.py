"""Processes the agent starts that must outlive it (the replica server, engines): each runs in a
session of its own and is remembered in a pid record (pid, process start time, and what it runs
with), so a restarted agent adopts it and never mistakes a reused pid for it."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

from drivers.containers.process import process_start_ticks


def start_detached(argv: list[str], log: Path, record: Path, extra: dict[str, Any] | None = None
                   ) -> subprocess.Popen[bytes]:
    """Start `argv` in its own session, output appended to `log`, and write its pid record (with
    `argv` and `extra`); OSError if it cannot start."""
    record.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    with log.open("ab") as out:
        child = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                 start_new_session=True, close_fds=True)
    temp = record.with_suffix(".tmp")
    temp.write_text(json.dumps({"pid": child.pid, "start_ticks": process_start_ticks(child.pid), "argv": argv,
                                **(extra or {})}))
    temp.replace(record)
    return child


def read_record(record: Path) -> dict[str, Any] | None:
    """The pid record, if the process it names still runs (same pid, same start time)."""
    try:
        data: dict[str, Any] = json.loads(record.read_text())
        pid, ticks = int(data["pid"]), data["start_ticks"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return data if process_start_ticks(pid) == ticks else None


STATUS_FRESH = 5.0
"""A status file older than this (wall clock) is not trusted: its process stopped writing it."""


def read_fresh_status(path: Path) -> dict[str, Any] | None:
    """The JSON status a volume process rewrites every second, if it is readable and recent."""
    try:
        status: dict[str, Any] = json.loads(path.read_text())
        fresh = time.time() - float(status["updated_at"]) <= STATUS_FRESH
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return status if fresh else None


def _still(pid: int, ticks: object) -> bool:
    return process_start_ticks(pid) == ticks


def _ask_to_stop(record: Path) -> tuple[int, object] | None:
    """SIGTERM the recorded process if it runs; its (pid, start ticks)."""
    data = read_record(record)
    if data is None:
        return None
    with contextlib.suppress(ProcessLookupError):
        os.kill(int(data["pid"]), signal.SIGTERM)
    return int(data["pid"]), data["start_ticks"]


def _finish(record: Path, pid: int, ticks: object) -> None:
    with contextlib.suppress(ProcessLookupError):
        if _still(pid, ticks):
            os.kill(pid, signal.SIGKILL)
    _forget(record)


def terminate(record: Path, grace: float) -> None:
    """SIGTERM the recorded process, SIGKILL after `grace` (blocking: for tools and tests)."""
    asked = _ask_to_stop(record)
    if asked is None:
        return
    pid, ticks = asked
    deadline = time.monotonic() + grace
    while _still(pid, ticks) and time.monotonic() < deadline:
        time.sleep(0.05)
    _finish(record, pid, ticks)


async def terminate_async(record: Path, grace: float, child: subprocess.Popen[bytes] | None = None) -> None:
    """The same, without holding up the event loop; `child`: the Popen if we started it (reaped)."""
    asked = _ask_to_stop(record)
    if asked is None:
        return
    pid, ticks = asked
    loop = asyncio.get_running_loop()
    deadline = loop.time() + grace
    while loop.time() < deadline:
        if child is not None and child.pid == pid and child.poll() is not None:
            break
        if not _still(pid, ticks):
            break
        await asyncio.sleep(0.05)
    _finish(record, pid, ticks)
    if child is not None and child.pid == pid:
        with contextlib.suppress(subprocess.TimeoutExpired):
            child.wait(timeout=1)  # reaped at once: it exited or was just killed


def _forget(record: Path) -> None:
    record.unlink(missing_ok=True)
