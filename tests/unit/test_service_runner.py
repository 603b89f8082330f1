"""The runner against the in-memory driver: jobs, crash restarts in place with backoff, records."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import pytest

from drivers.attach import MemoryAttacher
from drivers.containers import DriverError, InstanceSpec, VolumeBinding
from drivers.containers.memory import MemoryDriver
from gossip import Member, MemberState
from nodeorch.reconcile.job_table import JobTable
from nodeorch.reconcile.rolling_update import UpdateState
from nodeorch.reconcile.service_runner import (
    LEFT_GRACE,
    SETTLE_TIMEOUT,
    PlacementGate,
    ServiceRunner,
    UpdateRequestError,
)
from nodeorch.spec.service_spec import ServiceSpec, UpdatePolicy, VolumeMount
from nodeorch.state.event_log import EventLog
from nodeorch.state.node_document import NodeDocument
from nodeorch.state.records import HealthVerdict, InstancePhase, InstanceRecord, UpdateAction, UpdateMark


class Host:
    """Just enough of an agent: one live member, no peers, a fixed desired state."""

    def __init__(self, services: tuple[ServiceSpec, ...]) -> None:
        self.name = "a"
        self.events = EventLog()
        self.jobs = JobTable()
        self.services = services
        self.published: list[tuple[InstanceRecord, ...]] = []
        self.slots: dict[str, str] = {}
        self.attacher = MemoryAttacher(Path(tempfile.mkdtemp(prefix="attach-")))
        self.exports: set[str] = set()

    def members(self) -> list[Member]:
        return [Member("a", ("127.0.0.2", 7946), json.dumps({}).encode(), 0, MemberState.ALIVE, 0.0)]

    def stale(self, name: str) -> bool:
        return False

    @property
    def documents(self) -> Mapping[str, NodeDocument]:
        return {}

    def address_of(self, name: str) -> str | None:
        return "127.0.0.2"

    def desired_services(self) -> tuple[ServiceSpec, ...]:
        return self.services

    async def publish_instances(
        self, records: tuple[InstanceRecord, ...], health: tuple[HealthVerdict, ...], updates: tuple[UpdateMark, ...]
    ) -> None:
        self.published.append(records)

    def volume_slots(self) -> Mapping[str, str]:
        return self.slots

    async def attach_volumes(self, spec: InstanceSpec) -> InstanceSpec:
        service = next(s for s in self.services if s.name == spec.service)
        bindings = []
        for mount in service.volumes:
            if mount.volume not in self.exports:
                raise DriverError(f"volume {mount.volume}: its engine is not serving yet")
            where = await self.attacher.attach(mount.volume, Path("/dev/null"))
            bindings.append(VolumeBinding(mount.variable, str(where), mount.path))
        return dataclasses.replace(spec, volumes=tuple(bindings))


@contextlib.asynccontextmanager
async def jobs_running(runner: ServiceRunner) -> AsyncIterator[Callable[[], Awaitable[None]]]:
    """The runner's work queue at work; yields `settle`: a pass, its jobs, and the pass after them."""
    task = asyncio.create_task(runner.queue.run())

    async def settle() -> None:
        await runner.reconcile()
        await runner.queue.settled()
        await runner.reconcile()

    try:
        yield settle
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_instances_start_as_jobs_and_a_crash_restarts_in_place_after_the_delay() -> None:
    web = ServiceSpec("web", driver="memory", command=("web",), scale=3, spread="none", restart_delay=1.0)
    host, driver = Host((web,)), MemoryDriver()
    now = [100.0]
    runner = ServiceRunner(host, {"memory": driver}, clock=lambda: now[0])
    async with jobs_running(runner) as settle:
        await settle()
        assert driver.started == [], "a node that sees no peer waits before deciding alone"
        now[0] += SETTLE_TIMEOUT
        await settle()
        assert sorted(driver.started) == ["web/0", "web/1", "web/2"]
        assert host.jobs.counts()["succeeded"] == 3
        assert [r.state for r in host.published[-1]] == [InstancePhase.RUNNING] * 3

        driver.crash("web", "1", exit_code=137)
        now[0] += 0.5
        await settle()
        assert driver.started.count("web/1") == 1, "not before the restart delay"
        crashed = next(r for r in host.published[-1] if r.slot == "1")
        assert crashed.state is InstancePhase.RESTARTING and crashed.exit_code == 137 and crashed.restarts == 1
        exits = [e for e in host.events.since(0) if e["kind"] == "instance.exited"]
        assert [(e["slot"], e["exit_code"]) for e in exits] == [("1", 137)], "said once, for hooks and people"
        now[0] += 1.0
        await settle()
        assert driver.started.count("web/1") == 2, "restarted in place after the delay"
        assert host.jobs.counts()["succeeded"] == 4


