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
from pathlib import Path
from typing import Any, Protocol

from drivers.containers import ContainerDriver, DriverError, InstanceSpec, InstanceState, InstanceStatus, logical_slot
from gossip import Member, MemberState
from nodeorch.core.beat import Beat
from nodeorch.core.placement import Assignment, NodeView
from nodeorch.errors import NodeorchError
from nodeorch.reconcile.cluster_view import live_names, node_views
from nodeorch.reconcile.health_watch import HealthWatcher, Watched, instance_health, to_recreate
from nodeorch.reconcile.job_table import Job, JobTable
from nodeorch.reconcile.rolling_update import Rollout, SlotInstance, UpdateState, failure_mark, plan_rollout
from nodeorch.reconcile.service_plan import (
    Decision,
    PlacementMemo,
    Replace,
    ServiceMemory,
    SlotTarget,
    Start,
    Stop,
    held_instances,
    instance_records,
    placed_slots,
    plan_services,
)
from nodeorch.reconcile.update_marks import UpdateMarks
from nodeorch.reconcile.work_queue import WorkQueue
from nodeorch.spec.service_spec import ServiceSpec
from nodeorch.spec.spec_history import SpecHistory
from nodeorch.state.event_log import EventLog
from nodeorch.state.node_document import NodeDocument, of_current_life
from nodeorch.state.records import (
    HealthStatus,
    HealthVerdict,
    InstancePhase,
    InstanceRecord,
    UpdateAction,
    UpdateMark,
)

log = logging.getLogger(__name__)

RESYNC = 1.0
SETTLE_TIMEOUT = 5.0
"""After a start, how long to wait at most for the other nodes' documents before acting, and how
long a node that sees no peer waits before it decides alone."""
MAX_CONCURRENT_JOBS = 4
LEFT_GRACE = 5.0
"""Seconds a member that left gracefully keeps its slots before they are placed elsewhere."""


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

    @property
    def documents(self) -> Mapping[str, NodeDocument]: ...

    def desired_services(self) -> tuple[ServiceSpec, ...]: ...

    def address_of(self, name: str) -> str | None: ...

    async def publish_instances(
        self, records: tuple[InstanceRecord, ...], health: tuple[HealthVerdict, ...], updates: tuple[UpdateMark, ...]
    ) -> None: ...

    def volume_slots(self) -> Mapping[str, str]:
        """"service/slot" -> node for the services that use volumes (they go where their engines go)."""

    async def attach_volumes(self, spec: InstanceSpec) -> InstanceSpec:
        """The instance's volumes attached here, as bindings in the spec; DriverError if not yet."""


