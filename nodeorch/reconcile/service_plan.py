"""The services reconciler: what this node must start, stop or replace, recomputed from scratch
each pass (level-triggered), so a missed event or a repeated pass changes nothing.

`plan_services` is pure: it takes `now`, the desired services, the member view, the instances
other nodes report and what the local driver holds, and returns decisions. The agent executes
them as jobs and publishes the outcome in its document.
"""

from __future__ import annotations

from collections.abc import Container, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from drivers.containers import InstanceSpec, InstanceState, InstanceStatus, logical_slot, successor_slot
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
    replaced_from: dict[str, str] = field(default_factory=dict)
    """Per service, the digest this node last replaced for a rolling update (what a rollback of a
    service whose every instance already runs the new spec goes back to)."""

    def backoff_for(self, spec: ServiceSpec) -> Backoff:
        policy = BackoffPolicy(initial=spec.restart_delay, maximum=spec.restart_max_delay)
        current = self.backoff.get(spec.name)
        if current is None or current.policy != policy:
            current = self.backoff[spec.name] = Backoff(policy)
        return current


def shape(spec: ServiceSpec) -> ServiceShape:
    return ServiceShape(spec.name, spec.scale, spec.global_, spec.spread, spec.node_selector)


def instance_spec(spec: ServiceSpec, slot: str) -> InstanceSpec:
    """The instance of `spec` named `slot` (a logical slot, or a successor's name)."""
    return InstanceSpec(spec.name, slot, spec.digest, spec.command, spec.env, spec.image, spec.ports, spec.driver)


@dataclass(frozen=True, slots=True)
class SlotTarget:
    """What this node's slots of one service should run now (from the rolling update)."""

    spec: ServiceSpec
    """The desired spec, or, while an update rolls back, the spec it goes back to."""
    replaceable: frozenset[str] | None = None
    """Logical slots whose instance of another spec may be replaced now; None: every slot."""

    def may_replace(self, slot: str) -> bool:
        return self.replaceable is None or slot in self.replaceable


def held_instances(
    me: str, reported: Mapping[str, Iterable[InstanceRecord]], local: Iterable[InstanceStatus]
) -> list[RunningInstance]:
    """Every instance that holds its slot for placement: other nodes' reports, and our own."""
    held = [
        RunningInstance(r.service, logical_slot(r.slot), node,
                        r.state in (InstancePhase.RUNNING, InstancePhase.STARTING))
        for node, records in reported.items() if node != me
        for r in records if r.state.holds_slot
    ]
    held += [RunningInstance(i.service, logical_slot(i.slot), me, i.state is InstanceState.RUNNING) for i in local]
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


class PlacementMemo:
    """placed_slots, answered again while its inputs are equal: every services pass asks, and in a
    quiet cluster the nodes, the desired services and the instances holding slots stay the same."""

    def __init__(self) -> None:
        self._last: tuple[tuple[list[ServiceSpec], list[NodeView], list[RunningInstance], dict[str, str]],
                          list[Assignment]] | None = None

    def placed_slots(self, specs: Iterable[ServiceSpec], nodes: Iterable[NodeView], running: list[RunningInstance],
                     volume_slots: Mapping[str, str]) -> list[Assignment]:
        inputs = (list(specs), list(nodes), running, dict(volume_slots))
        if self._last is None or self._last[0] != inputs:
            self._last = (inputs, placed_slots(*inputs))
        return self._last[1]


def _running_first(instances: list[InstanceStatus]) -> list[InstanceStatus]:
    return sorted(instances, key=lambda i: (i.state is not InstanceState.RUNNING, -i.started_at, i.slot))


