"""Lifeguard's suspicion timeout and local health multiplier."""

from __future__ import annotations

import pytest

from gossip._awareness import Awareness
from gossip._suspicion import SuspicionTimer, suspicion_timeout


def test_timeout_starts_at_max_and_reaches_min_after_k_confirmations() -> None:
    assert suspicion_timeout(0, 3, 4.0, 24.0) == 24.0
    assert suspicion_timeout(3, 3, 4.0, 24.0) == 4.0
    middle = suspicion_timeout(1, 3, 4.0, 24.0)
    assert 4.0 < middle < 24.0
    assert middle == pytest.approx(24.0 - 20.0 * 0.5)  # log(2) / log(4) = 0.5


def test_without_expected_confirmations_the_minimum_applies() -> None:
    timer = SuspicionTimer(incarnation=1, accuser="a", start=100.0, k=0, min_timeout=4.0, max_timeout=24.0)
    assert timer.deadline == 104.0


def test_each_independent_confirmation_pulls_the_deadline_in() -> None:
    timer = SuspicionTimer(incarnation=1, accuser="a", start=0.0, k=2, min_timeout=4.0, max_timeout=24.0)
    assert timer.deadline == 24.0
    assert timer.confirm("b")
    first = timer.deadline
    assert 4.0 < first < 24.0
    assert not timer.confirm("b"), "a repeated confirmer is not independent"
    assert not timer.confirm("a"), "the accuser cannot confirm itself"
    assert timer.deadline == first
    assert timer.confirm("c")
    assert timer.deadline == 4.0
    assert not timer.confirm("d"), "beyond k, confirmations change nothing and are not re-gossiped"


def test_postpone_moves_the_deadline_by_the_stall() -> None:
    timer = SuspicionTimer(incarnation=1, accuser="a", start=0.0, k=0, min_timeout=4.0, max_timeout=24.0)
    timer.postpone(1.5)
    assert timer.deadline == 5.5


def test_awareness_is_bounded_and_scales_timeouts() -> None:
    health = Awareness(max_multiplier=8)
    assert health.scale(0.5) == 0.5
    health.apply(3)
    assert health.multiplier == 4
    assert health.scale(0.5) == 2.0
    health.apply(100)
    assert health.score == 7
    health.apply(-100)
    assert health.score == 0


def test_a_held_verdict_waits_step_by_step_but_never_past_the_maximal_timeout() -> None:
    timer = SuspicionTimer(incarnation=1, accuser="a", start=0.0, k=2, min_timeout=4.0, max_timeout=24.0)
    timer.confirm("b")
    timer.confirm("c")
    assert timer.deadline == 4.0
    assert timer.hold(4.0, 1.0) and timer.deadline == 5.0
    assert timer.hold(23.5, 1.0) and timer.deadline == 24.0, "the last step ends at the maximal timeout"
    assert not timer.hold(24.0, 1.0), "past the maximal timeout the verdict is due"


def test_only_the_worst_health_score_counts_as_worst() -> None:
    health = Awareness(max_multiplier=8)
    health.apply(6)
    assert not health.worst
    health.apply(1)
    assert health.worst
    assert not Awareness(max_multiplier=1).worst, "without a health multiplier nothing is ever held"
