"""The soak's own judgement (bench/soak.py, pure parts): the schedule, and how episodes of
duplicates and shortfalls are held against the faults that caused them."""

from __future__ import annotations

import importlib.util
import random
import sys
from pathlib import Path
from types import ModuleType


def load_soak() -> ModuleType:
    path = Path(__file__).resolve().parents[2] / "bench" / "soak.py"
    spec = importlib.util.spec_from_file_location("soak_under_test", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


soak = load_soak()


def test_the_schedule_covers_every_kind_before_repeating_and_never_strikes_the_seed() -> None:
    faults = soak.plan_chaos(random.Random(3), 100, 600, 20, list(soak.KINDS))
    assert {f.kind for f in faults[:5]} == set(soak.KINDS)
    assert all(0 not in f.nodes for f in faults)
    assert sum(f.duration + 20 for f in faults) <= 600
    partition = next(f for f in faults if f.kind == "partition")
    assert len(partition.nodes) == 10 and list(partition.nodes) == list(range(partition.nodes[0],
                                                                             partition.nodes[0] + 10))


def test_episodes_are_judged_against_the_fault_before_them() -> None:
    tracker = soak.Tracker(scale=2)
    tracker.observe(100.0, {"0": {"node-2"}, "1": {"node-3"}})
    tracker.observe(101.0, {"0": {"node-2"}, "1": set()})          # the host of slot 1 crashed
    tracker.observe(106.0, {"0": {"node-2"}, "1": {"node-4"}})     # restored elsewhere
    tracker.observe(120.0, {"0": {"node-2", "node-5"}, "1": {"node-4"}})
    tracker.observe(140.0, {"0": {"node-2"}, "1": {"node-4"}})
    tracker.finish(150.0)
    crash = soak.Fault("host_crash", (2,), 10.0, started=100.5, ended=110.5, detected=4.0)
    partition = soak.Fault("partition", (4,), 15.0, started=115.0, ended=130.0)
    judged = soak.verdicts(tracker.closed, [crash, partition], detection=8.0)
    shortfall, duplicate = judged
    assert shortfall["fault"] == "host_crash" and shortfall["restored_after_fault_start"] == 5.5
    assert shortfall["ok"], "within detection (4 s) + 5 s"
    assert duplicate["fault"] == "partition" and duplicate["after_fault_end"] == 10.0 and not duplicate["ok"]


def test_a_death_is_false_only_when_neither_node_was_struck() -> None:
    names = ["node-1", "node-2", "node-3", "node-4"]
    stall = soak.Fault("stall", (2,), 5.0, started=10.0, ended=15.0)
    deaths = [("node-1", "node-3", 14.0), ("node-3", "node-2", 16.0), ("node-1", "node-2", 40.0)]
    assert soak.false_deaths(deaths, [stall], names, grace=10.0) == [("node-1", "node-2", 40.0)]