@dataclass(slots=True)
class _SlotPass:
    """One pass over this node's own slots: the decisions, and what they need to know."""

    now: float
    memory: ServiceMemory
    unhealthy: set[str]
    ready: Container[str]
    decisions: list[Decision] = field(default_factory=list)

    def own_slot(self, slot: str, desired: ServiceSpec, target: SlotTarget, here: list[InstanceStatus]) -> None:
        spec = target.spec
        current = _running_first([i for i in here if i.digest == spec.digest])
        older = _running_first([i for i in here if i.digest != spec.digest])
        grace = desired.stop_grace
        for extra in current[1:] + older[1:]:
            self.decisions.append(Stop(extra.service, extra.slot, grace, "another instance runs in its slot"))
        if current:
            self.keep(current[0], desired, spec)
            if older and current[0].key in self.ready:
                old = older[0]
                self.decisions.append(Stop(old.service, old.slot, grace, "replaced by an instance of the new spec"))
            elif older and older[0].state is not InstanceState.RUNNING:
                self.decisions.append(Stop(older[0].service, older[0].slot, grace, "exited; replaced"))
            return
        if not older:
            self.start(instance_spec(spec, slot), desired)
            return
        old = older[0]
        if old.state is not InstanceState.RUNNING:
            # A crash of an instance not yet updated restarts it on the target spec.
            self.keep(old, desired, spec)
            return
        self.stable(old, desired)
        if old.key in self.unhealthy:
            self.recreate(old, desired, spec)
        elif target.may_replace(slot):
            self.memory.replaced_from[desired.name] = old.digest
            if desired.update.order == "start-first" and not desired.volumes:
                self.start(instance_spec(spec, successor_slot(old.slot, spec.digest)), desired)
            else:
                self.decisions.append(Replace(instance_spec(spec, old.slot), grace))

    def stable(self, instance: InstanceStatus, desired: ServiceSpec) -> None:
        """A running instance: its restart backoff resets once it ran STABLE_AFTER seconds."""
        self.memory.running_since.setdefault(instance.key, self.now)
        if self.now - self.memory.running_since[instance.key] >= STABLE_AFTER:
            self.memory.backoff_for(desired).succeeded(instance.key)

    def recreate(self, instance: InstanceStatus, desired: ServiceSpec, spec: ServiceSpec) -> None:
        self.memory.restarts[instance.key] = self.memory.restarts.get(instance.key, 0) + 1
        self.memory.running_since.pop(instance.key, None)
        self.decisions.append(Replace(instance_spec(spec, instance.slot), desired.stop_grace))

    def keep(self, instance: InstanceStatus, desired: ServiceSpec, spec: ServiceSpec) -> None:
        """An instance in its slot: recreated when unhealthy, restarted in place after a crash."""
        if instance.state is InstanceState.RUNNING:
            self.stable(instance, desired)
            if instance.key in self.unhealthy or instance.digest != spec.digest:
                self.recreate(instance, desired, spec)
            return
        if self.memory.counted_exit.get(instance.key) != instance.started_at:
            # Exited or failed: a crash, restarted in place after a backoff. Each exit counts once,
            # even one so quick it was never seen running, so a crash loop cannot spin.
            self.memory.counted_exit[instance.key] = instance.started_at
            self.memory.running_since.pop(instance.key, None)
            self.memory.backoff_for(desired).failed(instance.key, self.now)
            self.memory.restarts[instance.key] = self.memory.restarts.get(instance.key, 0) + 1
        self.start(instance_spec(spec, instance.slot), desired)

    def start(self, spec: InstanceSpec, desired: ServiceSpec) -> None:
        if self.now >= self.memory.backoff_for(desired).ready_at(spec.key):
            self.decisions.append(Start(spec))


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
    targets: Mapping[str, SlotTarget] | None = None,
    ready: Container[str] = (),
    current: Container[str] | None = None,
    placement: Sequence[Assignment] | None = None,
) -> list[Decision]:
    """Decisions for this node. `reported`: node name -> instance records from its document;
    `unhealthy`: keys of this node's instances that every live observer judged unhealthy;
    `volume_slots`: "service/slot" -> node for the services that use volumes, placed where their
    engines go (see volume_plan.volume_slots); such a slot moves stop-first. `targets`: per
    service, the spec to run and the slots a rolling update lets this node replace now (absent:
    the desired spec, every slot at once); `ready`: keys of this node's instances that run and,
    with a health check, are healthy (a start-first successor takes over from them); `current`:
    the nodes whose documents come from their agent's current run (None: all), the only ones
    whose word that they run a moved instance lets this node stop its own; `placement`: placed_slots
    of these inputs, when the caller has it already."""
    by_name = {s.name: s for s in specs}
    local = list(local)
    running = held_instances(me, reported, local)
    if placement is None:
        placement = placed_slots(by_name.values(), nodes, running, volume_slots or {})
    mine = {f"{a.service}/{a.slot}": a for a in placement if a.node == me}
    owners = {f"{a.service}/{a.slot}": a.node for a in placement}
    # A handover completes when the new owner runs the instance, and, for a service with a health
    # check, when it is healthy: a move never lowers the number of healthy instances.
    running_elsewhere = {
        (node, f"{r.service}/{logical_slot(r.slot)}")
        for node, records in reported.items() for r in records
        if r.state is InstancePhase.RUNNING and (current is None or node in current)
        and ((s := by_name.get(r.service)) is None or s.health is None or r.health is HealthStatus.HEALTHY)
    }
    here: dict[str, list[InstanceStatus]] = {}
    for instance in local:
        here.setdefault(instance.logical_key, []).append(instance)
    slots = _SlotPass(now, memory, set(unhealthy), ready)
    for key, assignment in sorted(mine.items()):
        desired = by_name[assignment.service]
        target = (targets or {}).get(desired.name) or SlotTarget(desired)
        slots.own_slot(assignment.slot, desired, target, here.get(key, []))
    decisions = slots.decisions

    for instance in sorted(local, key=lambda i: i.key):
        key = instance.logical_key
        if key in mine:
            continue
        declared = by_name.get(instance.service)
        grace = declared.stop_grace if declared else 10.0
        owner = owners.get(key)
        if declared is None or owner is None or instance.state is not InstanceState.RUNNING:
            memory.handover_since.pop(instance.key, None)
            decisions.append(Stop(instance.service, instance.slot, grace,
                                  "no longer desired" if declared is None or owner is None else "exited"))
            continue
        if declared.volumes:
            # Stop-first: its volume is unmounted here before the new owner's engine may start.
            decisions.append(Stop(instance.service, instance.slot, grace, f"moved to {owner} with its volume"))
            continue
        since = memory.handover_since.setdefault(instance.key, now)
        if (owner, key) in running_elsewhere:
            memory.handover_since.pop(instance.key, None)
            decisions.append(Stop(instance.service, instance.slot, grace, f"moved to {owner}, which runs it"))
        elif now - since >= HANDOVER_TIMEOUT:
            memory.handover_since.pop(instance.key, None)
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
