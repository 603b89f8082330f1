"""The rolling-update core in virtual time: batches in slot order, monitor and delay, a failure
pausing or rolling back the update cluster-wide, and an operator's resume."""

from __future__ import annotations

from nodeorch.reconcile.rolling_update import SlotInstance, UpdateState, deciding_mark, failure_mark, plan_rollout
from nodeorch.spec.service_spec import HealthSpec, ServiceSpec, UpdatePolicy
from nodeorch.state.records import HealthStatus, InstancePhase, UpdateAction, UpdateMark

OLD = ServiceSpec("web", command=("web", "--v1"), scale=5)
POLICY = UpdatePolicy(parallelism=2, delay=3.0, monitor=10.0)
NEW = ServiceSpec("web", command=("web", "--v2"), scale=5, update=POLICY)
SLOTS = [str(i) for i in range(5)]


def running(slot: str, digest: str, since: float = 0.0, health: HealthStatus = HealthStatus.UNKNOWN,
            phase: InstancePhase = InstancePhase.RUNNING) -> SlotInstance:
    return SlotInstance(slot, f"n{slot}", digest, phase, health, since)


def test_only_the_first_batch_may_be_replaced_and_the_next_waits_for_monitor_and_delay() -> None:
    fleet = [running(s, OLD.digest) for s in SLOTS]
    rollout = plan_rollout(100.0, NEW, SLOTS, fleet, [])
    assert rollout.state is UpdateState.UPDATING and rollout.target == NEW.digest
    assert rollout.replaceable == {"0", "1"} and (rollout.done, rollout.total) == (0, 5)
    assert rollout.previous == OLD.digest

    fleet[0] = running("0", NEW.digest, since=101.0)
    fleet[1] = running("1", NEW.digest, since=102.0)
    assert plan_rollout(105.0, NEW, SLOTS, fleet, []).replaceable == frozenset(), "within the monitor time"
    assert plan_rollout(112.5, NEW, SLOTS, fleet, []).replaceable == frozenset(), "the batch is done at 112"
    assert plan_rollout(114.9, NEW, SLOTS, fleet, []).replaceable == frozenset(), "then a delay of 3 s"
    rollout = plan_rollout(115.0, NEW, SLOTS, fleet, [])
    assert rollout.replaceable == {"2", "3"} and rollout.done == 2


def test_slots_are_taken_in_number_order_not_text_order() -> None:
    spec = ServiceSpec("web", command=("web", "--v2"), scale=12)
    slots = [str(i) for i in range(12)]
    fleet = [running(s, OLD.digest) for s in slots]
    assert plan_rollout(0.0, spec, slots, fleet, []).replaceable == {"0"}
    fleet = [running(s, spec.digest if int(s) < 2 else OLD.digest, since=-100) for s in slots]
    assert plan_rollout(0.0, spec, slots, fleet, []).replaceable == {"2"}, "2 before 10"


def test_with_a_health_check_a_batch_is_done_only_once_healthy() -> None:
    spec = ServiceSpec("web", command=("web", "--v2"), scale=2, health=HealthSpec("tcp", port=80),
                       update=UpdatePolicy(monitor=1.0))
    fleet = [running("0", spec.digest, health=HealthStatus.INITIALIZING), running("1", OLD.digest)]
    assert plan_rollout(50.0, spec, ["0", "1"], fleet, []).replaceable == frozenset()
    fleet[0] = running("0", spec.digest, health=HealthStatus.HEALTHY)
    rollout = plan_rollout(50.0, spec, ["0", "1"], fleet, [])
    assert rollout.replaceable == {"1"}