async def test_a_volume_slot_runs_where_its_engine_is_placed_with_its_volume_and_moves_stop_first() -> None:
    db = ServiceSpec("db", driver="memory", command=("db",), volumes=(VolumeMount("db", "/var/lib/db"),))
    host, driver = Host((db,)), MemoryDriver()
    now = [100.0]
    runner = ServiceRunner(host, {"memory": driver}, clock=lambda: now[0])
    now[0] += SETTLE_TIMEOUT
    async with jobs_running(runner) as settle:
        await settle()
        assert driver.started == [], "placed nowhere until the volume plan places it"
        host.slots = {"db/0": "a"}
        await settle()
        assert driver.started == [], "not before its engine serves"
        assert any("not serving yet" in job.error for job in host.jobs.jobs()), "and its job says why"
        host.exports.add("db")
        now[0] += 5
        await settle()
        assert driver.started == ["db/0"]
        (binding,) = driver.specs["db/0"].volumes
        assert binding == VolumeBinding("NODEORCH_VOLUME_DB", str(host.attacher.folder / "db"), "/var/lib/db")
        host.slots = {"db/0": "b"}  # moved; node b does not run it yet
        await runner.reconcile()
        await runner.queue.settled()
        assert await driver.instances() == [], "stopped at once, not after a start-first handover"
        assert runner.local_slots() == {"db/0"}, "until the next pass publishes it gone"
        await runner.reconcile()
        assert runner.local_slots() == set()


async def test_a_service_for_a_driver_this_agent_lacks_is_reported_not_run() -> None:
    web = ServiceSpec("web", driver="docker", image="x", scale=1)
    host, driver = Host((web,)), MemoryDriver()
    now = [100.0]
    runner = ServiceRunner(host, {"memory": driver}, clock=lambda: now[0])
    now[0] += SETTLE_TIMEOUT
    await runner.reconcile()
    assert driver.started == []
    assert [e["kind"] for e in host.events.since(0)] == ["service.unsupported"]


def test_a_lone_node_waits_the_settle_interval_before_deciding_alone() -> None:
    gate = PlacementGate(started=100.0)
    assert not gate.is_open(100.0 + SETTLE_TIMEOUT - 0.1, [], {})
    assert gate.is_open(100.0 + SETTLE_TIMEOUT, [], {})


def test_without_expect_a_node_places_once_every_live_peers_document_is_here() -> None:
    gate = PlacementGate(started=100.0)
    assert not gate.is_open(101.0, ["b", "c"], {"b"})
    assert gate.is_open(101.0, ["b", "c"], {"b", "c"})


def test_with_expect_nothing_is_placed_until_that_many_members_are_seen_or_the_timeout() -> None:
    gate = PlacementGate(started=100.0, expect=3, expect_timeout=30.0)
    assert not gate.is_open(110.0, ["b"], {"b"}), "two of three members, documents or not"
    assert not gate.is_open(110.0, ["b", "c"], {"b"}), "three members, one document missing"
    assert gate.is_open(110.0, ["b", "c"], {"b", "c"})
    assert gate.is_open(130.0, ["b"], {"b"}), "the timeout lets a short cluster start"