class UpdateRequestError(NodeorchError):
    """A resume cannot be done: no such service (404), or nothing to resume (409)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


Published = tuple[tuple[InstanceRecord, ...], tuple[HealthVerdict, ...], tuple[UpdateMark, ...]]


class ServiceRunner:
    def __init__(self, host: ServiceHost, drivers: Mapping[str, ContainerDriver],
                 clock: Callable[[], float] = time.time, *, expect: int = 0, expect_timeout: float = 60.0,
                 state_dir: Path | None = None, beat: Beat | None = None) -> None:
        self._host = host
        self._beat = beat or Beat()
        self._drivers = dict(drivers)
        self._holder: dict[str, str] = {}
        self._unreachable: dict[str, str] = {}
        self._clock = clock
        self._memory = ServiceMemory()
        self._wake = asyncio.Event()
        self.queue = WorkQueue(host.jobs, self._job_finished, clock=clock,
                               limits={kind: MAX_CONCURRENT_JOBS for kind in ("start", "stop", "replace")})
        self._published: Published | None = None
        self._unsupported: set[str] = set()
        self._gate = PlacementGate(clock(), expect, expect_timeout)
        self._settled = False
        self._stopping = False
        self._placement = PlacementMemo()
        self._health = HealthWatcher(host.name, self.trigger, clock, source=host.address_of(host.name), beat=self._beat)
        self._health_map: dict[Watched, HealthStatus] = {}
        self._history = SpecHistory(state_dir / "specs.json" if state_dir else None)
        self._marks = UpdateMarks(state_dir / "updates.json" if state_dir else None)
        self.rollouts: dict[str, Rollout] = {}
        """Where each service's rolling update stands, as of the last pass."""
        self._missing_specs: set[tuple[str, str]] = set()

    async def adopt(self) -> tuple[InstanceRecord, ...]:
        """What already runs here (from before a restart), for the agent's very first document:
        published empty, it would let other nodes think these slots are free and start them twice."""
        records = instance_records(await self._instances(), self._memory, self._clock())
        self._published = (records, (), self._marks.marks)
        return records

    def marks(self) -> tuple[UpdateMark, ...]:
        return self._marks.marks

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
                async with asyncio.timeout(self._beat.until_next(RESYNC)):
                    await self._wake.wait()
            self._wake.clear()

    def _recently_left(self, members: list[Member]) -> set[str]:
        """Members that left less than LEFT_GRACE ago: their instances run on (an agent's stop
        leaves them), and in a fleet-wide stop every agent leaves within moments of the others."""
        now = self._clock()
        return {m.name for m in members if m.state is MemberState.LEFT and now - m.state_since < LEFT_GRACE}

    def _nodes(self, members: list[Member]) -> list[NodeView]:
        """The members as placement sees them; one that just left keeps what it runs, like a
        suspect, so nothing is started twice while a whole fleet stops."""
        left = self._recently_left(members)
        return [dataclasses.replace(view, alive=True, suspect=True) if view.name in left else view
                for view in node_views(members, self._host.documents)]

    def placement(self) -> list[Assignment]:
        members = self._host.members()
        reported = {**self._reported(members), self._host.name: self._published[0] if self._published else ()}
        held = held_instances("", reported, ())
        return placed_slots(self._host.desired_services(), self._nodes(members), held, self._host.volume_slots())

    def local_slots(self) -> set[str]:
        """"service/slot" (the logical slot) of every instance this node holds, as last published."""
        return {f"{r.service}/{logical_slot(r.slot)}" for r in self._published[0]} if self._published else set()

    def _reported(self, members: list[Member]) -> dict[str, tuple[InstanceRecord, ...]]:
        """The instances in the documents of the other members that are alive, suspect or just left."""
        counted = self._recently_left(members) | live_names(members)
        return {
            name: tuple(document.instances)
            for name, document in self._host.documents.items()
            if name != self._host.name and name in counted
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
        members = self._host.members()  # one snapshot of the member table for the whole pass
        reported = self._reported(members)
        local = await self._instances()
        if not self._settled and not self._view_complete(now):
            # Just started: adopt and report what runs here, but decide nothing until the other
            # nodes' documents arrived, or instances running elsewhere would be started twice.
            await self._publish(local)
            return
        self._settled = True
        recreate = self._watch_health(members, reported, local)
        specs = self._specs()
        own = self._records(local)
        nodes, volume_slots = self._nodes(members), self._host.volume_slots()
        placement = self._placement.placed_slots(specs, nodes, held_instances(self._host.name, reported, local),
                                                 volume_slots)
        targets = self._roll(now, specs, reported, own, placement)
        ready = {r.key for r in own if r.state is InstancePhase.RUNNING and r.health is not HealthStatus.UNHEALTHY
                 and (r.health is HealthStatus.HEALTHY or self._unchecked(r.service))}
        metas = {m.name: m.meta for m in members}
        current = {name for name in reported
                   if name in metas and of_current_life(metas[name], self._host.documents[name])}
        decisions = plan_services(now, self._host.name, specs, nodes, reported, local, self._memory,
                                  recreate, volume_slots, targets, ready, current, placement)
        for decision in decisions:
            self._submit(decision)
        await self._publish(local)

    def _unchecked(self, service: str) -> bool:
        return any(s.name == service and s.health is None for s in self._host.desired_services())

    def _roll(self, now: float, specs: list[ServiceSpec], reported: Mapping[str, tuple[InstanceRecord, ...]],
              own: tuple[InstanceRecord, ...], placement: list[Assignment]) -> dict[str, SlotTarget]:
        """Where each service's rolling update stands; this node's failing instances leave their
        mark; returns what this node's slots should run and which it may replace now."""
        me = self._host.name
        self._history.remember(self._host.desired_services())
        self._marks.prune((s.name, s.digest) for s in self._host.desired_services())
        instances: dict[str, list[SlotInstance]] = {}
        for node, records in {**reported, me: own}.items():
            for r in records:
                instances.setdefault(r.service, []).append(
                    SlotInstance(logical_slot(r.slot), node, r.digest, r.state, r.health, r.since))
        slots: dict[str, list[str]] = {}
        for a in placement:
            slots.setdefault(a.service, []).append(a.slot)
        # Every document's marks, a dead node's too: a pause is the cluster's, not a member's.
        marks = [m for name, d in self._host.documents.items() if name != me for m in d.updates]
        targets: dict[str, SlotTarget] = {}
        for spec in specs:
            rollout = plan_rollout(now, spec, slots.get(spec.name, ()), instances.get(spec.name, ()),
                                   [*marks, *self._marks.marks])
            mine = [(slot, problem) for slot, node, problem in rollout.failures if node == me]
            if rollout.state is UpdateState.UPDATING and mine:
                previous = rollout.previous or self._memory.replaced_from.get(spec.name, "")
                self._leave(failure_mark(now, rollout, spec, *mine[0], previous))
                rollout = plan_rollout(now, spec, slots.get(spec.name, ()), instances.get(spec.name, ()),
                                       [*marks, *self._marks.marks])
            self._report(rollout)
            targets[spec.name] = self._target(spec, rollout)
        return targets

    def _leave(self, mark: UpdateMark) -> None:
        self._marks.leave(mark)
        log.warning("%s: update of %s %s: %s", self._host.name, mark.service,
                    "rolls back" if mark.action is UpdateAction.ROLLBACK else "paused", mark.reason)

    def _report(self, rollout: Rollout) -> None:
        before = self.rollouts.get(rollout.service)
        self.rollouts[rollout.service] = rollout
        if before is not None and before.state is not rollout.state:
            self._host.events.append(f"update.{rollout.state.value}", service=rollout.service,
                                     digest=rollout.target, done=rollout.done, total=rollout.total,
                                     reason=rollout.reason or None)

    def _target(self, spec: ServiceSpec, rollout: Rollout) -> SlotTarget:
        if rollout.target == spec.digest:
            return SlotTarget(spec, rollout.replaceable)
        previous = self._history.find(spec.name, rollout.target)
        if previous is not None:
            return SlotTarget(previous, rollout.replaceable)
        if (spec.name, rollout.target) not in self._missing_specs:
            self._missing_specs.add((spec.name, rollout.target))
            log.error("%s: cannot roll %s back to %s: this node never ran that spec; its instances stay",
                      self._host.name, spec.name, rollout.target)
        return SlotTarget(spec, frozenset())

    async def resume(self, service: str) -> dict[str, Any]:
        """The operator's resume: a mark newer than every pause or rollback of the update to the
        desired spec, so the update continues (a failure after it pauses it again)."""
        spec = next((s for s in self._host.desired_services() if s.name == service), None)
        if spec is None:
            raise UpdateRequestError(404, f"no service {service!r} in the desired state")
        rollout = self.rollouts.get(service)
        if rollout is None or rollout.state not in (UpdateState.PAUSED, UpdateState.ROLLING_BACK,
                                                    UpdateState.ROLLED_BACK):
            state = rollout.state.value if rollout else "not yet planned"
            raise UpdateRequestError(409, f"the update of {service} is {state}: nothing to resume")
        self._marks.leave(UpdateMark(service, spec.digest, UpdateAction.RESUMED, self._clock(),
                                     "resumed by the operator"))
        self._host.events.append("update.resumed", service=service, digest=spec.digest)
        self.trigger()
        return {"service": service, "digest": spec.digest, "resumed": True, "was": rollout.state.value}

    @property
    def settled(self) -> bool:
        """Whether start-up is over: the other nodes' documents arrived (or the gate timed out)."""
        return self._settled

    def _view_complete(self, now: float) -> bool:
        peers = live_names(self._host.members()) - {self._host.name}
        return self._gate.is_open(now, peers, self._host.documents)

    def _watch_health(self, members: list[Member], reported: Mapping[str, tuple[InstanceRecord, ...]],
                      local: list[InstanceStatus]) -> set[str]:
        """Probe what this node observes; returns its own instances to recreate for their health."""
        specs = {s.name: s for s in self._host.desired_services()}
        live = live_names(members)
        watched: list[Watched] = []
        addresses = {m.name: m.addr[0] for m in members}
        for node, records in reported.items():
            host = addresses.get(node)
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

    def _records(self, local: list[InstanceStatus]) -> tuple[InstanceRecord, ...]:
        """This node's instance records, with their health as its observers judge it."""
        records = instance_records(local, self._memory, self._clock())
        me = self._host.name
        health_of = {(w.service, w.slot): status for w, status in self._health_map.items() if w.owner == me}
        return tuple(dataclasses.replace(r, health=health_of.get((r.service, r.slot), HealthStatus.UNKNOWN))
                     for r in records)

    async def _publish(self, local: list[InstanceStatus]) -> None:
        published = (self._records(local), self._health.records(), self._marks.marks)
        if published != self._published:
            self._report_instances(self._published[0] if self._published else (), published[0])
            self._published = published
            await self._host.publish_instances(*published)

    def _report_instances(self, before: tuple[InstanceRecord, ...], after: tuple[InstanceRecord, ...]) -> None:
        """Events for what changed in this node's instances: an exit, a health verdict."""
        was = {(r.key, r.ref): r for r in before}
        for record in after:
            old = was.get((record.key, record.ref))
            where = {"service": record.service, "slot": logical_slot(record.slot), "node": self._host.name,
                     "instance": record.slot, "ref": record.ref}
            if old is not None and old.state is InstancePhase.RUNNING and record.state in (
                    InstancePhase.EXITED, InstancePhase.RESTARTING, InstancePhase.FAILED):
                self._host.events.append("instance.exited", **where, exit_code=record.exit_code)
            if record.health is not (old.health if old else HealthStatus.UNKNOWN) and record.health in (
                    HealthStatus.HEALTHY, HealthStatus.UNHEALTHY):
                self._host.events.append(f"instance.{record.health.value}", **where)

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
                self._back_off(decision, failure)
                raise

        self.queue.add(target, kind, action)

    def _job_finished(self, job: Job) -> None:
        self._host.events.append("job.finished", job=job.id, action=job.kind, target=job.target,
                                 error=job.error or None)
        self.trigger()  # publish the outcome, and decide what follows from it

    def _back_off(self, decision: Decision, failure: DriverError) -> None:
        """A failed start waits like a crash does, so a broken image or engine is not hammered;
        during a rolling update to that spec, it fails the update like a crash would."""
        if isinstance(decision, Start | Replace):
            spec = next((s for s in self._host.desired_services() if s.name == decision.spec.service), None)
            if spec is None:
                return
            self._memory.backoff_for(spec).failed(decision.spec.key, self._clock())
            rollout = self.rollouts.get(spec.name)
            if rollout is not None and rollout.state is UpdateState.UPDATING and decision.spec.digest == spec.digest:
                previous = rollout.previous or self._memory.replaced_from.get(spec.name, "")
                self._leave(failure_mark(self._clock(), rollout, spec, logical_slot(decision.spec.slot),
                                         f"could not start on {self._host.name} ({failure})", previous))

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
