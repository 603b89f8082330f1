"""Operators' requests about volumes, carried out without a master.

`delete`: a volume nothing declares any more is deleted by a tombstone (volume name and id) in this
node's document, kept in `data_dir/volumes/deletions.json` across restarts; every node holding a
replica of that volume id drops it (`drop_deleted`, run by the volume keeper each second). A new
volume reusing the name has another id and is never touched.

`salvage`: the data path's salvage for a volume no engine can start (a majority of its replicas
lost): the named node's replica becomes the truth on every reachable replica.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol

from drivers.captured import run_captured
from nodeorch.errors import NodeorchError
from nodeorch.reconcile.engine_keeper import EngineKeeper
from nodeorch.reconcile.volume_plan import VolumeView
from nodeorch.spec.desired import DesiredState
from nodeorch.spec.volume_spec import VolumeSpec
from nodeorch.state.event_log import EventLog
from nodeorch.state.json_file import load_json, save_json
from nodeorch.state.node_document import NodeDocument
from nodeorch.state.records import EngineRecord, EngineState, RecordError, VolumeDeletion

log = logging.getLogger(__name__)

MAX_DELETIONS = 64
"""Tombstones a node keeps (the oldest go first)."""
TOOL_TIMEOUT = 600.0
"""A salvage copies a whole volume: minutes for a big one."""
DROP_RETRY = 30.0
"""After a failed drop of a deleted volume's replica, the next attempt."""


class RequestsHost(Protocol):
    """What carrying out requests needs from the agent."""

    name: str
    events: EventLog

    @property
    def documents(self) -> Mapping[str, NodeDocument]: ...

    def desired_state(self) -> DesiredState | None: ...

    def stale(self, name: str) -> bool: ...

    async def publish_deletions(self, deletions: tuple[VolumeDeletion, ...]) -> None: ...