async def test_a_stopping_runner_starts_no_job() -> None:
    web = ServiceSpec("web", driver="memory", command=("web",), scale=2, spread="none")
    host, driver = Host((web,)), MemoryDriver()
    now = [100.0]
    runner = ServiceRunner(host, {"memory": driver}, clock=lambda: now[0])
    now[0] += SETTLE_TIMEOUT
    runner.begin_shutdown()
    await runner.reconcile()
    assert driver.started == [] and len(host.jobs) == 0


def new_spec(spec: ServiceSpec, **changes: Any) -> ServiceSpec:
    return dataclasses.replace(spec, **changes)


def update_state(runner: ServiceRunner) -> UpdateState:
    return runner.rollouts["web"].state


@dataclasses.dataclass
class Rig:
    """A runner on the in-memory driver in virtual time, its first spec running and desired.toml
    just changed to `v2` (the same service, another command)."""

    host: Host
    driver: MemoryDriver
    runner: ServiceRunner
    now: list[float]
    settle: Callable[[], Awaitable[None]]
    v1: ServiceSpec
    v2: ServiceSpec

    def digests(self, slots: int) -> list[str]:
        return [self.driver.specs[f"web/{slot}"].digest for slot in range(slots)]


@contextlib.asynccontextmanager
async def updating(v1: ServiceSpec, state_dir: Path | None = None) -> AsyncIterator[Rig]:
    now = [100.0]
    host, driver = Host((v1,)), MemoryDriver(clock=lambda: now[0])
    runner = ServiceRunner(host, {"memory": driver}, clock=lambda: now[0], state_dir=state_dir)
    now[0] += SETTLE_TIMEOUT
    async with jobs_running(runner) as settle:
        await settle()
        v2 = new_spec(v1, command=("web", "v2"))
        host.services = (v2,)
        yield Rig(host, driver, runner, now, settle, v1, v2)


async def test_a_spec_change_replaces_instances_one_batch_at_a_time_stop_first() -> None:
    v1 = ServiceSpec("web", driver="memory", command=("web", "v1"), scale=3, spread="none",
                     update=UpdatePolicy(parallelism=1, delay=2.0, monitor=5.0))
    async with updating(v1) as rig:
        now, settle, runner, driver, host, v2 = rig.now, rig.settle, rig.runner, rig.driver, rig.host, rig.v2

        def digests() -> list[str]:
            return rig.digests(3)

        await settle()
        assert digests() == [v2.digest, v1.digest, v1.digest], "slot 0 first, alone"
        assert update_state(runner) is UpdateState.UPDATING
        now[0] += 4.9
        await settle()
        assert digests()[1] == v1.digest, "slot 0 has not run for its monitor time yet"
        now[0] += 0.1 + 1.9
        await settle()
        assert digests()[1] == v1.digest, "the delay after the batch is not over"
        now[0] += 0.1
        await settle()
        assert digests() == [v2.digest, v2.digest, v1.digest]
        now[0] += 7.0
        await settle()
        now[0] += 7.0
        await settle()
        assert digests() == [v2.digest] * 3 and update_state(runner) is UpdateState.COMPLETE
        assert len(await driver.instances()) == 3, "replaced in place: never two in a slot"
        kinds = [e["kind"] for e in host.events.since(0)]
        assert "update.complete" in kinds


async def test_start_first_runs_the_new_instance_beside_the_old_until_it_is_running() -> None:
    v1 = ServiceSpec("web", driver="memory", command=("web", "v1"), scale=1,
                     update=UpdatePolicy(order="start-first", monitor=1.0))
    async with updating(v1) as rig:
        settle, runner, driver, host, v2 = rig.settle, rig.runner, rig.driver, rig.host, rig.v2
        await runner.reconcile()
        await runner.queue.settled()
        both = {i.slot: i.digest for i in await driver.instances()}
        assert both == {"0": v1.digest, f"0_{v2.digest[:8]}": v2.digest}, "the old one still runs"
        await settle()
        assert {i.slot: i.digest for i in await driver.instances()} == {f"0_{v2.digest[:8]}": v2.digest}
        record = host.published[-1][0]
        assert (record.slot, record.digest) == (f"0_{v2.digest[:8]}", v2.digest)


