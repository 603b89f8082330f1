"""The status endpoint's JSON and /metrics, read from a small stand-in for the agent (AgentView)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from gossip import Member, MemberState
from nodeorch.core.placement import Assignment
from nodeorch.core.replica_placement import ReplicaPlan
from nodeorch.faces.agent_view import AgentView
from nodeorch.faces.cli import show_volumes
from nodeorch.faces.http_api import services_json, status_json
from nodeorch.faces.metrics import render_metrics
from nodeorch.faces.volume_status import volumes_json
from nodeorch.reconcile.job_table import JobTable
from nodeorch.reconcile.rolling_update import Rollout, UpdateState
from nodeorch.reconcile.service_runner import UpdateRequestError
from nodeorch.reconcile.volume_requests import VolumeRequestError
from nodeorch.spec.desired import DesiredStatus, parse_desired
from nodeorch.spec.node_config import parse_node_config
from nodeorch.spec.service_spec import ServiceSpec
from nodeorch.state.document_store import DocumentStore
from nodeorch.state.event_log import EventLog
from nodeorch.state.node_document import NodeDocument, encode_document
from nodeorch.state.records import (
    EngineRecord,
    EngineState,
    HealthStatus,
    InstancePhase,
    InstanceRecord,
    ReplicaMode,
    ReplicaRecord,
)

DESIRED = parse_desired(b'revision = 4\n[[service]]\nname = "web"\ncommand = ["web"]\nscale = 2\n')


class StandIn:
    """Three members (one dead), documents from two live nodes and one dead one, a few jobs."""

    def __init__(self) -> None:
        self.name = "a"
        self.config = parse_node_config('[cluster]\nname = "prod"\n', hostname=lambda: "a")
        self.started_at = 0.0
        self.draining = False
        self.events = EventLog()
        self.jobs = JobTable()
        self.documents = DocumentStore("a")
        web = (InstanceRecord("web", "0", InstancePhase.RUNNING, health=HealthStatus.HEALTHY),)
        self.documents.store_own(NodeDocument("a", 1, "x", desired_digest=DESIRED.digest, instances=web))
        self.documents.receive("b", encode_document(NodeDocument(
            "b", 1, "x", desired_digest="other", instances=(InstanceRecord("web", "1", InstancePhase.STARTING),))))
        self.documents.receive("c", encode_document(NodeDocument(
            "c", 1, "x", instances=(InstanceRecord("old", "0", InstancePhase.RUNNING),))))
        for kind, target in (("start", "web/0"), ("start", "web/1"), ("stop", "old/0")):
            self.jobs.add(kind, target, 0.0)
        self.jobs.mark_running(self.jobs.jobs()[0], 1.0)

    @property
    def desired(self) -> DesiredStatus:
        return DesiredStatus(DESIRED)

    def members(self) -> list[Member]:
        states = {"a": MemberState.ALIVE, "b": MemberState.ALIVE, "c": MemberState.DEAD}
        return [Member(n, ("127.0.0.1", 1), b"", 0, s, 0.0) for n, s in states.items()]

    def gossip_stats(self) -> Mapping[str, int]:
        return {"bytes_in": 10, "bytes_out": 20, "packets_in": 1, "packets_out": 2, "probes": 9, "probes_acked": 6,
                "probe_failures": 3, "probes_unreachable": 1, "drop_bad_envelope": 4, "suspicions": 2}

    def stale(self, name: str) -> bool:
        return name == "c"

    def differing_digests(self) -> list[str]:
        return ["b"]

    def placement(self) -> list[Assignment]:
        return [Assignment("web", "0", "a"), Assignment("web", "1", "b")]

    def desired_services(self) -> tuple[ServiceSpec, ...]:
        return DESIRED.services

    def volume_plans(self) -> list[ReplicaPlan]:
        return []

    async def set_draining(self, draining: bool) -> None:
        self.draining = draining

    def engine_io(self) -> dict[str, dict[str, int]]:
        return {"db": {"read_ops": 7, "read_bytes": 28672, "write_ops": 3, "write_bytes": 12288, "flushes": 1,
                       "rebuild_bytes": 1 << 20}}

    async def delete_volume(self, volume: str) -> dict[str, Any]:
        raise VolumeRequestError(404, f"no volume {volume!r}")

    async def salvage_volume(self, volume: str, trusted: str) -> dict[str, Any]:
        raise VolumeRequestError(409, f"{volume} is served")

    async def send_event(self, name: str, payload: bytes) -> None:
        self.events.append(f"user.{name}", origin=self.name, payload=payload.decode())

    def hook_stats(self) -> dict[str, dict[str, int]]:
        return {"page": {"ok": 3, "failed": 1, "timed_out": 2, "dropped": 0}}

    def rollouts(self) -> Mapping[str, Rollout]:
        web = DESIRED.services[0]
        return {"web": Rollout("web", web.digest, web.digest, UpdateState.PAUSED, 1, 2, frozenset(),
                               (("1", "b", "exited on b"),), "web/1 exited on b during the update")}

    async def resume_update(self, service: str) -> dict[str, Any]:
        raise UpdateRequestError(404, f"no service {service!r}")


def view() -> AgentView:
    return StandIn()


def test_status_counts_members_and_jobs_and_names_differing_nodes() -> None:
    status = status_json(view())
    assert status["node"] == "a" and status["cluster"] == "prod"
    assert status["members"] == {"alive": 2, "suspect": 0, "dead": 1, "left": 0}
    assert status["desired"] == {"revision": 4, "digest": DESIRED.digest, "error": None}
    assert status["digest_differs"] == ["b"]
    assert status["jobs"] == {"pending": 2, "running": 1, "succeeded": 0, "failed": 0}


def test_services_show_live_nodes_instances_and_skip_dead_nodes() -> None:
    (web,) = services_json(view())
    assert web["name"] == "web" and web["desired"] == 2
    assert [(i["slot"], i["node"], i["state"], i["health"]) for i in web["instances"]] == [
        ("0", "a", "running", "healthy"), ("1", "b", "starting", "unknown")]


def test_services_show_each_instance_spec_digest_and_where_the_update_stands() -> None:
    (web,) = services_json(view())
    assert web["digest"] == DESIRED.services[0].digest
    assert all("digest" in i for i in web["instances"])
    assert web["update"]["state"] == "paused" and (web["update"]["done"], web["update"]["total"]) == (1, 2)
    assert web["update"]["failures"] == [{"slot": "1", "node": "b", "problem": "exited on b"}]
    assert "exited" in web["update"]["reason"]


def test_metrics_have_one_family_per_meaning_and_follow_the_naming_rules() -> None:
    families = {f.name: f for f in text_string_to_metric_families(render_metrics(view()))}
    for family in families.values():
        assert family.type in ("counter", "gauge"), family.name
        assert family.name.startswith("nodeorch_")
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value for f in families.values() for s in f.samples}
    counters = [s.name for f in families.values() if f.type == "counter" for s in f.samples]
    assert counters and all(name.endswith("_total") for name in counters)
    assert samples[("nodeorch_gossip_bytes_total", (("direction", "out"),))] == 20
    assert samples[("nodeorch_gossip_packets_total", (("direction", "in"),))] == 1
    probes = {dict(k[1])["result"]: v for k, v in samples.items() if k[0] == "nodeorch_gossip_probes_total"}
    assert probes == {"acked": 6, "failed": 2, "unreachable": 1}
    assert samples[("nodeorch_gossip_dropped_total", (("reason", "bad_envelope"),))] == 4
    assert samples[("nodeorch_gossip_events_total", (("event", "suspicion"),))] == 2
    assert samples[("nodeorch_jobs", (("kind", "start"), ("state", "pending")))] == 1
    assert samples[("nodeorch_jobs", (("kind", "start"), ("state", "running")))] == 1
    assert samples[("nodeorch_instances", (("health", "healthy"), ("state", "running")))] == 1
    assert samples[("nodeorch_members", (("state", "dead"),))] == 1
    assert samples[("nodeorch_hook_runs_total", (("hook", "page"), ("result", "timed_out")))] == 2
    names = Counter(f.name for f in text_string_to_metric_families(render_metrics(view())))
    assert max(names.values()) == 1, "each family is declared once"


WAITING = parse_desired(b'revision = 5\n[[volume]]\nname = "db"\nsize = "1GiB"\n'
                     b'[[service]]\nname = "db"\ncommand = ["db"]\nvolumes = [{ volume = "db", path = "/data" }]\n')


class WithAVolumeService(StandIn):
    @property
    def desired(self) -> DesiredStatus:
        return DesiredStatus(WAITING)

    def desired_services(self) -> tuple[ServiceSpec, ...]:
        return WAITING.services


def test_a_volume_service_placed_nowhere_yet_says_what_it_waits_for() -> None:
    by_name = {s["name"]: s for s in services_json(WithAVolumeService())}
    assert by_name["db"]["desired"] == 0 and "1 of 1 slots wait for volume db" in by_name["db"]["waiting"]
    assert "waiting" not in by_name["web"], "a service still reported but no longer desired waits for nothing"


VOLUMES = parse_desired(b'revision = 6\n[[volume]]\nname = "db"\nsize = "1GiB"\n'
                        b'[[volume]]\nname = "new"\nsize = "2GiB"\nreplicas = 2\n')


class WithVolumes(StandIn):
    """db: an engine on a (degraded: c is dead), replicas on a and b (rebuilding) and c; a replica
    of "old", no longer desired, on b."""

    def __init__(self) -> None:
        super().__init__()
        member = ReplicaRecord("db", 1 << 30, ReplicaMode.MEMBER, 3, 3, 2, 50)
        self.documents.store_own(NodeDocument("a", 2, "x", replicas=(member,), engines=(
            EngineRecord("db", EngineState.DEGRADED, 3, ("a",), rebuilds=(("b", 0.5),)),)))
        self.documents.receive("b", encode_document(NodeDocument("b", 2, "x", replicas=(
            ReplicaRecord("db", 1 << 30, ReplicaMode.REBUILDING, 3, 1, 1, progress=0.5),
            ReplicaRecord("old", 1 << 20, ReplicaMode.DETACHED, 1, 1, 1)))))
        self.documents.receive("c", encode_document(NodeDocument("c", 2, "x", replicas=(member,))))

    @property
    def desired(self) -> DesiredStatus:
        return DesiredStatus(VOLUMES)

    def volume_plans(self) -> list[ReplicaPlan]:
        return [ReplicaPlan("db", ("a", "b", "c"), waiting=("c",)), ReplicaPlan("new", ("a", "b"), ("a", "b"))]


def test_volumes_show_state_replicas_engine_placement_and_orphans() -> None:
    by_name = {v["name"]: v for v in volumes_json(WithVolumes())}
    db = by_name["db"]
    assert db["state"] == "rebuilding" and db["engine"] == {"node": "a", "state": "degraded", "epoch": 3,
                                                            "members": ["a"]}
    assert [(r["node"], r["mode"], r["node_down"]) for r in db["replicas"]] == [
        ("a", "member", False), ("b", "rebuilding", False), ("c", "stale", True)]
    assert db["replicas"][1]["progress"] == 0.5, "the engine's rebuild progress"
    assert db["waiting_for"] == ["c"] and db["placement"] == ["a", "b", "c"] and db["size"] == 1 << 30
    assert by_name["new"]["state"] == "pending" and by_name["new"]["to_create"] == ["a", "b"]
    assert by_name["old"]["state"] == "orphaned" and by_name["old"]["replicas"][0]["node"] == "b"
    table = show_volumes(volumes_json(WithVolumes()))
    assert "db" in table and "1GiB" in table and "rebuilding" in table and "2/3" in table


def test_volume_metrics_name_each_volume_its_state_and_replicas() -> None:
    families = {f.name: f for f in text_string_to_metric_families(render_metrics(WithVolumes()))}
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value for f in families.values() for s in f.samples}
    assert samples[("nodeorch_volume_state", (("state", "rebuilding"), ("volume", "db")))] == 1
    assert samples[("nodeorch_volume_state", (("state", "healthy"), ("volume", "db")))] == 0
    assert samples[("nodeorch_volume_state", (("state", "orphaned"), ("volume", "old")))] == 1
    assert samples[("nodeorch_volume_replicas", (("volume", "db"),))] == 2, "the dead node's replica not counted"
    assert samples[("nodeorch_volume_replicas_wanted", (("volume", "new"),))] == 2
    assert ("nodeorch_volume_replicas_wanted", (("volume", "old"),)) not in samples
    assert samples[("nodeorch_replica_used_bytes", (("volume", "db"),))] == 0
    assert samples[("nodeorch_volume_healthy_replicas", (("volume", "db"),))] == 1
    assert samples[("nodeorch_volume_io_operations_total", (("op", "write"), ("volume", "db")))] == 3
    assert samples[("nodeorch_volume_io_bytes_total", (("direction", "read"), ("volume", "db")))] == 28672
    assert samples[("nodeorch_volume_rebuild_bytes_total", (("volume", "db"),))] == 1 << 20
