"""/v1/volumes: every desired volume with where its replicas belong, which nodes hold one, and its
engine; replicas of volumes no longer desired are listed as orphaned (kept until deleted)."""

from __future__ import annotations

from typing import Any

from nodeorch.faces.agent_view import AgentView
from nodeorch.state.records import EngineRecord, EngineState, ReplicaMode, ReplicaRecord


def _state(engine: EngineRecord | None, held: list[ReplicaRecord]) -> str:
    if engine is not None:
        if engine.state in (EngineState.HEALTHY, EngineState.DEGRADED) and (engine.rebuilds or any(
                r.mode is ReplicaMode.REBUILDING for r in held)):
            return "rebuilding"
        return engine.state.value
    return "detached" if held else "pending"


def _mode(node: str, replica: ReplicaRecord, engine: EngineRecord | None) -> tuple[str, float | None]:
    """A replica's mode and rebuild progress, as its volume's engine sees it when one runs."""
    if engine is not None and engine.state is not EngineState.STARTING:
        progress = dict(engine.rebuilds).get(node)
        if progress is not None:
            return ReplicaMode.REBUILDING.value, progress
        if node in engine.held:
            return "waiting", None
        if node in engine.members:
            return ReplicaMode.MEMBER.value, None
        return ReplicaMode.STALE.value, None
    return replica.mode.value, replica.progress


def volumes_json(agent: AgentView) -> list[dict[str, Any]]:
    held: dict[str, list[tuple[str, ReplicaRecord]]] = {}
    engines: dict[str, tuple[str, EngineRecord]] = {}
    for name in sorted(agent.documents):
        document = agent.documents[name]
        for replica in document.replicas:
            held.setdefault(replica.volume, []).append((name, replica))
        if not agent.stale(name):
            for engine in document.engines:
                engines[engine.volume] = (name, engine)

    def entry(volume: str, desired: dict[str, Any]) -> dict[str, Any]:
        replicas = held.pop(volume, [])
        engine = engines.pop(volume, None)
        return {
            "name": volume, **desired,
            "state": "orphaned" if not desired else _state(engine[1] if engine else None, [r for _, r in replicas]),
            "engine": None if engine is None else {"node": engine[0], "state": engine[1].state.value,
                                                   "epoch": engine[1].epoch, "members": list(engine[1].members)},
            "replicas": [{"node": node, "mode": mode, "epoch": r.epoch, "set_version": r.set_version,
                          "used": r.used, "progress": progress, "node_down": agent.stale(node)}
                         for node, r in replicas
                         for mode, progress in [_mode(node, r, engine[1] if engine else None)]],
        }

    plans = {p.volume: p for p in agent.volume_plans()}
    out = []
    for volume in agent.desired.state.volumes if agent.desired.state else ():
        plan = plans.get(volume.name)
        out.append(entry(volume.name, {
            "size": volume.size, "wanted": volume.replicas,
            "placement": list(plan.nodes) if plan else [], "to_create": list(plan.new) if plan else [],
            "waiting_for": list(plan.waiting) if plan else [], "surplus": list(plan.surplus) if plan else [],
        }))
    for orphan in sorted(held):
        out.append(entry(orphan, {}))
    return out