async def test_a_new_instance_that_crashes_pauses_the_update_until_resumed() -> None:
    v1 = ServiceSpec("web", driver="memory", command=("web", "v1"), scale=3, spread="none",
                     update=UpdatePolicy(monitor=10.0))
    async with updating(v1) as rig:
        now, settle, runner, driver, v2 = rig.now, rig.settle, rig.runner, rig.driver, rig.v2
        await settle()
        now[0] += 1.0
        driver.crash("web", "0")
        await settle()
        rollout = runner.rollouts["web"]
        assert rollout.state is UpdateState.PAUSED and "web/0 exited on a" in rollout.reason
        (mark,) = runner.marks()
        assert mark.action is UpdateAction.PAUSED and mark.digest == v2.digest
        for _ in range(3):
            now[0] += 20.0
            await settle()
        assert [driver.specs[f"web/{slot}"].digest for slot in (1, 2)] == [v1.digest] * 2, "paused: no next batch"
        assert update_state(runner) is UpdateState.PAUSED, "even once slot 0 runs again"

        result = await runner.resume("web")
        assert result["was"] == "paused"
        await settle()
        assert update_state(runner) is UpdateState.UPDATING
        assert driver.specs["web/1"].digest == v2.digest, "the update goes on after the resume"
        with pytest.raises(UpdateRequestError):
            await runner.resume("nope")


async def test_with_failure_action_rollback_the_failed_slot_goes_back_to_the_spec_it_ran() -> None:
    v1 = ServiceSpec("web", driver="memory", command=("web", "v1"), scale=2, spread="none",
                     update=UpdatePolicy(monitor=10.0, failure_action="rollback"))
    state = Path(tempfile.mkdtemp(prefix="services-"))
    async with updating(v1, state) as rig:
        now, settle, driver, host, runner = rig.now, rig.settle, rig.driver, rig.host, rig.runner
        await settle()
        now[0] += 1.0
        driver.crash("web", "0")
        await settle()
        assert update_state(runner) is UpdateState.ROLLING_BACK
        now[0] += 2.0  # its restart delay
        await settle()
        assert [driver.specs[f"web/{slot}"].digest for slot in (0, 1)] == [v1.digest] * 2
        now[0] += 11.0
        await settle()
        assert update_state(runner) is UpdateState.ROLLED_BACK
    # A restarted agent still knows: the mark and the spec to go back to are kept on disk.
    again = ServiceRunner(host, {"memory": driver}, clock=lambda: now[0], state_dir=state)
    assert [m.action for m in again.marks()] == [UpdateAction.ROLLBACK]


class WithPeerThatLeft(Host):
    """Node b left at t=100 (its agent stopped; its instance of web/0 runs on)."""

    def members(self) -> list[Member]:
        return [*super().members(),
                Member("b", ("127.0.0.3", 7946), json.dumps({}).encode(), 0, MemberState.LEFT, 100.0)]

    def stale(self, name: str) -> bool:
        return name == "b"

    @property
    def documents(self) -> Mapping[str, NodeDocument]:
        running = (InstanceRecord("web", "0", InstancePhase.RUNNING),)
        return {"b": NodeDocument("b", 1, "x", instances=running)}


async def test_the_slots_of_a_member_that_just_left_are_not_started_elsewhere_at_once() -> None:
    """A fleet-wide stop: agents leave one after the other within moments; one that sees a peer
    leave before its own SIGTERM must not start the peer's instances (they run on)."""
    web = ServiceSpec("web", driver="memory", command=("web",), scale=1)
    host, driver = WithPeerThatLeft((web,)), MemoryDriver()
    now = [100.0 + SETTLE_TIMEOUT]
    runner = ServiceRunner(host, {"memory": driver}, clock=lambda: now[0])
    runner._settled = True
    async with jobs_running(runner) as settle:
        now[0] = 101.0
        await settle()
        assert driver.started == [], "b left a second ago: its slot stays its own"
        now[0] = 100.0 + LEFT_GRACE
        await settle()
        assert driver.started == ["web/0"], "after the grace, the slot is placed again"
