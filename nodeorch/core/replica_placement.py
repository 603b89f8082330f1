"""Where each volume's replicas live: a pure function every node runs over the same inputs.

Rules, in order:
1. At most one replica of a volume per node (hard).
2. Stickiness: a replica stays where its data is. One on a live node that still matches the
   volume's selector is kept (healthy ones first when there are more than the count).
3. A replica on a node that went down keeps its place for `replenish_wait` after the node was
   seen down (it may come back and catch up on what it missed); only then is a new one built.
4. New replicas go to eligible nodes (alive, not suspect, not draining, matching the selector),
   first to zones (the `zone` label) that hold no replica of the volume yet, then by the highest
   rendezvous score for (volume, node).
5. Replicas beyond the count, or on a node that no longer matches the selector, are surplus: the
   caller removes them only once the volume is healthy without them, so no data goes first.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from nodeorch.core.placement import NodeView, rendezvous_score


@dataclass(frozen=True, slots=True)
class VolumeShape:
    """What replica placement needs of a volume."""

    name: str
    replicas: int = 3
    node_selector: Mapping[str, str] = field(default_factory=dict)
    replenish_wait: float = 600.0


@dataclass(frozen=True, slots=True)
class ReplicaSite:
    """A replica a node reports holding."""

    volume: str
    node: str
    healthy: bool = True
    """Up to date (a member of its engine's set, or of a detached volume's last set)."""


@dataclass(frozen=True, slots=True)
class ReplicaPlan:
    volume: str
    nodes: tuple[str, ...]
    """Where the volume's replicas belong now: kept, waited for, and new ones, sorted."""
    new: tuple[str, ...] = ()
    """Nodes among `nodes` that must create (and rebuild) a replica."""
    waiting: tuple[str, ...] = ()
    """Nodes among `nodes` that are down; their replicas are waited for until replenish_wait."""
    surplus: tuple[str, ...] = ()
    """Replicas outside `nodes`: removed once the volume is healthy without them."""


def _matches(node: NodeView, selector: Mapping[str, str]) -> bool:
    return all(node.labels.get(k) == v for k, v in selector.items())


def _zone(node: NodeView) -> str:
    """A node without a zone label is a zone of its own."""
    return node.labels.get("zone") or f"\x00{node.name}"


def place_replicas(volume: VolumeShape, nodes: Iterable[NodeView], sites: Iterable[ReplicaSite],
                   down_since: Mapping[str, float], now: float) -> ReplicaPlan:
    """`sites`: the replicas nodes report (from their documents, the last known for a dead node);
    `down_since`: when each node that is down was first seen down."""
    by_name = {n.name: n for n in nodes}
    mine = {s.node: s for s in sorted(sites, key=lambda s: (s.node, not s.healthy)) if s.volume == volume.name}

    def score(node: str) -> int:
        return rendezvous_score("volume", volume.name, node)

    live, waiting, surplus = [], [], []
    for node, site in mine.items():
        view = by_name.get(node)
        if view is not None and view.alive and _matches(view, volume.node_selector):
            live.append(site)
        elif (view is None or not view.alive) and now - down_since.get(node, now) < volume.replenish_wait:
            waiting.append(node)
        else:
            surplus.append(node)
    live.sort(key=lambda s: (not s.healthy, -score(s.node), s.node))
    kept = [s.node for s in live[:volume.replicas]]
    surplus += [s.node for s in live[volume.replicas:]]
    waiting.sort(key=lambda n: (-score(n), n))
    room = max(volume.replicas - len(kept), 0)
    surplus += waiting[room:]
    waiting = waiting[:room]

    taken = set(kept) | set(waiting) | set(surplus)
    zones = {_zone(by_name[n]) for n in [*kept, *waiting] if n in by_name}
    candidates = [n for n in by_name.values() if n.name not in taken and n.alive and not n.suspect
                  and not n.draining and _matches(n, volume.node_selector)]
    new: list[str] = []
    for _ in range(volume.replicas - len(kept) - len(waiting)):
        if not candidates:
            break
        best = max(candidates, key=lambda n: (_zone(n) not in zones, score(n.name), n.name))
        candidates.remove(best)
        zones.add(_zone(best))
        new.append(best.name)
    return ReplicaPlan(volume.name, tuple(sorted([*kept, *waiting, *new])), tuple(sorted(new)),
                       tuple(sorted(waiting)), tuple(sorted(surplus)))


def place_volumes(volumes: Iterable[VolumeShape], nodes: Iterable[NodeView], sites: Iterable[ReplicaSite],
                  down_since: Mapping[str, float], now: float) -> list[ReplicaPlan]:
    """Every volume's replica placement; each node then acts on the plans naming it."""
    nodes, sites = list(nodes), list(sites)
    return [place_replicas(v, nodes, sites, down_since, now) for v in sorted(volumes, key=lambda v: v.name)]
