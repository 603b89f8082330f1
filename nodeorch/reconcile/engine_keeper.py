"""Runs the engines of the volumes placed on this node, and reports them.

An engine is a process of its own (`python -m drivers.volumes engine`), in a session of its own,
serving its volume over NBD on a Unix socket under `data_dir/volumes/engines`: like the replica
server it outlives the agent (I/O goes on while the agent restarts) and a restarted agent adopts
it (see detached_process). Its replica servers are listed in a file beside it: when they change
(a lost replica replaced), the file is rewritten and the engine told with SIGHUP, and it goes on
serving (an attached filesystem never notices). An engine whose other arguments change is stopped
and started again; one no longer placed here is stopped with SIGTERM (it flushes first), unless
its volume is still attached here; one that exits is started again with backoff.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Collection, Mapping
from pathlib import Path
from typing import Any

from drivers.attach.fuse_loop import release_all
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

    def _replicas(self, volume: str) -> Path:
        return self.folder / f"{volume}.replicas"

    def _write_replicas(self, order: EngineOrder) -> bool:
        """Write the order's replica list beside the engine; True if it changed."""
        path = self._replicas(order.volume)
        text = "".join(f"{address}{' hold' if address in order.held else ''}\n" for address in order.replicas)
        with contextlib.suppress(OSError):
            if path.read_text() == text:
                return False
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        temp = path.with_suffix(".tmp")
        temp.write_text(text)
        temp.replace(path)
        return True

    def volume_tool(self, command: str, *args: str) -> list[str]:
        """argv of `python -m drivers.volumes COMMAND ARGS` with this cluster's credentials."""
        secret = ["--keyring", str(self._keyring)] if self._keyring is not None else ["--insecure"]
        return [sys.executable, "-m", "drivers.volumes", command, *args, "--cluster", self._cluster, *secret]

    def argv(self, order: EngineOrder) -> list[str]:
        return self.volume_tool("engine", "--volume", order.volume, "--size", str(order.size),
                                "--replicas-file", str(self._replicas(order.volume)),
                                "--listen", f"unix:{self.socket(order.volume)}", "--status-file",
                                str(self._status(order.volume)), "--replica-timeout", f"{order.replica_timeout:g}s")

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

    async def reconcile(self, orders: Mapping[str, EngineOrder], attached: Collection[str] = ()) -> None:
        """Start what is ordered (for START_DELAY) and not running, or runs with other arguments;
        hand new replica lists to running engines; stop the rest, but for the `attached` volumes:
        their filesystem is unmounted first."""
        running = self.running()
        for volume, record in running.items():
            order = orders.get(volume)
            if order is None and volume in attached:
                continue
            if order is not None and record.get("argv") == self.argv(order):
                # told only once it serves (its SIGHUP handler is in place); until then it reads the file
                if read_fresh_status(self._status(volume)) is not None and self._write_replicas(order):
                    log.info("engine of %s: replicas now %s", volume, ", ".join(order.replicas))
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(int(record["pid"]), signal.SIGHUP)
                continue
            log.info("engine of %s: %s", volume, "no longer placed here" if order is None
                     else "its arguments changed; starting it again")
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
                self._write_replicas(order)
                self._children[volume] = start_detached(argv, self.folder / f"{volume}.log", self._record(volume))
            except OSError as error:
                log.error("engine of %s: cannot start: %s", volume, error.strerror)
            else:
                log.info("engine of %s started on %s", volume, ", ".join(order.replicas))
            # counted as a failure until its status shows it serving: an engine that exits at once
            # (no majority reachable yet) is started again later, not in a loop
            self._backoff.failed(volume, now)

    def serving(self, volume: str) -> bool:
        """Whether the engine of `volume` runs here and serves (healthy or degraded), by its status."""
        status = read_fresh_status(self._status(volume))
        return status is not None and status.get("state") in (EngineState.HEALTHY.value, EngineState.DEGRADED.value) \
            and volume in self.running()

    def statuses(self) -> dict[str, dict[str, Any] | None]:
        """volume -> what the status file of its engine running here says, while fresh (else None):
        read once per pass and handed to `records` and `rebuilt`."""
        return {volume: read_fresh_status(self._status(volume)) for volume in self.running()}

    def io(self) -> dict[str, dict[str, int]]:
        """volume -> the I/O counters of its engine running here (operations and bytes read and
        written, flushes, rebuild bytes...), while its status is fresh."""
        counters = {}
        for volume, status in self.statuses().items():
            with contextlib.suppress(TypeError, ValueError, AttributeError):
                if status is not None:
                    counters[volume] = {str(k): int(v) for k, v in status["io"].items()}
        return counters

    def rebuilt(self, node_of: Mapping[str, str], statuses: Mapping[str, dict[str, Any] | None]
                ) -> list[tuple[str, str, float]]:
        """(volume, node, when) of the last rebuilds the engines here completed."""
        done = []
        for volume, status in statuses.items():
            with contextlib.suppress(TypeError, ValueError, KeyError, AttributeError):
                for entry in status["rebuilt"] if status is not None else ():
                    done.append((volume, node_of.get(entry["replica"], entry["replica"]), float(entry["at"])))
        return done

    def records(self, node_of: Mapping[str, str], statuses: Mapping[str, dict[str, Any] | None] | None = None
                ) -> tuple[EngineRecord, ...]:
        """What each running engine's status file says, while fresh (`statuses`, read now if not
        given); `node_of` names the node of each replica address."""
        records = []
        for volume, status in (self.statuses() if statuses is None else statuses).items():
            with contextlib.suppress(TypeError, ValueError, KeyError, AttributeError):
                if status is not None:
                    members = tuple(node_of.get(a, a) for a in status["members"])
                    rebuilds = tuple((node_of.get(a, a), round(float(r["progress"]), 2))
                                     for a, r in status["rebuilds"].items())
                    held = tuple(node_of.get(a, a) for a in status.get("held", ()))
                    records.append(EngineRecord(volume, EngineState(status["state"]), int(status["epoch"]), members,
                                                rebuilds, held))
                    self._backoff.succeeded(volume)
                    continue
            records.append(EngineRecord(volume, EngineState.STARTING))
        return tuple(records)


def stop_engines(data_dir: Path, grace: float = 5.0) -> None:
    """Stop every engine an agent with this data dir runs, after releasing what it attached (for
    `nodeorch dev` and tests; the instances using them are stopped first)."""
    release_all(data_dir / "volumes")
    keeper = EngineKeeper(data_dir, "", None)
    for volume in keeper.running():
        terminate(keeper._record(volume), grace)
