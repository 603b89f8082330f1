"""/metrics in the Prometheus text exposition format (version 0.0.4)."""

from __future__ import annotations

import time

from nodeorch.faces.agent_view import AgentView


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


class _Writer:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def family(self, name: str, kind: str, help_text: str) -> None:
        self.lines.append(f"# HELP {name} {help_text}")
        self.lines.append(f"# TYPE {name} {kind}")

    def sample(self, name: str, value: float, **labels: str) -> None:
        inner = ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items())
        self.lines.append(f"{name}{{{inner}}} {value}" if inner else f"{name} {value}")


def render_metrics(agent: AgentView) -> str:
    out = _Writer()
    out.family("nodeorch_up", "gauge", "1 while the agent loop runs")
    out.sample("nodeorch_up", 1)
    out.family("nodeorch_uptime_seconds", "gauge", "Seconds since the agent started")
    out.sample("nodeorch_uptime_seconds", round(time.time() - agent.started_at, 3))
    out.family("nodeorch_members", "gauge", "Members by state, as this node sees them")
    counts = {"alive": 0, "suspect": 0, "dead": 0, "left": 0}
    for member in agent.node.members():
        counts[member.state.label] += 1
    for state, count in counts.items():
        out.sample("nodeorch_members", count, state=state)
    stats = agent.node.stats()
    out.family("nodeorch_gossip_total", "counter", "Gossip counters: packets, bytes, probes, suspicions, drops")
    for key in sorted(k for k in stats if k not in ("awareness", "queued_broadcasts")):
        out.sample("nodeorch_gossip_total", stats[key], counter=key)
    out.family("nodeorch_gossip_awareness", "gauge", "Lifeguard local health score (0 is healthy)")
    out.sample("nodeorch_gossip_awareness", stats.get("awareness", 0))
    out.family("nodeorch_gossip_queued_broadcasts", "gauge", "Updates waiting to be gossiped")
    out.sample("nodeorch_gossip_queued_broadcasts", stats.get("queued_broadcasts", 0))
    out.family("nodeorch_document_version", "gauge", "Version of each node's document held here")
    for name, document in sorted(agent.documents.items()):
        out.sample("nodeorch_document_version", document.version, node=name)
    out.family("nodeorch_documents_refused_total", "counter", "Documents refused, by reason")
    for reason in ("invalid", "wrong_owner", "oversized_own", "unknown_records"):
        out.sample("nodeorch_documents_refused_total", agent.documents.drops[reason], reason=reason)
    desired = agent.desired.state
    out.family("nodeorch_desired_revision", "gauge", "Revision of the desired state in force here (-1: none)")
    out.sample("nodeorch_desired_revision", desired.revision if desired else -1)
    out.family("nodeorch_desired_error", "gauge", "1 while the desired-state file on disk is refused")
    out.sample("nodeorch_desired_error", 1 if agent.desired.error else 0)
    out.family("nodeorch_draining", "gauge", "1 while this node is draining")
    out.sample("nodeorch_draining", 1 if agent.draining else 0)
    out.family("nodeorch_jobs", "gauge", "Jobs in the job table, by state")
    for state, count in agent.jobs.counts().items():
        out.sample("nodeorch_jobs", count, state=state)
    out.family("nodeorch_events_total", "counter", "Events recorded in the event log")
    out.sample("nodeorch_events_total", agent.events.last_seq)
    return "\n".join(out.lines) + "\n"
