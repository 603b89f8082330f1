"""Runs the services reconciler for the agent: a pass on every trigger (membership, documents,
desired state) and at least every RESYNC seconds; each decision is a job, at most
MAX_CONCURRENT_JOBS of each kind (start, stop, replace) at once; the outcome goes into this node's
document."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable, Collection, Container, Coroutine, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from drivers.containers import ContainerDriver, DriverError, InstanceSpec, InstanceState, InstanceStatus
from gossip import Member, MemberState
from nodeorch.core.placement import Assignment, NodeView
from nodeorch.reconcile.cluster_view import node_views
from nodeorch.reconcile.health_watch import HealthWatcher, Watched, instance_health, to_recreate
from nodeorch.reconcile.job_table import Job, JobTable
from nodeorch.reconcile.service_plan import (
    Decision,
    Replace,
    ServiceMemory,
    Start,
    Stop,
    held_instances,
    instance_records,
    placed_slots,
    plan_services,
)
from nodeorch.reconcile.work_queue import WorkQueue
from nodeorch.spec.service_spec import ServiceSpec
from nodeorch.state.event_log import EventLog
from nodeorch.state.node_document import NodeDocument
from nodeorch.state.records import HealthStatus, HealthVerdict, InstancePhase, InstanceRecord

log = logging.getLogger(__name__)

RESYNC = 1.0
SETTLE_TIMEOUT = 5.0
"""After a start, how long to wait at most for the other nodes' documents before acting, and how
long a node that sees no peer waits before it decides alone."""
MAX_CONCURRENT_JOBS = 4


@dataclass(frozen=True, slots=True)
class PlacementGate:
    """When a just-started agent may begin to place (pure). Agents that start together must place
    once: a node deciding on a partial view would start instances that others start too.

    - with `expect` = N: once N members (this one included) are alive and every live peer's
      document is here, or after `expect_timeout` (like Consul's and Nomad's bootstrap_expect);
    - otherwise: once every live peer's document is here; a node that sees no peer at all waits
      `settle` before deciding alone, so seeds and discovered peers have time to answer.
    """

    started: float
    expect: int = 0
    expect_timeout: float = 60.0
    settle: float = SETTLE_TIMEOUT

    def is_open(self, now: float, live_peers: Collection[str], documents: Container[str]) -> bool:
        waited = now - self.started
        documented = all(peer in documents for peer in live_peers)
        if self.expect > 0:
            return waited >= self.expect_timeout or (1 + len(live_peers) >= self.expect and documented)
        return waited >= self.settle or (bool(live_peers) and documented)


class ServiceHost(Protocol):
    """What the runner needs from the agent."""

    name: str
    events: EventLog
    jobs: JobTable

    def members(self) -> list[Member]: ...

    def stale(self, name: str) -> bool: ...

    @property
    def documents(self) -> Mapping[str, NodeDocument]: ...

    def desired_services(self) -> tuple[ServiceSpec, ...]: ...

    def address_of(self, name: str) -> str | None: ...

    async def publish_instances(
        self, records: tuple[InstanceRecord, ...], health: tuple[HealthVerdict, ...]
    ) -> None: ...

    def volume_slots(self) -> Mapping[str, str]:
        """"service/slot" -> node for the services that use volumes (they go where their engines go)."""

    async def attach_volumes(self, spec: InstanceSpec) -> InstanceSpec:
        """The instance's volumes attached here, as bindings in the spec; DriverError if not yet."""


