"""Where each desired volume's replicas belong, from what the nodes report: pure, recomputed on
every call like the services planner, so every node derives the same plan from the same view."""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from gossip import Member, MemberState
from nodeorch.core.placement import NodeView, RunningInstance, ServiceShape, place_service
from nodeorch.core.replica_placement import ReplicaPlan, ReplicaSite, VolumeShape, place_volumes
from nodeorch.reconcile.cluster_view import down_since, live_names, node_views
from nodeorch.spec.service_spec import ServiceSpec
from nodeorch.spec.volume_spec import VolumeSpec, volume_for_slot
from nodeorch.state.node_document import NodeDocument
from nodeorch.state.records import EngineRecord, EngineState, ReplicaMode, ReplicaRecord

ENGINE_LEFT_GRACE = 30.0
"""How long the engines of a node that left (its agent stopped; they go on running) stay its own."""


@dataclass(frozen=True, slots=True)
class EngineOrder:
    """What an engine of this node must run with."""

    volume: str
    size: int
    replicas: tuple[str, ...]
    """HOST:PORT of each replica server, this node's first (reads prefer it)."""
    replica_timeout: float = 8.0
    held: tuple[str, ...] = ()
    """Replicas (HOST:PORT) whose rebuild waits for a free slot (max_concurrent_rebuilds)."""


def shape(volume: VolumeSpec) -> VolumeShape:
    return VolumeShape(volume.name, volume.replicas, volume.node_selector, volume.replenish_wait)


def replica_sites(reported: Mapping[str, Iterable[ReplicaRecord]]) -> list[ReplicaSite]:
    """Every replica the nodes report, healthy when it is in its engine's member set, or, with no
    engine, when it belongs to the newest member set any replica of its volume reports."""
    records = [(node, r) for node, rs in reported.items() for r in rs]
    newest: dict[str, tuple[int, int]] = {}
    for _, record in records:
        if record.mode in (ReplicaMode.MEMBER, ReplicaMode.DETACHED):
            newest[record.volume] = max(newest.get(record.volume, (0, 0)), record.set_id)
    return [ReplicaSite(r.volume, node, r.mode is ReplicaMode.MEMBER
                        or (r.mode is ReplicaMode.DETACHED and r.set_id == newest.get(r.volume)))
            for node, r in records]




def follows_volumes(spec: ServiceSpec) -> bool:
    """Whether a service's slots are placed by its volumes (a scaled service that uses some)."""
    return bool(spec.volumes) and not spec.global_


def volume_slots(services: Iterable[ServiceSpec], nodes: list[NodeView], sites: Iterable[ReplicaSite],
                 engines: Mapping[str, str]) -> dict[str, str]:
    """"service/slot" -> its node, for every slot of a service that uses volumes: a node holding a
    healthy replica of every volume of the slot when one is eligible (data locality), and the
    node its engine runs on (`engines`: volume -> node) while that one stays eligible. The
    services runner places these slots exactly here, and the engines follow them."""
    healthy: dict[str, set[str]] = {}
    for site in sites:
        if site.healthy:
            healthy.setdefault(site.volume, set()).add(site.node)
    placed: dict[str, str] = {}
    for spec in filter(follows_volumes, services):
        slots = [str(i) for i in range(spec.scale)]
        near = {slot: frozenset(set.intersection(*(healthy.get(volume_for_slot(m, slot), set())
                                                   for m in spec.volumes))) for slot in slots}
        running = [RunningInstance(spec.name, slot, engines[volume]) for slot in slots
                   if (volume := volume_for_slot(spec.volumes[0], slot)) in engines]
        shape = ServiceShape(spec.name, spec.scale, False, spec.spread, spec.node_selector, near)
        for assignment in place_service(shape, nodes, running):
            placed[f"{assignment.service}/{assignment.slot}"] = assignment.node
    return placed


