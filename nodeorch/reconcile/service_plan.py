"""The services reconciler: what this node must start, stop or replace, recomputed from scratch
each pass (level-triggered), so a missed event or a repeated pass changes nothing.

`plan_services` is pure: it takes `now`, the desired services, the member view, the instances
other nodes report and what the local driver holds, and returns decisions. The agent executes
them as jobs and publishes the outcome in its document.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from drivers.containers import InstanceSpec, InstanceState, InstanceStatus
from nodeorch.core.backoff import Backoff, BackoffPolicy
from nodeorch.core.placement import Assignment, NodeView, RunningInstance, ServiceShape, place_services
from nodeorch.spec.service_spec import ServiceSpec
from nodeorch.state.records import HealthStatus, InstancePhase, InstanceRecord

HANDOVER_TIMEOUT = 30.0
"""Start-first handover: stop an instance that moved away once its new owner reports it running,
or after this long if the new owner never does."""
STABLE_AFTER = 10.0
"""An instance that ran this long without exiting has its restart backoff reset."""


@dataclass(frozen=True, slots=True)
class Start:
    spec: InstanceSpec


@dataclass(frozen=True, slots=True)
class Stop:
    service: str
    slot: str
    grace: float
    reason: str


@dataclass(frozen=True, slots=True)
class Replace:
    spec: InstanceSpec
    grace: float


Decision = Start | Stop | Replace


@dataclass(slots=True)
class ServiceMemory:
    """What the reconciler remembers between passes (in memory only): restart backoff per slot,
    when a handover began, and when each local instance was last seen running."""

    backoff: dict[str, Backoff] = field(default_factory=dict)
    handover_since: dict[str, float] = field(default_factory=dict)
    running_since: dict[str, float] = field(default_factory=dict)
    restarts: dict[str, int] = field(default_factory=dict)
    counted_exit: dict[str, float] = field(default_factory=dict)

    def backoff_for(self, spec: ServiceSpec) -> Backoff:
        policy = BackoffPolicy(initial=spec.restart_delay, maximum=spec.restart_max_delay)
        current = self.backoff.get(spec.name)
        if current is None or current.policy != policy:
            current = self.backoff[spec.name] = Backoff(policy)
        return current


def shape(spec: ServiceSpec) -> ServiceShape:
    return ServiceShape(spec.name, spec.scale, spec.global_, spec.spread, spec.node_selector)


def instance_spec(spec: ServiceSpec, slot: str) -> InstanceSpec:
    return InstanceSpec(spec.name, slot, spec.digest, spec.command, spec.env, spec.image, spec.ports, spec.driver)


def held_instances(
    me: str, reported: Mapping[str, Iterable[InstanceRecord]], local: Iterable[InstanceStatus]
) -> list[RunningInstance]:
    """Every instance that holds its slot for placement: other nodes' reports, and our own."""
    held = [
        RunningInstance(r.service, r.slot, node, r.state in (InstancePhase.RUNNING, InstancePhase.STARTING))
        for node, records in reported.items() if node != me
        for r in records if r.state.holds_slot
    ]
    held += [RunningInstance(i.service, i.slot, me, i.state is InstanceState.RUNNING) for i in local]
    return held


def placed_slots(specs: Iterable[ServiceSpec], nodes: Iterable[NodeView], running: list[RunningInstance],
                 volume_slots: Mapping[str, str]) -> list[Assignment]:
    """The cluster's placement: services without volumes by the placement rules, the slots of
    services with volumes where `volume_slots` puts them (a slot not there is placed nowhere yet)."""
    specs = list(specs)
    placement = place_services((shape(s) for s in specs if not s.volumes), list(nodes), running)
    for spec in specs:
        if spec.volumes:
            placement += [Assignment(spec.name, str(slot), node) for slot in range(spec.scale)
                          if (node := volume_slots.get(f"{spec.name}/{slot}")) is not None]
    return placement