def test_a_failing_new_instance_is_reported_and_a_pause_mark_stops_every_batch() -> None:
    fleet = [running(s, OLD.digest) for s in SLOTS]
    fleet[0] = running("0", NEW.digest, since=101.0, phase=InstancePhase.RESTARTING)
    fleet[1] = running("1", NEW.digest, since=101.0)
    rollout = plan_rollout(103.0, NEW, SLOTS, fleet, [])
    assert rollout.failures == (("0", "n0", "exited on n0"),)
    mark = failure_mark(103.0, rollout, NEW, "0", "exited on n0", rollout.previous)
    assert mark.action is UpdateAction.PAUSED and "web/0 exited on n0" in mark.reason

    paused = plan_rollout(200.0, NEW, SLOTS, fleet, [mark])
    assert paused.state is UpdateState.PAUSED and paused.replaceable == frozenset()
    assert "exited" in paused.reason

    # The operator resumes: the failure before the resume no longer counts, the update goes on.
    resume = UpdateMark("web", NEW.digest, UpdateAction.RESUMED, 201.0)
    fleet[0] = running("0", NEW.digest, since=150.0)
    resumed = plan_rollout(202.0, NEW, SLOTS, fleet, [mark, resume])
    assert resumed.state is UpdateState.UPDATING and resumed.failures == ()
    assert resumed.replaceable == {"2", "3"}


def test_a_rollback_mark_sends_replaced_slots_back_to_the_previous_spec() -> None:
    rollback_policy = UpdatePolicy(failure_action="rollback", monitor=1.0)
    spec = ServiceSpec("web", command=("web", "--v2"), scale=3, update=rollback_policy)
    fleet = [running("0", spec.digest, since=10.0, phase=InstancePhase.EXITED),
             running("1", OLD.digest), running("2", OLD.digest)]
    failing = plan_rollout(11.0, spec, ["0", "1", "2"], fleet, [])
    mark = failure_mark(11.0, failing, spec, "0", "exited on n0", failing.previous)
    assert mark.action is UpdateAction.ROLLBACK and mark.previous == OLD.digest

    back = plan_rollout(12.0, spec, ["0", "1", "2"], fleet, [mark])
    assert back.state is UpdateState.ROLLING_BACK and back.target == OLD.digest
    assert back.replaceable == {"0"}, "the slot on the new spec goes back; the others already run the old"
    fleet[0] = running("0", OLD.digest, since=12.5)
    done = plan_rollout(14.0, spec, ["0", "1", "2"], fleet, [mark])
    assert done.state is UpdateState.ROLLED_BACK and done.replaceable == frozenset()


def test_without_a_previous_spec_a_rollback_is_a_pause() -> None:
    spec = ServiceSpec("web", command=("web", "--v2"), scale=1, update=UpdatePolicy(failure_action="rollback"))
    fleet = [running("0", spec.digest, phase=InstancePhase.EXITED)]
    rollout = plan_rollout(1.0, spec, ["0"], fleet, [])
    assert failure_mark(1.0, rollout, spec, "0", "exited", previous="").action is UpdateAction.PAUSED


def test_the_latest_mark_of_any_node_decides_and_marks_on_other_specs_are_ignored() -> None:
    pause = UpdateMark("web", NEW.digest, UpdateAction.PAUSED, 10.0, "x")
    resume = UpdateMark("web", NEW.digest, UpdateAction.RESUMED, 20.0)
    again = UpdateMark("web", NEW.digest, UpdateAction.PAUSED, 30.0, "y")
    other = UpdateMark("web", OLD.digest, UpdateAction.PAUSED, 40.0)
    assert deciding_mark("web", NEW.digest, [again, pause, resume, other]) == again
    assert deciding_mark("web", NEW.digest, [pause, resume]) == resume
    assert deciding_mark("db", NEW.digest, [pause]) is None


def test_an_update_done_everywhere_is_complete_and_a_later_crash_is_no_update_failure() -> None:
    fleet = [running(s, NEW.digest, since=0.0) for s in SLOTS]
    assert plan_rollout(20.0, NEW, SLOTS, fleet, []).state is UpdateState.COMPLETE
    assert plan_rollout(5.0, NEW, SLOTS, fleet, []).state is UpdateState.UPDATING, "the last batch is monitored"


def test_a_new_scale_or_update_policy_changes_no_digest_but_a_new_command_does() -> None:
    assert ServiceSpec("web", command=("web",), scale=1).digest == ServiceSpec(
        "web", command=("web",), scale=9, update=POLICY, restart_delay=5.0).digest
    assert ServiceSpec("web", command=("web",)).digest != ServiceSpec("web", command=("web", "-v")).digest
