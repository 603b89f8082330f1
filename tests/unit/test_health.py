"""Health verdicts: thresholds, the initializing timeout, observers, agreement, strategies."""

from __future__ import annotations

from nodeorch.core.health_verdicts import HealthTracker, aggregate, observers
from nodeorch.reconcile.health_watch import Watched, instance_health, to_recreate
from nodeorch.spec.service_spec import HealthSpec, ServiceSpec
from nodeorch.state.records import HealthStatus, HealthVerdict

INITIALIZING, HEALTHY, UNHEALTHY, UNKNOWN = (HealthStatus.INITIALIZING, HealthStatus.HEALTHY,
                                             HealthStatus.UNHEALTHY, HealthStatus.UNKNOWN)
SPEC = HealthSpec("http", port=80, healthy_threshold=2, unhealthy_threshold=3, initializing_timeout=10)


def test_thresholds_need_consecutive_results() -> None:
    t = HealthTracker(SPEC, started=0.0)
    assert t.record(True, 1) == INITIALIZING
    assert t.record(True, 2) == HEALTHY
    assert [t.record(False, n) for n in (3, 4)] == [HEALTHY, HEALTHY]
    assert t.record(True, 5) == HEALTHY, "a success resets the failure count"
    assert [t.record(False, n) for n in (6, 7, 8)] == [HEALTHY, HEALTHY, UNHEALTHY]
    assert t.since == 8


def test_an_instance_that_never_becomes_healthy_is_unhealthy_after_the_initializing_timeout() -> None:
    t = HealthTracker(SPEC, started=0.0)
    assert t.record(False, 5) == INITIALIZING
    assert t.record(True, 11) == UNHEALTHY


def test_observers_are_the_owner_and_two_others_agreed_by_everyone() -> None:
    live = ["a", "b", "c", "d", "e"]
    chosen = observers("web", "0", "c", live, "http")
    assert chosen[0] == "c" and len(chosen) == 3 and len(set(chosen)) == 3
    assert observers("web", "0", "c", list(reversed(live)), "http") == chosen
    assert observers("web", "0", "c", live, "exec") == ["c"], "exec runs where the instance runs"
    assert observers("web", "0", "a", ["a", "b"], "tcp") == ["a", "b"]


def test_unhealthy_only_when_every_live_observer_agrees() -> None:
    assert aggregate({"a": UNHEALTHY, "b": UNHEALTHY}, ["a", "b"]) == UNHEALTHY
    assert aggregate({"a": UNHEALTHY, "b": HEALTHY}, ["a", "b"]) == HEALTHY
    assert aggregate({"a": UNHEALTHY}, ["a", "b"]) == UNKNOWN, "a silent observer is no vote to kill"


def web(strategy: str, quorum: int = 1) -> ServiceSpec:
    return ServiceSpec("web", command=("x",), scale=2, health=HealthSpec("http", port=80, strategy=strategy,
                                                                          quorum=quorum))


def test_verdicts_about_an_older_instance_do_not_count() -> None:
    item = Watched("web", "0", "a", "ref-2", "127.0.0.2", 0.0)
    live = ["a", "b"]
    stale = {n: [HealthVerdict("web", "0", "a", "ref-1", UNHEALTHY)] for n in live}
    assert instance_health(item, web("recreate"), live, stale) == UNKNOWN
    fresh = {n: [HealthVerdict("web", "0", "a", "ref-2", UNHEALTHY)] for n in live}
    assert instance_health(item, web("recreate"), live, fresh) == UNHEALTHY


def test_strategies_decide_what_is_recreated() -> None:
    sick = Watched("web", "0", "a", "r0", "h", 0.0)
    well = Watched("web", "1", "b", "r1", "h", 0.0)
    health = {sick: UNHEALTHY, well: HEALTHY}
    assert to_recreate([sick], {"web": web("recreate")}, health) == {"web/0"}
    assert to_recreate([sick], {"web": web("none")}, health) == set()
    assert to_recreate([sick], {"web": web("recreate_on_quorum", quorum=1)}, health) == {"web/0"}
    assert to_recreate([sick], {"web": web("recreate_on_quorum", quorum=2)}, health) == set()
