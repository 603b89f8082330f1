"""The volume keeper's pass runs only where it could change something: a fleet that runs services
and no volumes pays nothing for the volume machinery each second."""

from __future__ import annotations

from pathlib import Path

from drivers.attach.memory import MemoryAttacher
from gossip import Member
from nodeorch.reconcile.engine_keeper import EngineKeeper
from nodeorch.reconcile.job_table import JobTable
from nodeorch.reconcile.volume_keeper import VolumeKeeper
from nodeorch.spec.desired import DesiredState, parse_desired
from nodeorch.state.event_log import EventLog
from nodeorch.state.node_document import NodeDocument
from nodeorch.state.records import EngineRecord, ReplicaMode, ReplicaRecord

SERVICES_ONLY = b"""
revision = 1
[[service]]
name = "web"
driver = "process"
command = ["sleep", "60"]
"""

WITH_A_VOLUME = SERVICES_ONLY + b"""
[[volume]]
name = "db"
size = "64MiB"
"""


class Host:
    name = "a"

    def __init__(self, desired: DesiredState) -> None:
        self.events = EventLog()
        self.jobs = JobTable()
        self.documents: dict[str, NodeDocument] = {}
        self.desired = desired
        self.published: list[tuple[EngineRecord, ...]] = []

    def members(self) -> list[Member]:
        return []

    def desired_state(self) -> DesiredState:
        return self.desired

    def settled(self) -> bool:
        return True

    def local_slots(self) -> set[str]:
        return set()

    async def publish_engines(self, records: tuple[EngineRecord, ...]) -> None:
        self.published.append(records)

    async def publish_deletions(self, deletions: tuple[object, ...]) -> None:
        return None

    def stale(self, name: str) -> bool:
        return False


async def test_without_volumes_the_keeper_looks_once_then_rests(tmp_path: Path) -> None:
    host = Host(parse_desired(SERVICES_ONLY))
    keeper = VolumeKeeper(host, EngineKeeper(tmp_path, "test", None), MemoryAttacher(tmp_path / "mounts"))
    assert keeper.has_work(host.desired), "the first pass looks for what an earlier run left attached"
    await keeper.reconcile()
    assert not keeper.has_work(host.desired)

    host.desired = parse_desired(WITH_A_VOLUME)
    assert keeper.has_work(host.desired), "a desired volume may need this node"

    host.desired = parse_desired(SERVICES_ONLY)
    held = ReplicaRecord("db", 1 << 26, ReplicaMode.DETACHED, 5, 5, 2)
    host.documents["a"] = NodeDocument("a", 1, "x", replicas=(held,))
    assert keeper.has_work(host.desired), "a replica held here may be one to drop"


async def test_something_left_attached_keeps_the_keeper_working_until_detached(tmp_path: Path) -> None:
    host = Host(parse_desired(SERVICES_ONLY))
    attacher = MemoryAttacher(tmp_path / "mounts")
    (tmp_path / "old.sock").touch()
    await attacher.attach("old", tmp_path / "old.sock")
    attacher.busy.add("old")  # an earlier run's mount, still in use: its detach fails for now
    keeper = VolumeKeeper(host, EngineKeeper(tmp_path, "test", None), attacher)
    await keeper.reconcile()
    assert "old" in attacher.attached() and keeper.has_work(host.desired)
    attacher.busy.clear()
    await keeper.reconcile()
    assert attacher.attached() == {}, "a volume no instance uses is detached"
    assert not keeper.has_work(host.desired)
