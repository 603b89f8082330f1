"""Replica placement, pure: one replica per node, sticky, waits for a lost replica before
replacing it, spreads across zones, and every node computes the same answer."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from gossip import Member, MemberState
from nodeorch.core.placement import NodeView, ServiceShape, place_service
from nodeorch.core.replica_placement import ReplicaSite, VolumeShape, place_replicas, place_volumes
from nodeorch.reconcile.volume_plan import (
    KEPT_VIEWS,
    VolumeViewCache,
    engine_events,
    engine_nodes,
    engine_orders,
    replica_sites,
    volume_slots,
    volume_view,
)
from nodeorch.spec.desired import parse_desired
from nodeorch.state.node_document import NodeDocument
from nodeorch.state.records import EngineRecord, EngineState, ReplicaMode, ReplicaRecord

DB = VolumeShape("db", replicas=3, replenish_wait=600.0)


def nodes(*names: str, zone: dict[str, str] | None = None, **flags: bool) -> list[NodeView]:
    return [NodeView(n, labels={"zone": zone[n]} if zone and n in zone else {}, **flags) for n in names]


def test_a_new_volume_gets_one_replica_on_each_of_three_nodes() -> None:
    plan = place_replicas(DB, nodes("a", "b", "c", "d", "e"), [], {}, now=0.0)
    assert len(plan.nodes) == 3 and len(set(plan.nodes)) == 3 and plan.new == plan.nodes
    assert place_replicas(DB, nodes("a", "b"), [], {}, now=0.0).nodes == ("a", "b"), "fewer nodes: as many as fit"


def test_replicas_stay_where_their_data_is_when_nodes_join() -> None:
    sites = [ReplicaSite("db", n) for n in ("c", "d", "e")]
    plan = place_replicas(DB, nodes("a", "b", "c", "d", "e", "f", "g"), sites, {}, now=0.0)
    assert plan.nodes == ("c", "d", "e") and plan.new == () and plan.surplus == ()


def test_a_lost_replica_is_waited_for_then_replaced_and_surplus_when_it_returns() -> None:
    sites = [ReplicaSite("db", n) for n in ("a", "b", "c")]
    down = {"c": 100.0}
    view = [*nodes("a", "b", "d", "e"), NodeView("c", alive=False)]
    waiting = place_replicas(DB, view, sites, down, now=100.0 + 599)
    assert waiting.nodes == ("a", "b", "c") and waiting.waiting == ("c",) and waiting.new == ()
    replaced = place_replicas(DB, view, sites, down, now=100.0 + 600)
    assert "c" not in replaced.nodes and len(replaced.new) == 1 and replaced.surplus == ("c",)
    rebuilt = [*sites, ReplicaSite("db", replaced.new[0])]
    back = place_replicas(DB, nodes("a", "b", "c", "d", "e"), rebuilt, {}, now=2000.0)
    assert len(back.nodes) == 3 and len(back.surplus) == 1 and back.new == ()


def test_a_stale_replica_gives_way_before_a_healthy_one() -> None:
    sites = [*(ReplicaSite("db", n) for n in "abc"), ReplicaSite("db", "d", healthy=False)]
    plan = place_replicas(DB, nodes("a", "b", "c", "d"), sites, {}, now=0.0)
    assert plan.nodes == ("a", "b", "c") and plan.surplus == ("d",)


def test_new_replicas_go_to_zones_without_one_first() -> None:
    zone = {"a": "z1", "b": "z1", "c": "z1", "d": "z2", "e": "z2", "f": "z3"}
    plan = place_replicas(DB, nodes(*zone, zone=zone), [], {}, now=0.0)
    assert sorted(zone[n] for n in plan.nodes) == ["z1", "z2", "z3"]
    two_zones = {"a": "z1", "b": "z1", "c": "z2"}
    plan = place_replicas(DB, nodes(*two_zones, zone=two_zones), [], {}, now=0.0)
    assert plan.nodes == ("a", "b", "c"), "a zone may hold two when there is no third (soft)"


def test_selectors_draining_and_suspect_nodes() -> None:
    ssd = VolumeShape("db", replicas=2, node_selector={"disk": "ssd"})
    view = [NodeView("a", labels={"disk": "ssd"}), NodeView("b", labels={"disk": "hdd"}),
            NodeView("c", labels={"disk": "ssd"}, draining=True), NodeView("d", labels={"disk": "ssd"}, suspect=True),
            NodeView("e", labels={"disk": "ssd"})]
    assert place_replicas(ssd, view, [], {}, now=0.0).nodes == ("a", "e")
    kept = place_replicas(ssd, view, [ReplicaSite("db", "c"), ReplicaSite("db", "d")], {}, now=0.0)
    assert kept.nodes == ("c", "d") and kept.new == (), "a draining or suspect node keeps its replica"
    moved = place_replicas(ssd, view, [ReplicaSite("db", "b"), ReplicaSite("db", "a")], {}, now=0.0)
    assert moved.surplus == ("b",) and moved.new == ("e",), "a node that no longer matches gives its replica up"


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 9), st.lists(st.sampled_from("abcdefghij"), unique=True, max_size=10),
       st.lists(st.sampled_from("abcdefghij"), unique=True, max_size=6), st.randoms(use_true_random=False))
def test_placement_is_the_same_on_every_node_and_never_doubles_a_node(
        count: int, alive: list[str], holding: list[str], rng: random.Random) -> None:
    volume = VolumeShape("v", replicas=count)
    everyone = "abcdefghij"
    view = [NodeView(n, alive=n in alive, labels={"zone": f"z{ord(n) % 3}"}) for n in everyone]
    sites = [ReplicaSite("v", n, healthy=rng.random() < 0.8) for n in holding]
    down = {n: 10.0 * i for i, n in enumerate(everyone) if n not in alive}
    plan = place_replicas(volume, view, sites, down, now=650.0)
    shuffled_view, shuffled_sites = view[:], sites[:]
    rng.shuffle(shuffled_view)
    rng.shuffle(shuffled_sites)
    assert place_replicas(volume, shuffled_view, shuffled_sites, down, now=650.0) == plan
    assert len(plan.nodes) == len(set(plan.nodes)) <= count
    assert not set(plan.surplus) & set(plan.nodes) and set(plan.new) <= set(plan.nodes)
    assert len(plan.nodes) == min(count, len([*alive, *plan.waiting])) or len(plan.nodes) == count
    # stickiness: once the new replicas exist, nothing moves
    built = [*(s for s in sites if s.node in plan.nodes), *(ReplicaSite("v", n) for n in plan.new)]
    again = place_replicas(volume, view, built, down, now=650.0)
    assert again.nodes == plan.nodes and again.new == ()


def test_every_volume_is_placed_on_its_own() -> None:
    plans = place_volumes([VolumeShape("b", 1), VolumeShape("a", 2)], nodes("x", "y"), [], {}, now=0.0)
    assert [p.volume for p in plans] == ["a", "b"] and len(plans[0].nodes) == 2


def test_a_slot_using_a_volume_goes_where_a_healthy_replica_is() -> None:
    view = nodes("a", "b", "c", "d", "e")
    free = place_service(ServiceShape("db"), view, [])[0].node
    elsewhere = sorted({"a", "b", "c", "d", "e"} - {free})[:2]
    near = ServiceShape("db", near={"0": frozenset(elsewhere)})
    assert place_service(near, view, [])[0].node in elsewhere
    unreachable = ServiceShape("db", near={"0": frozenset({"zz"})})
    assert place_service(unreachable, view, [])[0].node == free, "no eligible replica node: placed as usual"


def test_reported_replicas_count_as_healthy_in_the_set_or_in_the_newest_detached_set() -> None:
    size = 1 << 20
    sites = replica_sites({
        "a": [ReplicaRecord("db", size, ReplicaMode.DETACHED, 5, 5, 2)],
        "b": [ReplicaRecord("db", size, ReplicaMode.DETACHED, 5, 5, 2)],
        "c": [ReplicaRecord("db", size, ReplicaMode.DETACHED, 5, 4, 7)],  # an older set, whatever its version
        "d": [ReplicaRecord("web", size, ReplicaMode.MEMBER, 1, 1, 1),
              ReplicaRecord("web2", size, ReplicaMode.STALE, 1, 1, 1)],
    })
    assert {(s.volume, s.node): s.healthy for s in sites} == {
        ("db", "a"): True, ("db", "b"): True, ("db", "c"): False, ("web", "d"): True, ("web2", "d"): False}


def test_the_engine_of_a_slot_goes_where_its_healthy_replicas_are_and_stays_where_it_runs() -> None:
    spec = parse_desired(b'revision = 1\n[[volume]]\nname = "db"\nsize = "1GiB"\n'
                         b'[[service]]\nname = "db"\ncommand = ["x"]\nscale = 2\n'
                         b'volumes = [{ volume = "db", path = "/d", per_slot = true }]\n').services
    view = nodes("a", "b", "c", "d", "e")
    sites = [ReplicaSite("db-0", "c"), ReplicaSite("db-0", "d", healthy=False), ReplicaSite("db-1", "e")]
    slots = volume_slots(spec, view, sites, {})
    assert slots == {"db/0": "c", "db/1": "e"}
    assert engine_nodes(spec, slots) == {"db-0": "c", "db-1": "e"}
    assert volume_slots(spec, view, sites, {"db-0": "a"})["db/0"] == "a", "a running engine stays"
    gone = [NodeView("a", alive=False), *(n for n in view if n.name != "a")]
    assert volume_slots(spec, gone, sites, {"db-0": "a"})["db/0"] == "c", "a dead node's engine moves"


def member(name: str, state: MemberState, since: float = 0.0) -> Member:
    return Member(name, ("127.0.0.1", 1), b"", 1, state, since)


def test_an_engine_is_where_the_highest_epoch_says_and_a_left_node_keeps_its_own_a_while() -> None:
    db = parse_desired(b'revision = 1\n[[volume]]\nname = "db"\nsize = "1GiB"\n').volumes

    def engine(epoch: int) -> tuple[EngineRecord, ...]:
        return (EngineRecord("db", EngineState.HEALTHY, epoch),)

    documents = {"a": NodeDocument("a", 1, "x", engines=engine(3), replica_addr="10.0.0.1:7948"),
                 "b": NodeDocument("b", 1, "x", engines=engine(2)), "c": NodeDocument("c", 1, "x")}
    alive = [member(n, MemberState.ALIVE) for n in "abc"]
    assert volume_view(db, (), alive, documents, "c", (), now=100.0).engines == {"db": "a"}, "the newer engine"
    assert volume_view(db, (), alive, documents, "c", ("x",), now=100.0).engines["x"] == "c", "its own, unreported"
    left = [member("a", MemberState.LEFT, 90.0), member("b", MemberState.ALIVE), member("c", MemberState.ALIVE)]
    assert volume_view(db, (), left, documents, "c", (), now=100.0).engines == {"db": "a"}, "an agent restarting"
    assert volume_view(db, (), left, documents, "c", (), now=121.0).engines == {"db": "b"}, "gone past the grace"
    dead = [member("a", MemberState.DEAD, 99.0), member("b", MemberState.ALIVE), member("c", MemberState.ALIVE)]
    assert volume_view(db, (), dead, documents, "c", (), now=100.0).engines == {"db": "b"}, "dead: at once"
    assert volume_view(db, (), alive, documents, "c", (), now=100.0).addresses == {"a": "10.0.0.1:7948"}



def test_the_view_cache_answers_again_only_while_nothing_it_depends_on_changed() -> None:
    db = parse_desired(b'revision = 1\n[[volume]]\nname = "db"\nsize = "1GiB"\n').volumes

    def engine(epoch: int) -> tuple[EngineRecord, ...]:
        return (EngineRecord("db", EngineState.HEALTHY, epoch),)

    documents = {"a": NodeDocument("a", 1, "x", engines=engine(3)), "b": NodeDocument("b", 1, "x", engines=engine(2))}
    alive = [member(n, MemberState.ALIVE) for n in "ab"]
    cache = VolumeViewCache()
    first = cache.view(db, (), alive, documents, "b", (), now=100.0)
    assert cache.view(db, (), alive, dict(documents), "b", (), now=500.0) is first, "all alive: no clock"
    assert first == volume_view(db, (), alive, documents, "b", (), now=500.0)
    moved = {**documents, "a": NodeDocument("a", 2, "x")}
    assert cache.view(db, (), alive, moved, "b", (), now=500.0).engines == {"db": "b"}, "a newer document"
    assert cache.view(db, (), alive, {}, "b", ("db",), now=500.0).engines == {"db": "b"}, "its own engines"
    relabelled = [Member("a", ("127.0.0.1", 1), b'{"zone":"z"}', 1, MemberState.ALIVE, 0.0), alive[1]]
    assert cache.view(db, (), relabelled, moved, "b", (), now=500.0).nodes[0].labels == {"zone": "z"}
    left = [member("a", MemberState.LEFT, 90.0), alive[1]]
    assert cache.view(db, (), left, documents, "b", (), now=100.0).engines == {"db": "a"}, "within the grace"
    assert cache.view(db, (), left, documents, "b", (), now=121.0).engines == {"db": "b"}, "past it: computed again"
    for engines_here in (("a",), ("b",), ("c",), ("d",)):
        cache.view(db, (), alive, documents, "b", engines_here, now=500.0)
    assert len(cache._last) <= KEPT_VIEWS, "a node whose engines change for months keeps a bounded cache"


DB_SERVICE = (b'revision = 1\n[[volume]]\nname = "db"\nsize = "1GiB"\nreplicas = 2\n'
              b'[[service]]\nname = "db"\ncommand = ["x"]\nvolumes = [{ volume = "db", path = "/d" }]\n')


def test_volume_slots_go_only_to_nodes_that_can_attach() -> None:
    desired = parse_desired(DB_SERVICE)
    alive = [member(n, MemberState.ALIVE) for n in "abc"]
    replicas = (ReplicaRecord("db", 1 << 30, ReplicaMode.MEMBER, 1, 1, 1),)
    documents = {"a": NodeDocument("a", 1, "x", replicas=replicas, attach_error="not root"),
                 "b": NodeDocument("b", 1, "x"), "c": NodeDocument("c", 1, "x", replicas=replicas)}
    view = volume_view(desired.volumes, desired.services, alive, documents, "c", (), now=100.0)
    assert view.slots == {"db/0": "c"} and view.placed == {"db": "c"}, "near its replica, on a node that attaches"
    without = {**documents, "c": NodeDocument("c", 1, "x", replicas=replicas, attach_error="nbdfuse missing")}
    assert volume_view(desired.volumes, desired.services, alive, without, "c", (), now=100.0).slots == {"db/0": "b"}


def test_an_engine_moves_stop_first_while_its_old_node_lives() -> None:
    desired = parse_desired(DB_SERVICE)
    alive = [member(n, MemberState.ALIVE) for n in "abc"]
    replicas = (ReplicaRecord("db", 1 << 30, ReplicaMode.MEMBER, 1, 1, 1),)
    running = (EngineRecord("db", EngineState.HEALTHY, 3),)
    documents = {"a": NodeDocument("a", 1, "x", replicas=replicas, engines=running, draining=True,
                                   replica_addr="10.0.0.1:7948"),
                 "b": NodeDocument("b", 1, "x", replicas=replicas, replica_addr="10.0.0.2:7948"),
                 "c": NodeDocument("c", 1, "x")}
    view = volume_view(desired.volumes, desired.services, alive, documents, "b", (), now=100.0)
    assert view.placed == {"db": "b"}, "the draining node gives the slot up"
    assert engine_orders(view, desired.volumes, "b") == {}, "not before node a stopped its engine"
    stopped = {**documents, "a": documents["a"].replace(engines=())}
    view = volume_view(desired.volumes, desired.services, alive, stopped, "b", (), now=100.0)
    (order,) = engine_orders(view, desired.volumes, "b").values()
    assert order.replicas == ("10.0.0.2:7948", "10.0.0.1:7948"), "its own replica first"
    dead = [member("a", MemberState.DEAD, 99.0), *alive[1:]]
    view = volume_view(desired.volumes, desired.services, dead, documents, "b", (), now=100.0)
    assert "db" in engine_orders(view, desired.volumes, "b"), "a dead node's engine is fenced, not waited for"


def test_engine_events_name_degradation_faults_and_recovery_but_not_starts() -> None:
    def report(state: EngineState) -> tuple[EngineRecord, ...]:
        return (EngineRecord("db", state, 4, ("a", "b")),)

    assert engine_events((), report(EngineState.HEALTHY)) == []
    assert engine_events(report(EngineState.STARTING), report(EngineState.HEALTHY)) == []
    assert [k for k, _ in engine_events(report(EngineState.HEALTHY), report(EngineState.DEGRADED))] == [
        "volume.degraded"]
    kind, fields = engine_events(report(EngineState.FAULTED), report(EngineState.HEALTHY))[0]
    assert kind == "volume.healthy" and fields == {"volume": "db", "epoch": 4, "members": ["a", "b"]}


TWO_VOLUMES = (b'revision = 1\n'
               b'[[volume]]\nname = "a"\nsize = "1GiB"\nreplicas = 2\n'
               b'[[volume]]\nname = "b"\nsize = "1GiB"\nreplicas = 2\n'
               b'[[service]]\nname = "a"\ncommand = ["x"]\nvolumes = [{ volume = "a", path = "/d" }]\n'
               b'[[service]]\nname = "b"\ncommand = ["x"]\nvolumes = [{ volume = "b", path = "/d" }]\n')


def test_rebuilds_wait_for_a_free_slot_on_the_target_and_on_the_engine_node() -> None:
    desired = parse_desired(TWO_VOLUMES)
    alive = [member(n, MemberState.ALIVE) for n in ("n1", "n2", "n3")]
    replica = {v: ReplicaRecord(v, 1 << 30, ReplicaMode.MEMBER, 1, 1, 1) for v in "ab"}
    engines = tuple(EngineRecord(v, EngineState.DEGRADED, 2, ("n1",)) for v in "ab")  # each lost its 2nd replica
    documents = {"n1": NodeDocument("n1", 1, "x", replicas=(replica["a"], replica["b"]), engines=engines,
                                    replica_addr="10.0.0.1:7948", max_rebuilds=1),
                 "n2": NodeDocument("n2", 1, "x", replica_addr="10.0.0.2:7948"),
                 "n3": NodeDocument("n3", 1, "x", replica_addr="10.0.0.3:7948")}
    view = volume_view(desired.volumes, desired.services, alive, documents, "n1", (), now=100.0)
    assert view.placed == {"a": "n1", "b": "n1"}
    orders = engine_orders(view, desired.volumes, "n1")
    waiting = [o for o in orders.values() if o.held]
    assert len(waiting) == 1 and len(orders) == 2, "n1 takes part in one rebuild at a time (max_rebuilds = 1)"
    started = next(o for o in orders.values() if not o.held)
    target = next(n for n in ("n2", "n3") if f"10.0.0.{n[1]}:7948" in started.replicas and n != "n1")
    busy = {**documents, "n1": documents["n1"].replace(engines=tuple(
        EngineRecord(e.volume, e.state, e.epoch, e.members, rebuilds=((target, 0.3),) if e.volume == started.volume
                     else ()) for e in engines))}
    view = volume_view(desired.volumes, desired.services, alive, busy, "n1", (), now=100.0)
    again = engine_orders(view, desired.volumes, "n1")
    assert again[started.volume].held == () and again[waiting[0].volume].held == waiting[0].held, \
        "the running rebuild goes on; the other still waits"
    done = {**documents, "n1": documents["n1"].replace(engines=tuple(
        EngineRecord(e.volume, e.state, e.epoch, ("n1", target) if e.volume == started.volume else e.members)
        for e in engines))}
    view = volume_view(desired.volumes, desired.services, alive, done, "n1", (), now=100.0)
    assert all(o.held == () for o in engine_orders(view, desired.volumes, "n1").values()), "its turn now"
