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
import dataclasses
import logging
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from nodeorch.core.backoff import Backoff, BackoffPolicy
from nodeorch.core.beat import Beat
from nodeorch.reconcile.detached_process import read_fresh_status, read_record, start_detached, terminate
from nodeorch.state.records import ReplicaMode, ReplicaRecord

log = logging.getLogger(__name__)

CHECK_INTERVAL = 1.0
RESTART_BACKOFF = BackoffPolicy(initial=1.0, maximum=30.0)
STABLE_AFTER = 60.0
"""A server that ran this long has its restart backoff reset."""
USAGE_REFRESH = 30.0
"""How often a change of only the write counters (`seq`, `used`) is published: they change with
every write, and each publication is gossiped to every node and wakes its reconcilers."""


def worth_publishing(published: tuple[ReplicaRecord, ...], current: tuple[ReplicaRecord, ...],
                     since_published: float) -> bool:
    """Whether the replicas read now should go into this node's document (pure): at once when
    anything but the write counters changed, the counters alone every USAGE_REFRESH seconds."""
    if current == published:
        return False
    return _without_counters(current) != _without_counters(published) or since_published >= USAGE_REFRESH


def _without_counters(replicas: tuple[ReplicaRecord, ...]) -> tuple[ReplicaRecord, ...]:
    return tuple(dataclasses.replace(r, seq=0, used=0) for r in replicas)


class ReplicaServerKeeper:
    def __init__(self, data_dir: Path, listen: tuple[str, int], cluster: str, keyring: Path | None,
                 clock: Callable[[], float] = time.monotonic, beat: Beat | None = None) -> None:
        self.folder = data_dir / "volumes"
        self.pid_file = self.folder / "replica-server.json"
        self.status_file = self.folder / "replica-server.status"
        self._listen = listen
        self._cluster = cluster
        self._keyring = keyring
        self._clock = clock
        self._beat = beat or Beat()
        self._child: subprocess.Popen[bytes] | None = None
        self._started_at = 0.0
        self._backoff = Backoff(RESTART_BACKOFF)
        self.pid: int | None = None
        self.replicas: tuple[ReplicaRecord, ...] = ()
        """As last published."""
        self._published_at = 0.0

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
            if worth_publishing(self.replicas, replicas, self._clock() - self._published_at):
                self.replicas, self._published_at = replicas, self._clock()
                await publish(replicas)
            await asyncio.sleep(self._beat.until_next(CHECK_INTERVAL))

    def _adopt(self) -> int | None:
        record = read_record(self.pid_file)
        if record is None:
            return None
        log.info("adopted the running replica server (pid %d)", record["pid"])
        return int(record["pid"])

    def _alive(self, pid: int) -> bool:
        """Our own child by its exit status (asked each second: no file to parse); an adopted
        server by its pid record, which also tells a reused pid from it."""
        if self._child is not None and self._child.pid == pid:
            return self._child.poll() is None and self.pid_file.exists()
        return read_record(self.pid_file) is not None

    def _start(self) -> int | None:
        try:
            self._child = start_detached(self.argv(), self.folder / "replica-server.log", self.pid_file,
                                         {"listen": f"{self._listen[0]}:{self._listen[1]}"})
        except OSError as error:
            log.error("cannot start the replica server: %s", error.strerror)
            self._backoff.failed("server", self._clock())
            return None
        self._started_at = self._clock()
        log.info("replica server started (pid %d) on %s:%d", self._child.pid, *self._listen)
        return self._child.pid

    def _read_replicas(self) -> tuple[ReplicaRecord, ...]:
        """What the server's status file says it holds, while the server runs and writes it."""
        status = read_fresh_status(self.status_file) if self.pid is not None else None
        if status is None:
            return ()
        with contextlib.suppress(ValueError, KeyError, TypeError):
            return tuple(ReplicaRecord(
                volume=str(r["volume"]), size=int(r["size"]), mode=ReplicaMode.DETACHED, epoch=int(r["epoch"]),
                set_epoch=int(r.get("set_epoch", r["epoch"])), set_version=int(r["set_version"]),
                seq=int(r["seq"]), used=int(r.get("used", 0)), volume_id=str(r.get("volume_id", "")),
            ) for r in status["replicas"])
        return ()


def stop_replica_server(data_dir: Path, grace: float = 5.0) -> None:
    """Stop the replica server an agent with this data dir ran (`nodeorch dev` and tests clean up
    with it; a real node keeps its server across agent restarts)."""
    terminate(data_dir / "volumes" / "replica-server.json", grace)
