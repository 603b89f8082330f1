"""Runs the engines of the volumes placed on this node, and reports them.

An engine is a process of its own (`python -m drivers.volumes engine`), in a session of its own,
serving its volume over NBD on a Unix socket under `data_dir/volumes/engines`: like the replica
server it outlives the agent (I/O goes on while the agent restarts) and a restarted agent adopts
it (see detached_process). An engine whose arguments change (its replicas moved) is stopped and
started again with the new ones; one no longer placed here is stopped with SIGTERM (it flushes
first); one that exits is started again with backoff.
"""

from __future__ import annotations

import contextlib
import logging
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from nodeorch.core.backoff import Backoff, BackoffPolicy
from nodeorch.reconcile.detached_process import (
    read_fresh_status,
    read_record,
    start_detached,
    terminate,
    terminate_async,
)
from nodeorch.reconcile.volume_plan import EngineOrder
from nodeorch.state.records import EngineRecord, EngineState

log = logging.getLogger(__name__)

RESTART_BACKOFF = BackoffPolicy(initial=1.0, maximum=30.0)
STOP_GRACE = 10.0
START_DELAY = 2.0
"""A new engine starts only once its volume has been ordered here this long: nodes learn of a
death at slightly different moments, and an engine started on a passing view only to be fenced
by the right one interrupts I/O twice."""


class EngineKeeper:
    def __init__(self, data_dir: Path, cluster: str, keyring: Path | None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.folder = data_dir / "volumes" / "engines"
        self._cluster = cluster
        self._keyring = keyring
        self._clock = clock
        self._children: dict[str, subprocess.Popen[bytes]] = {}
        self._backoff = Backoff(RESTART_BACKOFF)
        self._ordered_since: dict[str, float] = {}

    def socket(self, volume: str) -> Path:
        return self.folder / f"{volume}.sock"

    def _record(self, volume: str) -> Path:
        return self.folder / f"{volume}.json"

    def _status(self, volume: str) -> Path:
        return self.folder / f"{volume}.status"

    def argv(self, order: EngineOrder) -> list[str]:
        secret = ["--keyring", str(self._keyring)] if self._keyring is not None else ["--insecure"]
        return [sys.executable, "-m", "drivers.volumes", "engine", "--volume", order.volume, "--size", str(order.size),
                *[arg for address in order.replicas for arg in ("--replica", address)], "--cluster", self._cluster,
                *secret, "--listen", f"unix:{self.socket(order.volume)}", "--status-file",
                str(self._status(order.volume)), "--replica-timeout", f"{order.replica_timeout:g}s"]

    def running(self) -> dict[str, dict[str, Any]]:
        """The engines this node runs (adopted or started): volume -> their pid record."""
        found: dict[str, dict[str, Any]] = {}
        for path in sorted(self.folder.glob("*.json")) if self.folder.is_dir() else ():
            child = self._children.get(path.stem)
            if child is not None and child.poll() is not None:
                del self._children[path.stem]  # reaped; its record names a process that is gone
            record = read_record(path)
            if record is not None:
                found[path.stem] = record
        return found

    async def reconcile(self, orders: Mapping[str, EngineOrder]) -> None:
        """Start what is ordered (for START_DELAY) and not running, or runs with other arguments;
        stop the rest."""
        running = self.running()
        for volume, record in running.items():
            order = orders.get(volume)
            if order is None or record.get("argv") != self.argv(order):
                log.info("engine of %s: %s", volume, "no longer placed here" if order is None
                         else "its replicas changed; starting it again")
                await terminate_async(self._record(volume), STOP_GRACE, self._children.pop(volume, None))
                running = {v: r for v, r in running.items() if v != volume}
        now = self._clock()
        self._ordered_since = {v: self._ordered_since.get(v, now) for v in orders if v not in running}
        for volume, order in orders.items():
            if volume in running or now < self._backoff.ready_at(volume) \
                    or now - self._ordered_since[volume] < START_DELAY:
                continue
            argv = self.argv(order)
            try:
                self._children[volume] = start_detached(argv, self.folder / f"{volume}.log", self._record(volume))
            except OSError as error:
                log.error("engine of %s: cannot start: %s", volume, error.strerror)
            else:
                log.info("engine of %s started on %s", volume, ", ".join(order.replicas))
            # counted as a failure until its status shows it serving: an engine that exits at once
            # (no majority reachable yet) is started again later, not in a loop
            self._backoff.failed(volume, now)

    def records(self, node_of: Mapping[str, str]) -> tuple[EngineRecord, ...]:
        """What each running engine's status file says, while fresh; `node_of` names the node of
        each replica address."""
        records = []
        for volume in self.running():
            status = read_fresh_status(self._status(volume))
            with contextlib.suppress(TypeError, ValueError, KeyError):
                if status is not None:
                    members = tuple(node_of.get(a, a) for a in status["members"])
                    records.append(EngineRecord(volume, EngineState(status["state"]), int(status["epoch"]), members))
                    self._backoff.succeeded(volume)
                    continue
            records.append(EngineRecord(volume, EngineState.STARTING))
        return tuple(records)


def stop_engines(data_dir: Path, grace: float = 5.0) -> None:
    """Stop every engine an agent with this data dir runs (for `nodeorch dev` and tests)."""
    keeper = EngineKeeper(data_dir, "", None)
    for volume in keeper.running():
        terminate(keeper._record(volume), grace)