class VolumeRequestError(NodeorchError):
    """An operator's request about a volume cannot be done; `status` is its HTTP status."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class VolumeRequests:
    def __init__(self, host: RequestsHost, engines: EngineKeeper, view: Callable[[], VolumeView],
                 folder: Path | None, replica_server: str) -> None:
        self._host = host
        self._engines = engines
        self._view = view
        self._folder = folder
        self._replica_server = replica_server
        self.deletions = self._load_deletions()
        self._dropped: set[tuple[str, str]] = set()
        self._retry_at: dict[tuple[str, str], float] = {}
        self._failures: dict[tuple[str, str], str] = {}

    def _deletions_file(self) -> Path | None:
        return None if self._folder is None else self._folder / "deletions.json"

    def _load_deletions(self) -> tuple[VolumeDeletion, ...]:
        path = self._deletions_file()
        raw = load_json(path) if path is not None else None
        try:
            return tuple(VolumeDeletion.from_wire(entry) for entry in raw or ())[-MAX_DELETIONS:]
        except (RecordError, TypeError, AttributeError) as error:
            log.error("%s: unreadable, ignored: %s", path, error)
            return ()

    def _save_deletions(self) -> None:
        path = self._deletions_file()
        if path is not None:
            save_json(path, [d.to_wire() for d in self.deletions])

    def _desired_volume(self, volume: str) -> VolumeSpec | None:
        desired = self._host.desired_state()
        return next((v for v in desired.volumes if v.name == volume), None) if desired else None

    def _engine_of(self, volume: str) -> tuple[str, EngineRecord] | None:
        for node, document in sorted(self._host.documents.items()):
            if not self._host.stale(node):
                for engine in document.engines:
                    if engine.volume == volume:
                        return node, engine
        return None

    async def delete(self, volume: str) -> dict[str, Any]:
        """Have every node drop its replicas of `volume`, which nothing declares any more."""
        if self._desired_volume(volume) is not None:
            raise VolumeRequestError(409, f"volume {volume} is in the desired state: remove it from desired.toml "
                                          "first (only a volume nothing declares can be deleted)")
        holders = sorted({(node, r.volume_id) for node, document in self._host.documents.items()
                          for r in document.replicas if r.volume == volume})
        if not holders:
            raise VolumeRequestError(404, f"no volume {volume!r}: no node reports a replica of it")
        engine = self._engine_of(volume)
        if engine is not None:
            raise VolumeRequestError(409, f"volume {volume}: its engine still runs on {engine[0]}; it stops once the "
                                          "volume is detached there")
        ids = sorted({volume_id for _, volume_id in holders if volume_id})
        now = time.time()
        kept = [d for d in self.deletions if d.volume != volume]
        self.deletions = (*kept, *(VolumeDeletion(volume, i, now) for i in ids))[-MAX_DELETIONS:]
        self._save_deletions()
        self._host.events.append("volume.deleting", volume=volume, nodes=sorted({n for n, _ in holders}))
        await self._host.publish_deletions(self.deletions)
        return {"volume": volume, "volume_ids": ids, "nodes": sorted({node for node, _ in holders})}

    async def drop_deleted(self, desired: DesiredState) -> None:
        """Drop this node's replicas that a tombstone in any document names."""
        tombstones = {(d.volume, d.volume_id) for document in self._host.documents.values()
                      for d in document.deletions}
        own = self._host.documents.get(self._host.name)
        declared = {v.name for v in desired.volumes}
        for replica in own.replicas if own else ():
            key = (replica.volume, replica.volume_id)
            if key not in tombstones or replica.volume in declared or key in self._dropped \
                    or time.monotonic() < self._retry_at.get(key, 0.0):
                continue
            ok, output = await self._tool("drop", "--volume", replica.volume, "--volume-id", replica.volume_id,
                                          "--replica", self._replica_server)
            if ok:
                self._dropped.add(key)
                log.info("%s: replica of deleted volume %s dropped", self._host.name, replica.volume)
                self._host.events.append("volume.replica_deleted", node=self._host.name, volume=replica.volume)
            else:  # tried again later, not every second; said once per distinct reason
                self._retry_at[key] = time.monotonic() + DROP_RETRY
                if self._failures.get(key) != output:
                    self._failures[key] = output
                    log.error("%s: cannot drop the replica of deleted volume %s (trying again every %.0f s): %s",
                              self._host.name, replica.volume, DROP_RETRY, output)

    async def salvage(self, volume: str, trusted: str) -> dict[str, Any]:
        """Make the replica on node `trusted` the truth for `volume`, copied onto every other
        reachable replica, so its engine can start without a majority of its last member set."""
        spec = self._desired_volume(volume)
        if spec is None:
            raise VolumeRequestError(404, f"no desired volume {volume!r}")
        engine = self._engine_of(volume)
        if engine is not None and engine[1].state in (EngineState.HEALTHY, EngineState.DEGRADED):
            raise VolumeRequestError(409, f"volume {volume} is served by {engine[0]} (epoch {engine[1].epoch}): "
                                          "salvage is only for a volume no engine can start")
        view = self._view()
        document = self._host.documents.get(trusted)
        if document is None or not any(r.volume == volume for r in document.replicas) \
                or trusted not in view.addresses:
            raise VolumeRequestError(409, f"node {trusted} reports no replica of {volume}")
        plan = view.plans.get(volume)
        holders = sorted({*(plan.nodes if plan else ()), trusted})
        replicas = [arg for node in holders if node in view.addresses for arg in ("--replica", view.addresses[node])]
        ok, output = await self._tool("salvage", "--volume", volume, "--size", str(spec.size), *replicas,
                                      "--from", view.addresses[trusted])
        self._host.events.append("volume.salvaged" if ok else "volume.salvage_failed", volume=volume, trusted=trusted)
        if not ok:
            raise VolumeRequestError(409, f"salvage of {volume} from {trusted} failed: {output}")
        return {"volume": volume, "from": trusted, "output": output}

    async def _tool(self, command: str, *args: str) -> tuple[bool, str]:
        """Run `python -m drivers.volumes COMMAND ...`: (succeeded, what it said)."""
        code, output = await run_captured(self._engines.volume_tool(command, *args), TOOL_TIMEOUT)
        return code == 0, output
