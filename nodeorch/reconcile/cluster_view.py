"""The cluster as the placement functions see it, built from the member table and the documents:
pure functions, shared by the services and the volumes reconcilers."""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping

from gossip import Member, MemberState
from nodeorch.core.placement import NodeView
from nodeorch.state.node_document import NodeDocument, decode_labels


def node_views(members: Iterable[Member], documents: Mapping[str, NodeDocument]) -> list[NodeView]:
    views = []
    for member in members:
        document = documents.get(member.name)
        views.append(_view(member.name, member.state, bool(document and document.draining), member.meta))
    return views


@functools.lru_cache(maxsize=4096)
def _view(name: str, state: MemberState, draining: bool, meta: bytes) -> NodeView:
    """One node as placement sees it; the same few views are asked for on every pass."""
    return NodeView(name, alive=state in (MemberState.ALIVE, MemberState.SUSPECT),
                    suspect=state is MemberState.SUSPECT, draining=draining, labels=decode_labels(meta))


def live_names(members: Iterable[Member]) -> frozenset[str]:
    """The members that count as running: alive, or suspected but not yet declared dead."""
    return frozenset(m.name for m in members if m.state in (MemberState.ALIVE, MemberState.SUSPECT))


def down_since(members: Iterable[Member]) -> dict[str, float]:
    """When each member that is dead or left entered that state (unix time, as member snapshots give it)."""
    return {m.name: m.state_since for m in members if m.state in (MemberState.DEAD, MemberState.LEFT)}
