"""The transmit-limited queue: bounded retransmits, replacement, priority, packet budget."""

from __future__ import annotations

from gossip._broadcasts import BroadcastQueue


def test_each_broadcast_is_sent_exactly_limit_times() -> None:
    queue = BroadcastQueue(max_depth=100)
    queue.queue("a", b"x" * 10)
    sends = 0
    while queue.take(budget=1000, limit=4):
        sends += 1
    assert sends == 4
    assert not queue.pending("a")


def test_a_newer_update_about_the_same_subject_replaces_the_queued_one() -> None:
    queue = BroadcastQueue(max_depth=100)
    queue.queue("node-1", b"old")
    queue.take(budget=1000, limit=4)
    queue.queue("node-1", b"new")
    assert len(queue) == 1
    assert queue.transmits("node-1") == 0, "the replacement starts its own retransmit count"
    assert queue.take(budget=1000, limit=4) == [b"new"]


def test_least_sent_first_and_newest_first_among_equals() -> None:
    queue = BroadcastQueue(max_depth=100)
    queue.queue("a", b"aaaa")
    queue.take(budget=1000, limit=10)
    queue.queue("b", b"bbbb")
    queue.queue("c", b"cccc")
    assert queue.take(budget=1000, limit=10) == [b"cccc", b"bbbb", b"aaaa"]


def test_budget_is_never_exceeded_and_small_items_fill_the_gaps() -> None:
    queue = BroadcastQueue(max_depth=100)
    queue.queue("big", b"B" * 900)
    queue.queue("mid", b"M" * 600)
    queue.queue("small", b"s" * 50)
    taken = queue.take(budget=1000, limit=10)
    assert sum(map(len, taken)) <= 1000
    assert taken == [b"s" * 50, b"M" * 600]


def test_depth_is_bounded_by_pruning_the_most_sent() -> None:
    queue = BroadcastQueue(max_depth=16)
    for i in range(16):
        queue.queue(i, bytes(8))
    queue.take(budget=8 * 4, limit=100)  # the four newest get one transmit each
    for i in range(16, 20):
        queue.queue(i, bytes(8))
    assert len(queue) == 16
    for i in range(12, 16):
        assert not queue.pending(i), "items already sent are pruned before unsent ones"
    for i in range(16, 20):
        assert queue.pending(i)
