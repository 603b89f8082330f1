"""Incarnation rules of the member table."""

from __future__ import annotations

from gossip._members import MemberTable, Outcome
from gossip._messages import Alive, Dead, MemberState, Suspect

A = ("127.0.0.1", 7001)
B = ("127.0.0.2", 7001)
B2 = ("127.0.0.9", 7001)


def table(reclaim: float = 30.0) -> MemberTable:
    t = MemberTable("a", A, b"", now=0.0, reclaim_time=reclaim)
    t.apply_alive(Alive(1, "b", B, b""), 0.0)
    return t


def state(t: MemberTable, name: str) -> tuple[MemberState, int]:
    entry = t.get(name)
    assert entry is not None
    return entry.state, entry.incarnation


def test_a_new_member_joins_and_an_older_alive_is_ignored() -> None:
    t = table()
    assert state(t, "b") == (MemberState.ALIVE, 1)
    assert t.apply_alive(Alive(0, "b", B, b""), 1.0) == {Outcome.IGNORED}
    assert t.apply_alive(Alive(1, "b", B, b""), 1.0) == {Outcome.IGNORED}


def test_newer_alive_with_new_metadata_is_an_update() -> None:
    t = table()
    assert t.apply_alive(Alive(2, "b", B, b"role=db"), 1.0) == {Outcome.UPDATED}
    entry = t.get("b")
    assert entry is not None and entry.meta == b"role=db"


def test_suspect_needs_at_least_the_current_incarnation() -> None:
    t = table()
    assert t.apply_suspect(Suspect(0, "b", "c"), 1.0) is Outcome.IGNORED
    assert t.apply_suspect(Suspect(1, "b", "c"), 1.0) is Outcome.SUSPECTED
    assert state(t, "b") == (MemberState.SUSPECT, 1)
    assert t.apply_suspect(Suspect(1, "b", "d"), 1.0) is Outcome.CONFIRMED


def test_a_suspect_is_alive_again_only_with_a_higher_incarnation() -> None:
    t = table()
    t.apply_suspect(Suspect(1, "b", "c"), 1.0)
    assert t.apply_alive(Alive(1, "b", B, b""), 2.0) == {Outcome.IGNORED}
    assert t.apply_alive(Alive(2, "b", B, b""), 2.0) == {Outcome.ALIVE_AGAIN}
    assert state(t, "b") == (MemberState.ALIVE, 2)


def test_dead_wins_at_equal_incarnation_and_a_rejoin_needs_a_higher_one() -> None:
    t = table()
    assert t.apply_dead(Dead(1, "b", "c"), 1.0) is Outcome.DIED
    assert t.apply_suspect(Suspect(1, "b", "c"), 1.0) is Outcome.IGNORED
    assert t.apply_alive(Alive(1, "b", B, b""), 2.0) == {Outcome.IGNORED}
    assert t.apply_alive(Alive(2, "b", B, b""), 2.0) == {Outcome.JOINED}


def test_a_leave_is_distinct_from_a_death_and_overrides_it() -> None:
    t = table()
    assert t.apply_dead(Dead(1, "b", "b"), 1.0) is Outcome.LEFT
    assert state(t, "b") == (MemberState.LEFT, 1)
    t2 = table()
    t2.apply_dead(Dead(1, "b", "c"), 1.0)
    assert t2.apply_dead(Dead(1, "b", "b"), 1.5) is Outcome.LEFT, "a late leave explains a death"


def test_accusations_of_the_local_node_call_for_refutation() -> None:
    t = table()
    assert t.apply_suspect(Suspect(0, "a", "b"), 1.0) is Outcome.REFUTE
    assert t.apply_dead(Dead(0, "a", "b"), 1.0) is Outcome.REFUTE
    assert t.refute(5) == 6, "the refutation overtakes the accusation"
    assert t.apply_alive(Alive(9, "a", A, b""), 1.0) == {Outcome.REFUTE}, "a newer life of us elsewhere"
    assert t.apply_alive(Alive(6, "a", A, b""), 1.0) == {Outcome.IGNORED}, "our own echo"


def test_a_leaving_node_refutes_nothing() -> None:
    t = table()
    t.mark_local_left(1.0)
    assert t.apply_dead(Dead(0, "a", "b"), 1.0) is Outcome.IGNORED
    assert t.apply_suspect(Suspect(0, "a", "b"), 1.0) is Outcome.IGNORED
    assert state(t, "a") == (MemberState.LEFT, 0)


def test_a_name_claimed_from_another_address_is_refused_while_the_holder_lives() -> None:
    t = table()
    assert t.apply_alive(Alive(5, "b", B2, b""), 1.0) == {Outcome.CONFLICT}
    t.apply_dead(Dead(1, "b", "c"), 2.0)
    assert t.apply_alive(Alive(5, "b", B2, b""), 10.0) == {Outcome.CONFLICT}, "dead, but not long enough"


def test_a_dead_name_is_reclaimable_after_the_reclaim_time_even_at_a_lower_incarnation() -> None:
    t = table(reclaim=30.0)
    t.apply_dead(Dead(7, "b", "c"), 2.0)
    assert t.apply_alive(Alive(1, "b", B2, b""), 32.0) == {Outcome.JOINED}
    entry = t.get("b")
    assert entry is not None and entry.addr == B2 and entry.state is MemberState.ALIVE


def test_a_left_name_is_reclaimable_at_once() -> None:
    t = table()
    t.apply_dead(Dead(1, "b", "b"), 2.0)
    assert t.apply_alive(Alive(1, "b", B2, b""), 2.1) == {Outcome.JOINED}


def test_tombstones_are_reaped_after_the_timeout() -> None:
    t = table()
    t.apply_dead(Dead(1, "b", "c"), 2.0)
    assert t.reap(100.0, tombstone_timeout=3600.0) == []
    assert [e.name for e in t.reap(3602.0, tombstone_timeout=3600.0)] == ["b"]
    assert "b" not in t


def test_tables_sharing_a_joined_view_change_only_their_own_copy() -> None:
    base_table = MemberTable("", ("127.0.0.1", 1), b"", 0.0, 30.0)
    for i in range(5):
        base_table.apply_alive(Alive(0, f"n{i}", ("127.0.0.1", 7000 + i), b""), 0.0)
    base = {e.name: e for e in base_table.entries() if e.name}
    a = MemberTable("n0", ("127.0.0.1", 7000), b"", 0.0, 30.0)
    b = MemberTable("n1", ("127.0.0.1", 7001), b"", 0.0, 30.0)
    a.share(base)
    b.share(base)
    assert len(a) == len(b) == 5 and "n3" in a
    assert a.apply_dead(Dead(0, "n3", "n0"), 10.0) is Outcome.DIED
    assert a.get("n3").state is MemberState.DEAD  # type: ignore[union-attr]
    assert b.get("n3").state is MemberState.ALIVE, "the other table, and the shared view, are untouched"  # type: ignore[union-attr]
    assert base["n3"].state is MemberState.ALIVE
    assert [e.name for e in a.reap(10.0 + 100.0, 50.0)] == ["n3"]
    assert len(a) == 4 and "n3" not in a and a.get("n3") is None and len(b) == 5
    assert a.apply_alive(Alive(1, "n3", ("127.0.0.1", 7003), b""), 200.0) == {Outcome.JOINED}
    assert len(a) == 5 and sorted(e.name for e in a.entries()) == ["n0", "n1", "n2", "n3", "n4"]
