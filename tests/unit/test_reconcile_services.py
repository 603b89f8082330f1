"""The services reconciler's planning, pass by pass, with an explicit clock."""

from __future__ import annotations

from drivers.containers import InstanceState, InstanceStatus
from nodeorch.core.placement import Assignment, NodeView, RunningInstance
from nodeorch.reconcile.service_plan import (
    PlacementMemo,
    Replace,
    ServiceMemory,
    Start,
    Stop,
    placed_slots,
    plan_services,
)
from nodeorch.spec.service_spec import ServiceSpec
from nodeorch.state.records import HealthStatus, InstancePhase, InstanceRecord

WEB = ServiceSpec("web", command=("web",), scale=1, restart_delay=1.0, restart_max_delay=8.0)
NODES = [NodeView("a"), NodeView("b")]


def owner(spec: ServiceSpec = WEB) -> str:
    """Which node placement gives slot 0 to, from a fresh start."""
    for me in ("a", "b"):
        if plan_services(0.0, me, [spec], NODES, {}, [], ServiceMemory()):
            return me
    raise AssertionError("nobody owns web/0")


def running(spec: ServiceSpec = WEB, state: InstanceState = InstanceState.RUNNING, started: float = 0.0,
            digest: str | None = None) -> InstanceStatus:
    return InstanceStatus("web", "0", digest or spec.digest, state, "1", started)


def test_exactly_one_node_starts_the_instance() -> None:
    decisions = {me: plan_services(0.0, me, [WEB], NODES, {}, [], ServiceMemory()) for me in ("a", "b")}
    starts = [me for me, d in decisions.items() if d and isinstance(d[0], Start)]
    assert len(starts) == 1


def test_a_running_instance_is_left_alone_and_a_changed_spec_replaces_it() -> None:
    me = owner()
    assert plan_services(1.0, me, [WEB], NODES, {}, [running()], ServiceMemory()) == []
    changed = ServiceSpec("web", command=("web", "--v2"), scale=1)
    (decision,) = plan_services(1.0, me, [changed], NODES, {}, [running(WEB)], ServiceMemory())
    assert isinstance(decision, Replace) and decision.spec.digest == changed.digest


def test_a_crash_restarts_in_place_with_a_doubling_delay() -> None:
    me, memory = owner(), ServiceMemory()
    restarts = []
    now = 0.0
    for crash in range(4):
        crashed = running(state=InstanceState.EXITED, started=float(crash))
        while not plan_services(now, me, [WEB], NODES, {}, [crashed], memory):
            now += 0.25
        restarts.append(now)
    gaps = [round(b - a, 2) for a, b in zip([0.0, *restarts], restarts, strict=False)]
    assert gaps[0] == 1.0 and gaps[1] >= 2.0 and gaps[2] >= 4.0, gaps
    assert memory.restarts["web/0"] == 4


def test_start_first_handover_waits_for_the_new_owner() -> None:
    me = owner()
    other = "b" if me == "a" else "a"
    draining = [NodeView(me, draining=True), NodeView(other)]
    memory = ServiceMemory()
    assert plan_services(0.0, me, [WEB], draining, {}, [running()], memory) == [], "keeps it until replaced"
    (start,) = plan_services(0.0, other, [WEB], draining, {me: [InstanceRecord("web", "0", InstancePhase.RUNNING)]},
                             [], ServiceMemory())
    assert isinstance(start, Start)
    reported = {other: [InstanceRecord("web", "0", InstancePhase.RUNNING)]}
    (stop,) = plan_services(1.0, me, [WEB], draining, reported, [running()], memory)
    assert isinstance(stop, Stop) and "runs it" in stop.reason


def test_an_instance_reported_by_an_earlier_run_of_a_restarted_agent_completes_no_handover() -> None:
    """A host came back after a crash: until its new document arrives, others hold the one its
    previous run wrote, which says it runs the slot. Stopping ours on that word would leave the
    slot running nowhere."""
    me = owner()
    other = "b" if me == "a" else "a"
    draining = [NodeView(me, draining=True), NodeView(other)]
    reported = {other: [InstanceRecord("web", "0", InstancePhase.RUNNING)]}
    memory = ServiceMemory()
    assert plan_services(1.0, me, [WEB], draining, reported, [running()], memory, current=set()) == []
    (stop,) = plan_services(2.0, me, [WEB], draining, reported, [running()], memory, current={other})
    assert isinstance(stop, Stop) and "runs it" in stop.reason


def test_a_handover_that_never_completes_times_out() -> None:
    me = owner()
    other = "b" if me == "a" else "a"
    draining = [NodeView(me, draining=True), NodeView(other)]
    memory = ServiceMemory()
    plan_services(0.0, me, [WEB], draining, {}, [running()], memory)
    (stop,) = plan_services(31.0, me, [WEB], draining, {}, [running()], memory)
    assert isinstance(stop, Stop) and "timed out" in stop.reason


def test_an_instance_of_a_removed_service_is_stopped() -> None:
    (stop,) = plan_services(0.0, "a", [], NODES, {}, [running()], ServiceMemory())
    assert isinstance(stop, Stop) and stop.reason == "no longer desired"


def test_a_health_checked_handover_waits_for_the_new_instance_to_be_healthy() -> None:
    from nodeorch.spec.service_spec import HealthSpec

    checked = ServiceSpec("web", command=("web",), scale=1, health=HealthSpec("http", port=80))
    me = owner(checked)
    other = "b" if me == "a" else "a"
    draining = [NodeView(me, draining=True), NodeView(other)]
    memory = ServiceMemory()
    mine = running(checked)
    starting = {other: [InstanceRecord("web", "0", InstancePhase.RUNNING)]}
    assert plan_services(1.0, me, [checked], draining, starting, [mine], memory) == []
    healthy = {other: [InstanceRecord("web", "0", InstancePhase.RUNNING, health=HealthStatus.HEALTHY)]}
    (stop,) = plan_services(2.0, me, [checked], draining, healthy, [mine], memory)
    assert isinstance(stop, Stop)


def test_the_placement_memo_answers_again_only_for_equal_inputs() -> None:
    memo = PlacementMemo()
    held = [RunningInstance("web", "0", "a")]
    first = memo.placed_slots([WEB], NODES, held, {})
    assert first == placed_slots([WEB], NODES, held, {}) == [Assignment("web", "0", "a")]
    assert memo.placed_slots([WEB], list(NODES), [RunningInstance("web", "0", "a")], {}) is first
    draining = [NodeView("a", draining=True), NodeView("b")]
    assert memo.placed_slots([WEB], draining, held, {}) == [Assignment("web", "0", "b")], "a node drains"
    assert memo.placed_slots([WEB], NODES, [], {}) == placed_slots([WEB], NODES, [], {}), "its instance stopped"