def engine_nodes(services: Iterable[ServiceSpec], slots: Mapping[str, str]) -> dict[str, str]:
    """volume -> the node that runs its engine: the node of the slot that uses it."""
    placed = {}
    for spec in services:
        for slot in range(spec.scale):
            node = slots.get(f"{spec.name}/{slot}")
            if node is not None:
                for mount in spec.volumes:
                    placed[volume_for_slot(mount, str(slot))] = node
    return placed


@dataclass(frozen=True, slots=True)
class VolumeView:
    """The cluster as volume decisions see it (read-only: the same view may be handed out again)."""

    nodes: Sequence[NodeView]
    """Members; a node that left within ENGINE_LEFT_GRACE counts as alive but suspect (it keeps
    what it holds and takes nothing new)."""
    reported: Mapping[str, tuple[ReplicaRecord, ...]]
    engines: Mapping[str, str]
    """volume -> the node its engine runs on: the highest epoch a counted node reports, then this
    node's own engines not reported yet."""
    plans: Mapping[str, ReplicaPlan]
    addresses: Mapping[str, str]
    """node -> HOST:PORT of its replica server."""
    slots: Mapping[str, str]
    """"service/slot" -> node, for the slots of services that use volumes (see volume_slots)."""
    placed: Mapping[str, str]
    """volume -> the node that must run its engine."""
    engine_records: Mapping[str, EngineRecord]
    """volume -> what its engine (the one `engines` names) reports."""
    rebuilding: Mapping[str, int]
    """node -> rebuilds it takes part in now, as the engine's node or as the target."""
    max_rebuilds: Mapping[str, int]
    """node -> its max_concurrent_rebuilds."""


def volume_view(volumes: Iterable[VolumeSpec], services: Collection[ServiceSpec], members: Collection[Member],
                documents: Mapping[str, NodeDocument], me: str, own_engines: Iterable[str], now: float) -> VolumeView:
    """`now`: unix time, as member snapshots give `state_since`. A node declared dead loses its
    engines at once; one that left keeps them for ENGINE_LEFT_GRACE. Slots go only to nodes
    whose document says they can attach volumes."""
    away = {m.name for m in members if m.state is MemberState.LEFT and now - m.state_since < ENGINE_LEFT_GRACE}
    counted = live_names(members) | away
    nodes = [replace(n, alive=True, suspect=True) if n.name in away else n for n in node_views(members, documents)]
    reported = {name: document.replicas for name, document in documents.items()}
    reports: dict[str, tuple[int, str]] = {}
    records: dict[tuple[str, str], EngineRecord] = {}
    rebuilding: dict[str, int] = {}
    for name, document in documents.items():
        if name in counted:
            for engine in document.engines:
                reports[engine.volume] = max(reports.get(engine.volume, (-1, "")), (engine.epoch, name))
                records[(engine.volume, name)] = engine
                for target, _ in engine.rebuilds:
                    rebuilding[target] = rebuilding.get(target, 0) + 1
                    rebuilding[name] = rebuilding.get(name, 0) + 1
    for volume in own_engines:
        reports.setdefault(volume, (0, me))
    sites = replica_sites(reported)
    plans = place_volumes((shape(v) for v in volumes), nodes, sites, down_since(members), now)
    engines = {volume: node for volume, (_, node) in reports.items()}
    attaching = [n if (d := documents.get(n.name)) is not None and not d.attach_error else replace(n, draining=True)
                 for n in nodes]
    slots = volume_slots(services, attaching, sites, engines)
    return VolumeView(nodes, reported, engines, {p.volume: p for p in plans},
                      {name: d.replica_addr for name, d in documents.items() if d.replica_addr},
                      slots, engine_nodes(services, slots),
                      {v: records[(v, node)] for v, node in engines.items() if (v, node) in records},
                      rebuilding, {name: d.max_rebuilds for name, d in documents.items()})


KEPT_VIEWS = 2
"""Views kept at once, one per set of own engines asked with: the passes' and the status pages'."""