class ServiceRunner:
    def __init__(self, host: ServiceHost, drivers: Mapping[str, ContainerDriver],
                 clock: Callable[[], float] = time.time, *, expect: int = 0, expect_timeout: float = 60.0) -> None:
        self._host = host
        self._drivers = dict(drivers)
        self._holder: dict[str, str] = {}
        self._unreachable: dict[str, str] = {}
        self._clock = clock
        self._memory = ServiceMemory()
        self._wake = asyncio.Event()
        self.queue = WorkQueue(host.jobs, self._job_finished, clock=clock,
                               limits={kind: MAX_CONCURRENT_JOBS for kind in ("start", "stop", "replace")})
        self._published: tuple[tuple[InstanceRecord, ...], tuple[HealthVerdict, ...]] | None = None
        self._unsupported: set[str] = set()
        self._gate = PlacementGate(clock(), expect, expect_timeout)
        self._settled = False
        self._stopping = False
        self._health = HealthWatcher(host.name, self.trigger, clock, source=host.address_of(host.name))
        self._health_map: dict[Watched, HealthStatus] = {}

    async def adopt(self) -> tuple[InstanceRecord, ...]:
        """What already runs here (from before a restart), for the agent's very first document:
        published empty, it would let other nodes think these slots are free and start them twice."""
        records = instance_records(await self._instances(), self._memory, self._clock())
        self._published = (records, ())
        return records

    def begin_shutdown(self) -> None:
        """The agent is stopping: no new job starts from now on (the ones running are cancelled)."""
        self._stopping = True
        self.queue.close()

    def trigger(self) -> None:
        """Something changed: run a pass soon (level-triggered: many triggers, one pass)."""
        self._wake.set()

    async def run(self) -> None:
        try:
            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(self.queue.run())
                tasks.create_task(self._loop())
        finally:
            await self._health.close()

    async def _loop(self) -> None:
        while True:
            try:
                await self.reconcile()
            except Exception:
                log.exception("%s: services pass failed; retrying", self._host.name)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(RESYNC):
                    await self._wake.wait()
            self._wake.clear()

    def _nodes(self) -> list[NodeView]:
        return node_views(self._host.members(), self._host.documents)

    def placement(self) -> list[Assignment]:
        reported = {**self._reported(), self._host.name: self._published[0] if self._published else ()}
        held = held_instances("", reported, ())
        return placed_slots(self._host.desired_services(), self._nodes(), held, self._host.volume_slots())

    def local_slots(self) -> set[str]:
        """"service/slot" of every instance this node holds (running or not), as last published."""
        return {r.key for r in self._published[0]} if self._published else set()

    def _reported(self) -> dict[str, tuple[InstanceRecord, ...]]:
        return {
            name: tuple(document.instances)
            for name, document in self._host.documents.items()
            if name != self._host.name and not self._host.stale(name)
        }

    def _specs(self) -> list[ServiceSpec]:
        specs = []
        for spec in self._host.desired_services():
            if spec.driver not in self._drivers:
                if spec.name not in self._unsupported:
                    self._unsupported.add(spec.name)
                    log.warning("%s: service %s needs the %s driver, which this agent does not run",
                                self._host.name, spec.name, spec.driver)
                    self._host.events.append("service.unsupported", service=spec.name, driver=spec.driver)
                continue
            specs.append(spec)
        return specs

    async def _instances(self) -> list[InstanceStatus]:
        """What every driver holds; a driver that cannot answer (an unreachable Docker engine) is
        reported once and skipped, so the other drivers' instances are still reconciled."""
        found: list[InstanceStatus] = []
        for name, driver in self._drivers.items():
            try:
                listed = await driver.instances()
            except DriverError as error:
                if self._unreachable.get(name) != str(error):
                    self._unreachable[name] = str(error)
                    log.error("%s: %s driver: %s", self._host.name, name, error)
                    self._host.events.append("driver.unavailable", driver=name, error=str(error))
                continue
            if self._unreachable.pop(name, None) is not None:
                self._host.events.append("driver.available", driver=name)
            for status in listed:
                self._holder[status.key] = name
            found += listed
        return found

    async def reconcile(self) -> None:
        if self._stopping:
            return
        now = self._clock()
        reported = self._reported()
        local = await self._instances()
        if not self._settled and not self._view_complete(now):
            # Just started: adopt and report what runs here, but decide nothing until the other
            # nodes' documents arrived, or instances running elsewhere would be started twice.
            await self._publish(local)
            return
        self._settled = True
        recreate = self._watch_health(reported, local)
        decisions = plan_services(now, self._host.name, self._specs(), self._nodes(), reported, local, self._memory,
                                  recreate, self._host.volume_slots())
        for decision in decisions:
            self._submit(decision)
        await self._publish(local)

    @property
    def settled(self) -> bool:
        """Whether start-up is over: the other nodes' documents arrived (or the gate timed out)."""
        return self._settled

    def _view_complete(self, now: float) -> bool:
        live = [m.name for m in self._host.members()
                if m.name != self._host.name and m.state in (MemberState.ALIVE, MemberState.SUSPECT)]
        return self._gate.is_open(now, live, self._host.documents)

    def _watch_health(
        self, reported: Mapping[str, tuple[InstanceRecord, ...]], local: list[InstanceStatus]
    ) -> set[str]:
        """Probe what this node observes; returns its own instances to recreate for their health."""
        specs = {s.name: s for s in self._host.desired_services()}
        live = [m.name for m in self._host.members() if m.state in (MemberState.ALIVE, MemberState.SUSPECT)]
        watched: list[Watched] = []
        for node, records in reported.items():
            host = self._host.address_of(node)
            for r in records:
                if r.state is InstancePhase.RUNNING and host:
                    watched.append(Watched(r.service, r.slot, node, r.ref, host, r.since))
        own_host = self._host.address_of(self._host.name) or "127.0.0.1"
        mine = [Watched(i.service, i.slot, self._host.name, i.ref, own_host, i.started_at)
                for i in local if i.state is InstanceState.RUNNING]
        self._health.update(specs, [*watched, *mine], live)
        verdicts: dict[str, tuple[HealthVerdict, ...]] = {
            name: document.health for name, document in self._host.documents.items()
        }
        verdicts[self._host.name] = self._health.records()
        self._health_map = {w: instance_health(w, specs[w.service], live, verdicts)
                            for w in [*watched, *mine] if w.service in specs}
        return to_recreate(mine, specs, self._health_map)

    async def _publish(self, local: list[InstanceStatus]) -> None:
        records = instance_records(local, self._memory, self._clock())
        me = self._host.name
        health_of = {(w.service, w.slot): status for w, status in self._health_map.items() if w.owner == me}
        records = tuple(dataclasses.replace(r, health=health_of.get((r.service, r.slot), HealthStatus.UNKNOWN))
                        for r in records)
        verdicts = self._health.records()
        if (records, verdicts) != self._published:
            self._published = (records, verdicts)
            await self._host.publish_instances(records, verdicts)

    def _submit(self, decision: Decision) -> None:
        """Queue a decision as a job; one already waiting or running for that slot is not queued twice
        (a different decision for it runs after the current one)."""
        kind, target, act = self._describe(decision)
        if self.queue.busy(target) == kind:
            return

        async def action(job: Job) -> None:
            log.info("%s: job %d started: %s %s", self._host.name, job.id, kind, target)
            self._host.events.append("job.started", job=job.id, action=kind, target=target)
            try:
                await act()
            except DriverError as failure:
                log.warning("%s: %s %s failed: %s", self._host.name, kind, target, failure)
                self._back_off(decision)
                raise

        self.queue.add(target, kind, action)

    def _job_finished(self, job: Job) -> None:
        self._host.events.append("job.finished", job=job.id, action=job.kind, target=job.target,
                                 error=job.error or None)
        self.trigger()  # publish the outcome, and decide what follows from it

    def _back_off(self, decision: Decision) -> None:
        """A failed start waits like a crash does, so a broken image or engine is not hammered."""
        if isinstance(decision, Start | Replace):
            spec = next((s for s in self._host.desired_services() if s.name == decision.spec.service), None)
            if spec is not None:
                self._memory.backoff_for(spec).failed(decision.spec.key, self._clock())

    def _describe(self, decision: Decision) -> tuple[str, str, Callable[[], Coroutine[Any, Any, object]]]:
        match decision:
            case Start(spec):
                driver = self._drivers[spec.driver]

                async def start() -> None:
                    await driver.start(await self._host.attach_volumes(spec))

                return "start", spec.key, start
            case Replace(spec, grace):
                old = self._drivers[self._holder.get(spec.key, spec.driver)]
                new = self._drivers[spec.driver]

                async def replace() -> None:
                    await old.stop(spec.service, spec.slot, grace)
                    await new.start(await self._host.attach_volumes(spec))

                return "replace", spec.key, replace
            case Stop(service, slot, grace, reason):
                key = f"{service}/{slot}"
                holder = self._drivers[self._holder.get(key, "process")]
                log.info("%s: stopping %s: %s", self._host.name, key, reason)
                return "stop", key, lambda: holder.stop(service, slot, grace)
        raise TypeError(decision)
