"""Placement properties, checked with hypothesis over random clusters and services."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from nodeorch.core.placement import Assignment, NodeView, RunningInstance, ServiceShape, place_service, place_services

ZONES = ["z1", "z2", "z3"]


@st.composite
def clusters(draw: st.DrawFn) -> list[NodeView]:
    count = draw(st.integers(1, 12))
    return [
        NodeView(
            name=f"node-{i}",
            alive=draw(st.booleans()) or i == 0,
            draining=draw(st.integers(0, 5)) == 0,
            labels={"zone": draw(st.sampled_from(ZONES))},
        )
        for i in range(count)
    ]


services = st.builds(
    ServiceShape,
    name=st.sampled_from(["web", "api", "db", "cache"]),
    scale=st.integers(0, 6),
    global_=st.booleans(),
    spread=st.sampled_from(["node", "none"]),
    node_selector=st.one_of(st.just({}), st.builds(lambda z: {"zone": z}, st.sampled_from(ZONES))),
)


def as_running(assignments: list[Assignment]) -> list[RunningInstance]:
    return [RunningInstance(a.service, a.slot, a.node) for a in assignments]


def eligible(service: ServiceShape, nodes: list[NodeView]) -> list[NodeView]:
    return [n for n in nodes if n.alive and not n.draining
            and all(n.labels.get(k) == v for k, v in service.node_selector.items())]


@given(services, clusters(), st.randoms())
def test_deterministic_and_independent_of_input_order(
    service: ServiceShape, nodes: list[NodeView], rng: random.Random
) -> None:
    running = as_running(place_service(service, nodes, []))[:2]
    first = place_service(service, nodes, running)
    shuffled_nodes, shuffled_running = nodes[:], running[:]
    rng.shuffle(shuffled_nodes)
    rng.shuffle(shuffled_running)
    assert place_service(service, shuffled_nodes, shuffled_running) == first


@given(services, clusters())
def test_exactly_the_desired_count_on_eligible_nodes_only(service: ServiceShape, nodes: list[NodeView]) -> None:
    placement = place_service(service, nodes, [])
    allowed = {n.name for n in eligible(service, nodes)}
    assert {a.node for a in placement} <= allowed, "never a draining, dead or non-matching node"
    if service.global_:
        assert sorted(a.node for a in placement) == sorted(allowed)
        return
    expected = service.scale if service.spread == "none" else min(service.scale, len(allowed))
    if not allowed:
        expected = 0
    assert len(placement) == expected
    assert len({a.slot for a in placement}) == len(placement)
    if service.spread == "node":
        assert len({a.node for a in placement}) == len(placement), "at most one instance per node"


@given(services, clusters())
def test_a_converged_placement_is_stable(service: ServiceShape, nodes: list[NodeView]) -> None:
    placement = place_service(service, nodes, [])
    assert place_service(service, nodes, as_running(placement)) == placement, "no flapping"


@given(services, clusters())
def test_a_joining_node_moves_nothing_that_runs(service: ServiceShape, nodes: list[NodeView]) -> None:
    if service.global_:
        return
    placement = place_service(service, nodes, [])
    newcomer = NodeView(name="node-new", labels={"zone": "z1"})
    after = place_service(service, [*nodes, newcomer], as_running(placement))
    before = {a.slot: a.node for a in placement}
    for a in after:
        if a.slot in before:
            assert before[a.slot] == a.node


@given(services, clusters(), st.data())
def test_a_leaving_node_moves_only_its_own_instances(
    service: ServiceShape, nodes: list[NodeView], data: st.DataObject
) -> None:
    if service.global_:
        return
    placement = place_service(service, nodes, [])
    gone = data.draw(st.sampled_from([n.name for n in nodes]))
    survivors = [NodeView(n.name, alive=False, labels=n.labels) if n.name == gone else n for n in nodes]
    running = [r for r in as_running(placement) if r.node != gone]
    after = {a.slot: a.node for a in place_service(service, survivors, running)}
    for a in placement:
        if a.node != gone:
            assert after[a.slot] == a.node, "an instance on a surviving node stayed"
        else:
            assert after.get(a.slot) != gone


def test_a_suspect_node_keeps_its_instance_but_gets_no_new_one() -> None:
    web = ServiceShape("web", scale=2)
    nodes = [NodeView("a"), NodeView("b", suspect=True), NodeView("c")]
    placement = place_service(web, nodes, [RunningInstance("web", "0", "b")])
    assert Assignment("web", "0", "b") in placement
    fresh = place_service(web, nodes, [])
    assert all(a.node != "b" for a in fresh)


def test_duplicates_resolve_to_one_owner_the_same_way_everywhere() -> None:
    web = ServiceShape("web", scale=1)
    nodes = [NodeView("a"), NodeView("b")]
    running = [RunningInstance("web", "0", "a"), RunningInstance("web", "0", "b")]
    assert place_service(web, nodes, running) == place_service(web, nodes, running[::-1])
    assert len(place_service(web, nodes, running)) == 1


@settings(max_examples=50)
@given(st.lists(services, max_size=4, unique_by=lambda s: s.name), clusters())
def test_place_services_is_the_union_of_each_service(shapes: list[ServiceShape], nodes: list[NodeView]) -> None:
    combined = place_services(shapes, nodes, [])
    expected = [a for s in sorted(shapes, key=lambda s: s.name) for a in place_service(s, nodes, [])]
    assert combined == expected
