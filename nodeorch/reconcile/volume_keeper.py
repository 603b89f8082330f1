"""This node's share of the volumes: the engines placed on it, the filesystems its instances use,
and where the slots of volume services go (the services runner asks).

Each second, once start-up settled: compute the volume view from the gossiped documents, detach
what no local instance uses and no engine order keeps here, run the ordered engines (an engine
whose volume is still attached keeps running until it is detached: stop-first), and publish
what the engines report, with an event when one degrades, faults or is healthy again.
Attaching is done by the start job of the instance that needs it (see `attach_volumes`).
Operators' requests (delete, salvage) are in volume_requests.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import time
from collections.abc import Collection, Iterable, Mapping
from pathlib import Path
from typing import Protocol

from drivers.attach import Attacher, AttachError
from drivers.attach.fuse_loop import FuseLoopAttacher, missing_tools
from drivers.containers import DriverError, InstanceSpec, VolumeBinding, logical_slot
from gossip import Member
from nodeorch.core.beat import Beat
from nodeorch.core.replica_placement import ReplicaPlan
from nodeorch.reconcile.engine_keeper import EngineKeeper
from nodeorch.reconcile.job_table import Job, JobTable
from nodeorch.reconcile.volume_plan import (
    EngineOrder,
    VolumeView,
    VolumeViewCache,
    engine_events,
    engine_orders,
    follows_volumes,
)
from nodeorch.reconcile.volume_requests import VolumeRequests
from nodeorch.spec.desired import DesiredState
from nodeorch.spec.volume_spec import volume_for_slot
from nodeorch.state.event_log import EventLog
from nodeorch.state.node_document import NodeDocument
from nodeorch.state.records import EngineRecord, VolumeDeletion

log = logging.getLogger(__name__)

INTERVAL = 1.0
"""How often engines and attachments are checked against where volumes are placed."""
ENGINE_WAIT = 30.0
"""How long an instance's start waits for its volume's engine to serve here."""


def volume_attacher(folder: Path) -> tuple[Attacher | None, str]:
    """The attacher this node uses, or None and why it cannot attach volumes (said once, at start)."""
    if os.geteuid() != 0:
        reason = "attaching volumes needs root (a loop device and a mount)"
    elif missing := missing_tools():
        reason = f"attaching volumes needs {', '.join(missing)}"
    else:
        return FuseLoopAttacher(folder), ""
    log.info("this node runs no volume service: %s", reason)
    return None, reason


class VolumeHost(Protocol):
    """What the volume keeper needs from the agent."""

    name: str
    events: EventLog
    jobs: JobTable

    @property
    def documents(self) -> Mapping[str, NodeDocument]: ...

    def members(self) -> list[Member]: ...

    def desired_state(self) -> DesiredState | None: ...

    def settled(self) -> bool:
        """Whether start-up is over (the services runner decided its first pass)."""

    def local_slots(self) -> set[str]:
        """"service/slot" of every instance this node holds."""

    async def publish_engines(self, records: tuple[EngineRecord, ...]) -> None: ...

    async def publish_deletions(self, deletions: tuple[VolumeDeletion, ...]) -> None: ...

    def stale(self, name: str) -> bool: ...


class VolumeKeeper:
    def __init__(self, host: VolumeHost, engines: EngineKeeper, attacher: Attacher | None,
                 attach_error: str = "", *, folder: Path | None = None, replica_server: str = "",
                 beat: Beat | None = None) -> None:
        """`folder`: where tombstones are kept; `replica_server`: HOST:PORT of this node's."""
        self._host = host
        self._beat = beat or Beat()
        self.engines = engines
        self.requests = VolumeRequests(host, engines, self.view, folder, replica_server)
        """Operators' requests: delete and salvage."""
        self._rebuild_jobs: dict[tuple[str, str], Job] = {}
        self._seen_rebuilt: set[tuple[str, str, float]] = set()
        self._started_at = time.time()
        self._attacher = attacher
        self.attach_error = attach_error
        """Why this node cannot attach volumes ("" when it can)."""
        self._published: tuple[EngineRecord, ...] = ()
        self._detach_failed: dict[str, str] = {}
        self._attached: Collection[str] | None = None
        """What was attached here at the last pass (None: not looked yet)."""
        self._views = VolumeViewCache()

    def view(self, own_engines: Iterable[str] | None = None) -> VolumeView:
        desired = self._host.desired_state()
        volumes, services = (desired.volumes, desired.services) if desired else ((), ())
        own = self.engines.running() if own_engines is None else own_engines
        return self._views.view(volumes, services, self._host.members(), self._host.documents, self._host.name, own,
                                time.time())

    def plans(self) -> list[ReplicaPlan]:
        """Where every desired volume's replicas belong, as this node computes it now."""
        return list(self.view(()).plans.values())

    def volume_slots(self) -> Mapping[str, str]:
        """"service/slot" -> node for the services that use volumes (the services runner asks on
        every pass: without such a service, the whole view is not worth computing)."""
        desired = self._host.desired_state()
        if desired is None or not any(map(follows_volumes, desired.services)):
            return {}
        return self.view().slots

    async def attach_volumes(self, spec: InstanceSpec) -> InstanceSpec:
        """Attach the volumes of the instance's slot here (once their engines serve) and name them
        in its spec; DriverError when that cannot be done now (the start is retried with backoff)."""
        desired = self._host.desired_state()
        service = next((s for s in desired.services if s.name == spec.service), None) if desired else None
        if service is None or not service.volumes:
            return spec
        if self._attacher is None:
            raise DriverError(f"{spec.key}: this node cannot attach volumes: {self.attach_error}")
        bindings = []
        for mount in service.volumes:
            volume = volume_for_slot(mount, logical_slot(spec.slot))
            await self._engine_serving(volume)
            self._attached = None  # the mount table is looked at again on the next pass
            try:
                if volume in self._attacher.attached():
                    # A fresh mount for each start: a filesystem that saw I/O errors while its
                    # engine was cut off is checked (fsck) before it is used again.
                    await self._attacher.detach(volume)
                where = await self._attacher.attach(volume, self.engines.socket(volume))
            except AttachError as error:
                raise DriverError(str(error)) from None
            bindings.append(VolumeBinding(mount.variable, str(where), mount.path))
        return dataclasses.replace(spec, volumes=tuple(bindings))

    async def _engine_serving(self, volume: str) -> None:
        deadline = time.monotonic() + ENGINE_WAIT
        while not self.engines.serving(volume):  # a status file, rewritten every second
            if time.monotonic() >= deadline:
                raise DriverError(f"volume {volume}: its engine is not serving here yet")
            await asyncio.sleep(0.25)

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self._beat.until_next(INTERVAL))
            desired = self._host.desired_state()
            if desired is None or not self._host.settled() or not self.has_work(desired):
                continue
            await self.reconcile()

    def has_work(self, desired: DesiredState) -> bool:
        """Whether a pass could change anything here. Not when no volume is desired and this node
        holds none in any form (no engine, no replica, nothing attached at the last look, nothing
        published): most fleets run services only, and a pass reads the mount table and the
        engines' status files."""
        own = self._host.documents.get(self._host.name)
        return bool(desired.volumes or self._attached is None or self._attached or self._published
                    or (own is not None and own.replicas) or self.engines.running())

    async def reconcile(self) -> None:
        desired = self._host.desired_state()
        if desired is None:
            return
        view = self.view()
        orders = engine_orders(view, desired.volumes, self._host.name)
        attached = self._attached = await self._detach_unused(orders, desired)
        await self.requests.drop_deleted(desired)
        await self.engines.reconcile(orders, attached)
        node_of = {address: node for node, address in view.addresses.items()}
        statuses = self.engines.statuses()
        records = self.engines.records(node_of, statuses)
        self._follow_rebuilds(records, self.engines.rebuilt(node_of, statuses))
        if records != self._published:
            for kind, fields in engine_events(self._published, records):
                self._host.events.append(kind, node=self._host.name, **fields)
            self._published = records
            await self._host.publish_engines(records)

    def _follow_rebuilds(self, records: tuple[EngineRecord, ...], rebuilt: list[tuple[str, str, float]]) -> None:
        """Each rebuild an engine here runs is a job in /v1/jobs with its progress (one that ended
        between two looks too); one that ends with the replica whole is `volume.rebuilt`."""
        now = time.time()
        current = {(e.volume, node): progress for e in records for node, progress in e.rebuilds}
        for volume, node, at in rebuilt:
            if (volume, node, at) in self._seen_rebuilt or at < self._started_at:
                continue
            self._seen_rebuilt.add((volume, node, at))
            job = self._rebuild_jobs.pop((volume, node), None) or self._rebuild_job(volume, node, now)
            job.progress = 1.0
            self._host.jobs.finish(job, now)
            self._host.events.append("volume.rebuilt", node=node, volume=volume)
        for key, progress in current.items():
            if key not in self._rebuild_jobs:
                self._rebuild_jobs[key] = self._rebuild_job(*key, now)
            self._rebuild_jobs[key].progress = progress
        for key in [k for k in self._rebuild_jobs if k not in current]:
            self._host.jobs.finish(self._rebuild_jobs.pop(key), now, "stopped before the end; the engine tries again")

    def _rebuild_job(self, volume: str, node: str, now: float) -> Job:
        job = self._host.jobs.add("rebuild", f"{volume} on {node}", now)
        self._host.jobs.mark_running(job, now)
        return job

    async def _detach_unused(self, orders: Mapping[str, EngineOrder], desired: DesiredState) -> Collection[str]:
        """Detach the volumes attached here that no engine order keeps and no local instance uses;
        returns the volumes still attached."""
        if self._attacher is None or self._attached == set():
            return set()  # nothing was attached at the last look, and only attach_volumes attaches
        services = {s.name: s for s in desired.services}
        in_use = set()
        for key in self._host.local_slots():
            name, _, slot = key.partition("/")
            for mount in services[name].volumes if name in services else ():
                in_use.add(volume_for_slot(mount, slot))
        for volume in self._attacher.attached():
            if volume in orders or volume in in_use:
                continue
            try:
                await self._attacher.detach(volume)
            except AttachError as error:
                if self._detach_failed.get(volume) != str(error):
                    self._detach_failed[volume] = str(error)
                    log.error("%s: %s", self._host.name, error)
                    self._host.events.append("volume.detach_failed", volume=volume, error=str(error))
            else:
                self._detach_failed.pop(volume, None)
                self._host.events.append("volume.detached", node=self._host.name, volume=volume)
        return set(self._attacher.attached())