class VolumeViewCache:
    """The last volume views computed, returned again while their inputs stay the same: both the
    services pass and the volume pass ask for the view every second, and in a quiet cluster nothing
    it depends on changes. The clock matters only through members that are dead or left (their
    grace and replenish waits run out), so with such a member the view is computed every time."""

    def __init__(self) -> None:
        self._last: dict[tuple[str, ...], tuple[tuple[Any, ...], VolumeView]] = {}

    def view(self, volumes: tuple[VolumeSpec, ...], services: tuple[ServiceSpec, ...], members: Collection[Member],
             documents: Mapping[str, NodeDocument], me: str, own_engines: Iterable[str], now: float) -> VolumeView:
        own = tuple(sorted(own_engines))
        if any(m.state in (MemberState.DEAD, MemberState.LEFT) for m in members):
            self._last.pop(own, None)
            return volume_view(volumes, services, members, documents, me, own, now)
        inputs = (volumes, services, me, tuple((m.name, m.state, m.meta) for m in members), tuple(documents.items()))
        last = self._last.get(own)
        if last is not None and last[0] == inputs:
            return last[1]
        view = volume_view(volumes, services, members, documents, me, own, now)
        self._last.pop(own, None)
        self._last[own] = (inputs, view)
        while len(self._last) > KEPT_VIEWS:  # the oldest goes: engines come and go over months
            del self._last[next(iter(self._last))]
        return view


def engine_orders(view: VolumeView, volumes: Iterable[VolumeSpec], me: str) -> dict[str, EngineOrder]:
    """The engines `me` must run: those of the volumes whose slots are placed on it, on the
    replica servers of each volume's placement, its own first. Stop-first: while another node
    that counts still runs a volume's engine, it is not ordered here (that node unmounts, flushes
    and stops it first; a dead node's is fenced by the new engine instead)."""
    orders = {}
    busy = dict(view.rebuilding)
    for volume in sorted(volumes, key=lambda v: v.name):
        plan = view.plans.get(volume.name)
        if view.placed.get(volume.name) != me or plan is None or view.engines.get(volume.name, me) != me:
            continue
        holders = [n for n in sorted(plan.nodes, key=lambda n: (n != me, n)) if n in view.addresses]
        if not holders:
            continue
        held = _held_rebuilds(view.engine_records.get(volume.name), holders, me, busy, view.max_rebuilds)
        orders[volume.name] = EngineOrder(volume.name, volume.size, tuple(view.addresses[n] for n in holders),
                                          volume.replica_timeout, tuple(view.addresses[n] for n in held))
    return orders


def _held_rebuilds(engine: EngineRecord | None, holders: list[str], me: str, busy: dict[str, int],
                   limits: Mapping[str, int]) -> list[str]:
    """The holders whose rebuild must wait: a rebuild to start (a holder neither in the running
    engine's member set nor being rebuilt) takes a slot on the target and on this node, and waits
    while either has max_concurrent_rebuilds under way (`busy`, counted from every document and
    updated here as slots are given)."""
    if engine is None or engine.state is EngineState.STARTING:
        return []  # a starting engine copies what it must from the start
    rebuilding = {node for node, _ in engine.rebuilds}
    held = []
    for node in holders:
        if node in engine.members or node in rebuilding:
            continue
        if busy.get(node, 0) >= limits.get(node, 2) or busy.get(me, 0) >= limits.get(me, 2):
            held.append(node)
            continue
        busy[node] = busy.get(node, 0) + 1
        busy[me] = busy.get(me, 0) + 1
    return held


def engine_events(before: Iterable[EngineRecord], after: Iterable[EngineRecord]) -> list[tuple[str, dict[str, Any]]]:
    """volume.degraded, volume.faulted and volume.healthy (again, after either) between two
    reports of this node's engines; a start is not an event."""
    was = {e.volume: e.state for e in before}
    events = []
    for engine in after:
        previous = was.get(engine.volume)
        if engine.state == previous or engine.state is EngineState.STARTING:
            continue
        if engine.state is EngineState.HEALTHY and previous in (None, EngineState.STARTING):
            continue
        events.append((f"volume.{engine.state.value}", {"volume": engine.volume, "epoch": engine.epoch,
                                                        "members": list(engine.members)}))
    return events