def plan_services(
    now: float,
    me: str,
    specs: Iterable[ServiceSpec],
    nodes: Iterable[NodeView],
    reported: Mapping[str, Iterable[InstanceRecord]],
    local: Iterable[InstanceStatus],
    memory: ServiceMemory,
    unhealthy: Iterable[str] = (),
    volume_slots: Mapping[str, str] | None = None,
) -> list[Decision]:
    """Decisions for this node. `reported`: node name -> instance records from its document;
    `unhealthy`: keys of this node's instances that every live observer judged unhealthy;
    `volume_slots`: "service/slot" -> node for the services that use volumes, placed where their
    engines go (see volume_plan.volume_slots); such a slot moves stop-first."""
    unhealthy = set(unhealthy)
    by_name = {s.name: s for s in specs}
    held = {i.key: i for i in local}
    running = held_instances(me, reported, held.values())
    placement = placed_slots(by_name.values(), nodes, running, volume_slots or {})
    mine = {f"{a.service}/{a.slot}": a for a in placement if a.node == me}
    owners = {f"{a.service}/{a.slot}": a.node for a in placement}
    # A handover completes when the new owner runs the instance, and, for a service with a health
    # check, when it is healthy: a move never lowers the number of healthy instances.
    running_elsewhere = {
        (node, r.key)
        for node, records in reported.items() for r in records
        if r.state is InstancePhase.RUNNING
        and ((s := by_name.get(r.service)) is None or s.health is None or r.health is HealthStatus.HEALTHY)
    }
    decisions: list[Decision] = []

    for key, assignment in sorted(mine.items()):
        spec = by_name[assignment.service]
        backoff = memory.backoff_for(spec)
        current = held.get(key)
        if current is not None and current.state is InstanceState.RUNNING:
            memory.running_since.setdefault(key, now)
            if now - memory.running_since[key] >= STABLE_AFTER:
                backoff.succeeded(key)
            if current.digest != spec.digest or key in unhealthy:
                if key in unhealthy:
                    memory.restarts[key] = memory.restarts.get(key, 0) + 1
                    memory.running_since.pop(key, None)
                decisions.append(Replace(instance_spec(spec, assignment.slot), spec.stop_grace))
            continue
        if current is not None and memory.counted_exit.get(key) != current.started_at:
            # Exited or failed: a crash, restarted in place after a backoff. Each exit counts once,
            # even one so quick it was never seen running, so a crash loop cannot spin.
            memory.counted_exit[key] = current.started_at
            memory.running_since.pop(key, None)
            backoff.failed(key, now)
            memory.restarts[key] = memory.restarts.get(key, 0) + 1
        if now >= backoff.ready_at(key):
            decisions.append(Start(instance_spec(spec, assignment.slot)))

    for key, instance in sorted(held.items()):
        if key in mine:
            continue
        declared = by_name.get(instance.service)
        grace = declared.stop_grace if declared else 10.0
        owner = owners.get(key)
        if declared is None or owner is None or instance.state is not InstanceState.RUNNING:
            memory.handover_since.pop(key, None)
            decisions.append(Stop(instance.service, instance.slot, grace,
                                  "no longer desired" if declared is None or owner is None else "exited"))
            continue
        if declared.volumes:
            # Stop-first: its volume is unmounted here before the new owner's engine may start.
            decisions.append(Stop(instance.service, instance.slot, grace, f"moved to {owner} with its volume"))
            continue
        since = memory.handover_since.setdefault(key, now)
        if (owner, key) in running_elsewhere:
            memory.handover_since.pop(key, None)
            decisions.append(Stop(instance.service, instance.slot, grace, f"moved to {owner}, which runs it"))
        elif now - since >= HANDOVER_TIMEOUT:
            memory.handover_since.pop(key, None)
            decisions.append(Stop(instance.service, instance.slot, grace, f"moved to {owner}; handover timed out"))
    return decisions


def instance_records(
    local: Iterable[InstanceStatus], memory: ServiceMemory, now: float
) -> tuple[InstanceRecord, ...]:
    """The instances section of this node's document (health is filled in by the runner)."""
    records = []
    for instance in sorted(local, key=lambda i: i.key):
        backoff = memory.backoff.get(instance.service)
        state = InstancePhase.of(instance.state)
        next_restart = backoff.ready_at(instance.key) if backoff else 0.0
        if instance.state is InstanceState.EXITED and next_restart > now:
            state = InstancePhase.RESTARTING
        records.append(InstanceRecord(
            instance.service, instance.slot, state, instance.digest, instance.ref, instance.started_at,
            instance.exit_code, memory.restarts.get(instance.key, 0),
            next_restart if state is InstancePhase.RESTARTING else None,
        ))
    return tuple(records)
