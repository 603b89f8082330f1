"""Where each desired volume's replicas belong, from what the nodes report: pure, recomputed on
every call like the services planner, so every node derives the same plan from the same view."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from nodeorch.core.placement import NodeView, RunningInstance, ServiceShape, place_service
from nodeorch.core.replica_placement import ReplicaPlan, ReplicaSite, VolumeShape, place_volumes
from nodeorch.spec.service_spec import ServiceSpec
from nodeorch.spec.volume_spec import VolumeSpec, volume_for_slot
from nodeorch.state.records import ReplicaMode, ReplicaRecord


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


def plan_volumes(volumes: Iterable[VolumeSpec], nodes: Iterable[NodeView],
                 reported: Mapping[str, Iterable[ReplicaRecord]], down_since: Mapping[str, float],
                 now: float) -> list[ReplicaPlan]:
    return place_volumes((shape(v) for v in volumes), nodes, replica_sites(reported), down_since, now)


def engine_nodes(services: Iterable[ServiceSpec], nodes: list[NodeView], sites: Iterable[ReplicaSite],
                 engines: Mapping[str, str]) -> dict[str, str]:
    """volume -> the node that runs its engine: where the slot that uses it is placed, which is a
    node holding a healthy replica of every volume of the slot when one is eligible (data
    locality); `engines`: the node each volume's engine runs on now, which keeps it there."""
    healthy: dict[str, set[str]] = {}
    for site in sites:
        if site.healthy:
            healthy.setdefault(site.volume, set()).add(site.node)
    placed: dict[str, str] = {}
    for spec in services:
        if not spec.volumes or spec.global_:
            continue
        slots = [str(i) for i in range(spec.scale)]
        near = {slot: frozenset(set.intersection(*(healthy.get(volume_for_slot(m, slot), set())
                                                   for m in spec.volumes))) for slot in slots}
        running = [RunningInstance(spec.name, slot, engines[volume]) for slot in slots
                   if (volume := volume_for_slot(spec.volumes[0], slot)) in engines]
        shape = ServiceShape(spec.name, spec.scale, False, spec.spread, spec.node_selector, near)
        for assignment in place_service(shape, nodes, running):
            for mount in spec.volumes:
                placed[volume_for_slot(mount, assignment.slot)] = assignment.node
    return placed
