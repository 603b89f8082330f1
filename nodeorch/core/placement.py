"""Masterless placement: every node runs this pure function over the same inputs and acts only on
its own share. No clock, no I/O, no randomness: the same desired state and the same view give the
same answer on every node, whatever order the inputs came in.

Rules, in order:
1. Eligible nodes are alive, not draining, and match the service's node selector.
2. Stickiness: an instance already running on a node that may keep it (eligible, or merely
   suspect: a suspicion is not a death) stays there, so joins and flaps move nothing.
3. Every other slot goes to the eligible node with the highest rendezvous score for
   (service, slot, node), respecting spread (at most one instance of a service per node); a slot
   whose volumes have healthy replicas goes to one of those nodes first (data locality).
4. A global service has one slot per eligible node, named after the node.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class NodeView:
    name: str
    alive: bool = True
    suspect: bool = False
    draining: bool = False
    labels: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ServiceShape:
    """What placement needs of a service."""

    name: str
    scale: int = 1
    global_: bool = False
    spread: str = "node"
    node_selector: Mapping[str, str] = field(default_factory=dict)
    near: Mapping[str, frozenset[str]] = field(default_factory=dict)
    """Per slot, the nodes holding a healthy replica of every volume the slot uses: a slot to
    place goes to one of them when one is eligible (data locality)."""


@dataclass(frozen=True, slots=True)
class RunningInstance:
    """An instance some node holds: running, or exited and about to restart in place."""

    service: str
    slot: str
    node: str
    running: bool = True
    """A running instance keeps its slot before an exited one does (after an outage, the
    replacement that runs wins over the crashed original)."""


@dataclass(frozen=True, slots=True)
class Assignment:
    service: str
    slot: str
    node: str


@functools.lru_cache(maxsize=8192)
def rendezvous_score(service: str, slot: str, node: str) -> int:
    """Each node's rank for a slot. Every pass of every reconciler asks again for the same few
    thousand at most: they are kept rather than hashed anew each second."""
    digest = hashlib.blake2b(f"{service}\x00{slot}\x00{node}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def _matches(node: NodeView, selector: Mapping[str, str]) -> bool:
    return all(node.labels.get(k) == v for k, v in selector.items())


def eligible_nodes(service: ServiceShape, nodes: Iterable[NodeView]) -> list[NodeView]:
    return sorted(
        (n for n in nodes if n.alive and not n.suspect and not n.draining and _matches(n, service.node_selector)),
        key=lambda n: n.name,
    )


def _may_keep(node: NodeView | None, service: ServiceShape) -> bool:
    return node is not None and node.alive and not node.draining and _matches(node, service.node_selector)


def place_service(
    service: ServiceShape, nodes: Iterable[NodeView], running: Iterable[RunningInstance]
) -> list[Assignment]:
    nodes = list(nodes)
    by_name = {n.name: n for n in nodes}
    eligible = eligible_nodes(service, nodes)
    mine = sorted((r for r in running if r.service == service.name), key=lambda r: (r.slot, r.node))
    if service.global_:
        return [Assignment(service.name, n.name, n.name) for n in eligible]

    slots = [str(i) for i in range(service.scale)]
    assigned: dict[str, str] = {}
    used: set[str] = set()
    spread = service.spread == "node"

    # Stickiness: among running instances, higher rendezvous scores keep their place first, so
    # duplicates and spread conflicts resolve the same way on every node.
    keepers = sorted(
        (r for r in mine if r.slot in slots and _may_keep(by_name.get(r.node), service)),
        key=lambda r: (not r.running, -rendezvous_score(service.name, r.slot, r.node), r.slot, r.node),
    )
    for instance in keepers:
        if instance.slot in assigned or (spread and instance.node in used):
            continue
        assigned[instance.slot] = instance.node
        used.add(instance.node)

    for slot in slots:
        if slot in assigned:
            continue
        candidates = [n for n in eligible if not (spread and n.name in used)]
        if not candidates:
            continue
        near = service.near.get(slot, frozenset())
        best = max(candidates, key=lambda n: (n.name in near, rendezvous_score(service.name, slot, n.name), n.name))
        assigned[slot] = best.name
        used.add(best.name)
    return [Assignment(service.name, slot, node) for slot, node in sorted(assigned.items(), key=lambda x: int(x[0]))]


def place_services(
    services: Iterable[ServiceShape], nodes: Iterable[NodeView], running: Iterable[RunningInstance]
) -> list[Assignment]:
    """The whole cluster's placement; each node then acts on the assignments naming it."""
    nodes, running = list(nodes), list(running)
    placement: list[Assignment] = []
    for service in sorted(services, key=lambda s: s.name):
        placement += place_service(service, nodes, running)
    return placement
