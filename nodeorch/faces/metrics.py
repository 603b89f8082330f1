"""/metrics in the Prometheus text exposition format (version 0.0.4)."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Mapping

from nodeorch.faces.agent_view import AgentView
from nodeorch.faces.volume_status import volumes_json


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


_EVENTS = {
    "suspicions": "suspicion", "deaths_declared": "death_declared", "refutations": "refutation",
    "push_pulls": "push_pull", "stalls": "stall", "reannouncements": "reannouncement",
    "name_conflicts": "name_conflict", "stranger_syncs": "stranger_sync", "app_pulls": "app_pull",
}
"""Gossip counters that count protocol events, and the label each gets."""


def _gossip(out: _Writer, stats: Mapping[str, int]) -> None:
    for what, unit in (("bytes", "Bytes"), ("packets", "UDP packets"), ("streams", "TCP streams")):
        name = f"nodeorch_gossip_{what}_total"
        out.family(name, "counter", f"{unit} of gossip traffic, by direction")
        for direction in ("in", "out"):
            out.sample(name, stats.get(f"{what}_{direction}", 0), direction=direction)
    out.family("nodeorch_gossip_probes_total", "counter",
               "Probe rounds by outcome: acked, failed (no ack), unreachable (the host refused the port)")
    unreachable = stats.get("probes_unreachable", 0)
    out.sample("nodeorch_gossip_probes_total", stats.get("probes_acked", 0), result="acked")
    out.sample("nodeorch_gossip_probes_total", stats.get("probe_failures", 0) - unreachable, result="failed")
    out.sample("nodeorch_gossip_probes_total", unreachable, result="unreachable")
    out.family("nodeorch_gossip_probe_fallbacks_total", "counter", "Indirect probes and TCP pings sent")
    out.sample("nodeorch_gossip_probe_fallbacks_total", stats.get("indirect_probes", 0), kind="indirect")
    out.sample("nodeorch_gossip_probe_fallbacks_total", stats.get("tcp_pings", 0), kind="tcp")
    out.family("nodeorch_gossip_dropped_total", "counter", "Packets and streams dropped, by reason")
    for key in sorted(k for k in stats if k.startswith("drop_")):
        out.sample("nodeorch_gossip_dropped_total", stats[key], reason=key[5:])
    out.family("nodeorch_gossip_send_errors_total", "counter", "Packets that could not be sent, by kind")
    out.sample("nodeorch_gossip_send_errors_total", stats.get("send_errors", 0), kind="send")
    out.sample("nodeorch_gossip_send_errors_total", stats.get("udp_errors", 0), kind="icmp")
    out.family("nodeorch_gossip_events_total", "counter", "Protocol events: suspicions, deaths declared, ...")
    for key, label in _EVENTS.items():
        out.sample("nodeorch_gossip_events_total", stats.get(key, 0), event=label)
    out.family("nodeorch_gossip_awareness", "gauge", "Lifeguard local health score (0 is healthy)")
    out.sample("nodeorch_gossip_awareness", stats.get("awareness", 0))
    out.family("nodeorch_gossip_queued_broadcasts", "gauge", "Updates waiting to be gossiped")
    out.sample("nodeorch_gossip_queued_broadcasts", stats.get("queued_broadcasts", 0))


VOLUME_STATES = ("pending", "detached", "starting", "healthy", "degraded", "rebuilding", "faulted", "orphaned")


def _volumes(out: _Writer, agent: AgentView) -> None:
    volumes = volumes_json(agent)
    out.family("nodeorch_volume_state", "gauge", "1 for each volume's state (see /v1/volumes), 0 for the others")
    for volume in volumes:
        for state in VOLUME_STATES:
            out.sample("nodeorch_volume_state", 1 if volume["state"] == state else 0, volume=volume["name"],
                       state=state)
    out.family("nodeorch_volume_replicas", "gauge", "Replicas of each volume held on live nodes")
    for volume in volumes:
        out.sample("nodeorch_volume_replicas", sum(1 for r in volume["replicas"] if not r["node_down"]),
                   volume=volume["name"])
    out.family("nodeorch_volume_replicas_wanted", "gauge", "Replicas each desired volume asks for")
    for volume in volumes:
        if "wanted" in volume:
            out.sample("nodeorch_volume_replicas_wanted", volume["wanted"], volume=volume["name"])
    out.family("nodeorch_volume_healthy_replicas", "gauge", "Replicas in the member set of each volume's engine")
    for volume in volumes:
        if volume["engine"] is not None:
            out.sample("nodeorch_volume_healthy_replicas", len(volume["engine"]["members"]), volume=volume["name"])
    io = agent.engine_io()
    out.family("nodeorch_volume_io_operations_total", "counter",
               "Block requests served by the engines on this node, by operation")
    for name, counters in sorted(io.items()):
        for op, key in (("read", "read_ops"), ("write", "write_ops"), ("flush", "flushes")):
            out.sample("nodeorch_volume_io_operations_total", counters.get(key, 0), volume=name, op=op)
    out.family("nodeorch_volume_io_bytes_total", "counter", "Bytes read and written through the engines on this node")
    for name, counters in sorted(io.items()):
        for direction, key in (("read", "read_bytes"), ("written", "write_bytes")):
            out.sample("nodeorch_volume_io_bytes_total", counters.get(key, 0), volume=name, direction=direction)
    out.family("nodeorch_volume_rebuild_bytes_total", "counter",
               "Bytes copied to rebuild replicas by the engines on this node")
    for name, counters in sorted(io.items()):
        out.sample("nodeorch_volume_rebuild_bytes_total", counters.get("rebuild_bytes", 0), volume=name)
    out.family("nodeorch_replica_used_bytes", "gauge", "Bytes the replicas this node holds take on disk")
    own = agent.documents.get(agent.name)
    for replica in own.replicas if own else ():
        out.sample("nodeorch_replica_used_bytes", replica.used, volume=replica.volume)


def render_metrics(agent: AgentView) -> str:
    out = _Writer()
    out.family("nodeorch_up", "gauge", "1 while the agent loop runs")
    out.sample("nodeorch_up", 1)
    out.family("nodeorch_uptime_seconds", "gauge", "Seconds since the agent started")
    out.sample("nodeorch_uptime_seconds", round(time.time() - agent.started_at, 3))
    out.family("nodeorch_members", "gauge", "Members by state, as this node sees them")
    members = Counter(member.state.label for member in agent.members())
    for state in ("alive", "suspect", "dead", "left"):
        out.sample("nodeorch_members", members[state], state=state)
    _gossip(out, agent.gossip_stats())
    out.family("nodeorch_document_version", "gauge", "Version of each node's document held here")
    for name, document in sorted(agent.documents.items()):
        out.sample("nodeorch_document_version", document.version, node=name)
    out.family("nodeorch_documents_refused_total", "counter", "Documents (or their records) refused, by reason")
    for reason in ("invalid", "wrong_owner", "oversized_own", "unknown_records"):
        out.sample("nodeorch_documents_refused_total", agent.documents.drops[reason], reason=reason)
    desired = agent.desired.state
    out.family("nodeorch_desired_revision", "gauge", "Revision of the desired state in force here (-1: none)")
    out.sample("nodeorch_desired_revision", desired.revision if desired else -1)
    out.family("nodeorch_desired_error", "gauge", "1 while the desired-state file on disk is refused")
    out.sample("nodeorch_desired_error", 1 if agent.desired.error else 0)
    out.family("nodeorch_draining", "gauge", "1 while this node is draining")
    out.sample("nodeorch_draining", 1 if agent.draining else 0)
    out.family("nodeorch_jobs", "gauge", "Jobs in this node's job table, by kind and state")
    jobs = Counter((job.kind, job.state.value) for job in agent.jobs.jobs())
    for (kind, state), count in sorted(jobs.items()):
        out.sample("nodeorch_jobs", count, kind=kind, state=state)
    out.family("nodeorch_instances", "gauge", "This node's service instances, by state and health")
    own = agent.documents.get(agent.name)
    instances = Counter((r.state.value, r.health.value) for r in (own.instances if own else ()))
    for (state, health), count in sorted(instances.items()):
        out.sample("nodeorch_instances", count, state=state, health=health)
    _volumes(out, agent)
    hooks = agent.hook_stats()
    out.family("nodeorch_hook_runs_total", "counter", "Runs of each [[hook]], by result")
    for hook, counts in sorted(hooks.items()):
        for result in ("ok", "failed", "timed_out"):
            out.sample("nodeorch_hook_runs_total", counts[result], hook=hook, result=result)
    out.family("nodeorch_hook_events_dropped_total", "counter", "Events a hook never saw: too many waited")
    for hook, counts in sorted(hooks.items()):
        out.sample("nodeorch_hook_events_dropped_total", counts["dropped"], hook=hook)
    out.family("nodeorch_events_total", "counter", "Events recorded in the event log")
    out.sample("nodeorch_events_total", agent.events.last_seq)
    return "\n".join(out.lines) + "\n"
