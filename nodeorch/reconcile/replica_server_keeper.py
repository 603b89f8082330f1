"""Keeps this node's replica server running while the desired state has volumes, and reports the
replicas it holds.

The replica server is a process of its own (`python -m drivers.volumes replica`), in a session of
its own: it outlives the agent, so block I/O goes on while the agent restarts, and a restarted
agent adopts it (pid and process start time in `data_dir/volumes/replica-server.json`). It is
restarted with backoff when it exits, and never stopped by the agent: replicas of a volume removed
from the file stay reachable until `nodeorch volume delete`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from drivers.containers.process import process_start_ticks
from nodeorch.core.backoff import Backoff, BackoffPolicy
from nodeorch.state.records import ReplicaMode, ReplicaRecord

log = logging.getLogger(__name__)

CHECK_INTERVAL = 1.0
STATUS_FRESH = 5.0
"""A status file older than this (wall clock) is not trusted: its server stopped writing it."""
RESTART_BACKOFF = BackoffPolicy(initial=1.0, maximum=30.0)
STABLE_AFTER = 60.0
"""A server that ran this long has its restart backoff reset."""


class ReplicaServerKeeper:
    def __init__(self, data_dir: Path, listen: tuple[str, int], cluster: str, keyring: Path | None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.folder = data_dir / "volumes"
        self.pid_file = self.folder / "replica-server.json"
        self.status_file = self.folder / "replica-server.status"
        self._listen = listen
        self._cluster = cluster
        self._keyring = keyring
        self._clock = clock
        self._child: subprocess.Popen[bytes] | None = None
        self._started_at = 0.0
        self._backoff = Backoff(RESTART_BACKOFF)
        self.pid: int | None = None
        self.replicas: tuple[ReplicaRecord, ...] = ()

    def argv(self) -> list[str]:
        host, port = self._listen
        secret = ["--keyring", str(self._keyring)] if self._keyring is not None else ["--insecure"]
        return [sys.executable, "-m", "drivers.volumes", "replica", "--dir", str(self.folder / "replicas"),
                "--listen", f"{host}:{port}", "--cluster", self._cluster, *secret,
                "--status-file", str(self.status_file)]

    async def run(self, wanted: Callable[[], bool],
                  publish: Callable[[tuple[ReplicaRecord, ...]], Awaitable[None]]) -> None:
        """Until cancelled: adopt or start the server when `wanted()`, restart it when it exits,
        and publish its replicas when they change."""
        self.pid = self._adopt()
        while True:
            if self.pid is not None and not self._alive(self.pid):
                log.warning("replica server (pid %d) exited; starting it again", self.pid)
                self._backoff.failed("server", self._clock())
                self.pid = None
            elif self.pid is not None and self._clock() - self._started_at > STABLE_AFTER:
                self._backoff.succeeded("server")
            if self.pid is None and (wanted() or self.pid_file.exists()) \
                    and self._clock() >= self._backoff.ready_at("server"):
                self.pid = self._start()
            replicas = self._read_replicas()
            if replicas != self.replicas:
                self.replicas = replicas
                await publish(replicas)
            await asyncio.sleep(CHECK_INTERVAL)

    def _adopt(self) -> int | None:
        try:
            record: dict[str, Any] = json.loads(self.pid_file.read_text())
            pid, ticks = int(record["pid"]), record["start_ticks"]
        except (OSError, ValueError, KeyError, TypeError):
            return None
        if process_start_ticks(pid) != ticks:
            return None
        log.info("adopted the running replica server (pid %d)", pid)
        return pid

    def _alive(self, pid: int) -> bool:
        if self._child is not None and self._child.pid == pid:
            return self._child.poll() is None
        return process_start_ticks(pid) is not None

    def _start(self) -> int | None:
        self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        with (self.folder / "replica-server.log").open("ab") as out:
            try:
                self._child = subprocess.Popen(self.argv(), stdin=subprocess.DEVNULL, stdout=out,
                                               stderr=subprocess.STDOUT, start_new_session=True, close_fds=True)
            except OSError as error:
                log.error("cannot start the replica server: %s", error.strerror)
                self._backoff.failed("server", self._clock())
                return None
        pid = self._child.pid
        self._started_at = self._clock()
        temp = self.pid_file.with_suffix(".tmp")
        temp.write_text(json.dumps({"pid": pid, "start_ticks": process_start_ticks(pid),
                                    "listen": f"{self._listen[0]}:{self._listen[1]}"}))
        temp.replace(self.pid_file)
        log.info("replica server started (pid %d) on %s:%d", pid, *self._listen)
        return pid

    def _read_replicas(self) -> tuple[ReplicaRecord, ...]:
        """What the server's status file says it holds, while the server runs and writes it."""
        if self.pid is None:
            return ()
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            status = json.loads(self.status_file.read_text())
            if time.time() - float(status["updated_at"]) > STATUS_FRESH:
                return ()
            return tuple(ReplicaRecord(
                volume=str(r["volume"]), size=int(r["size"]), mode=ReplicaMode.DETACHED, epoch=int(r["epoch"]),
                set_epoch=int(r.get("set_epoch", r["epoch"])), set_version=int(r["set_version"]),
                seq=int(r["seq"]), used=int(r.get("used", 0)),
            ) for r in status["replicas"])
        return ()


def stop_replica_server(data_dir: Path, grace: float = 5.0) -> None:
    """Stop the replica server an agent with this data dir ran (`nodeorch dev` and tests clean up
    with it; a real node keeps its server across agent restarts)."""
    try:
        record = json.loads((data_dir / "volumes" / "replica-server.json").read_text())
        pid, ticks = int(record["pid"]), record["start_ticks"]
    except (OSError, ValueError, KeyError, TypeError):
        return
    if process_start_ticks(pid) != ticks:
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while process_start_ticks(pid) == ticks and time.monotonic() < deadline:
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        if process_start_ticks(pid) == ticks:
            os.kill(pid, signal.SIGKILL)
