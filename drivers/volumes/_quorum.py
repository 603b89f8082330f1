"""The engine's rules, without I/O: majorities, where to start from, and what a new engine claims.

Every count is against the configured replica count, never against the replicas that happen to
answer: with 3 configured, 2 must hold a write before it is acknowledged, whatever has failed.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

from drivers.volumes._errors import NoQuorum
from drivers.volumes._store import ReplicaMeta


def majority(configured: int) -> int:
    return configured // 2 + 1


@dataclass(frozen=True, slots=True)
class StartPlan:
    members: tuple[str, ...]
    """The replicas the engine serves from and writes to (read-write)."""
    stale: tuple[str, ...]
    """Reachable replicas left out: behind the others, or of another member set (need a rebuild)."""
    create: bool
    """No replica holds the volume yet: create it on the members."""
    epoch: int
    """The epoch to claim: one above the highest any reachable replica has seen."""
    set_version: int


def plan_start(configured: Sequence[str], found: Mapping[str, ReplicaMeta | None]) -> StartPlan:
    """Where a starting engine begins. `found`: every reachable replica, with its metadata (None:
    it holds no replica of the volume). NoQuorum, naming the replicas needed, when it cannot."""
    need = majority(len(configured))
    holding = {address: meta for address, meta in found.items() if meta is not None}
    unreachable = [a for a in configured if a not in found]
    if not holding:
        if len(found) < need:
            raise NoQuorum(f"{len(found)} of {len(configured)} replicas reachable, {need} needed to create the "
                           f"volume; unreachable: {', '.join(unreachable)}")
        return StartPlan(tuple(a for a in configured if a in found), (), True, 1, 1)
    candidates = dict(holding)
    while True:
        best = max(candidates.values(), key=lambda m: m.rank)
        last_set = best.members or tuple(candidates)
        current = tuple(a for a in configured if a in candidates
                        and candidates[a].set_id == best.set_id
                        and a in last_set)
        if len(current) >= majority(len(last_set)) and len(current) >= need:
            break
        # A member-set change that reachable members of that set never received cannot have reached
        # a majority, so nothing was acknowledged under it (an engine waits for the change first):
        # its holders are judged by the set before it.
        behind = [a for a in last_set if a in holding and a not in current]  # known never to have it
        earlier = [m for a, m in candidates.items() if a not in current and m.set_id < best.set_id]
        if len(last_set) - len(behind) >= need or not earlier or not current:
            missing = [a for a in last_set if a not in current]
            raise NoQuorum(f"only {len(current)} up-to-date replicas of the last member set "
                           f"({', '.join(last_set)}) answer; {max(need, majority(len(last_set)))} needed. Bring "
                           f"back {', '.join(missing)}, or salvage from a replica you trust")
        # the set they were in before: one that has them all as members when one is known (a
        # failed claim is judged by the set its holders were claimed from, not by a set that
        # had ejected them)
        theirs = [m for m in earlier if set(current) <= set(m.members)]
        previous = max(theirs or earlier, key=lambda m: m.rank)
        for address in current:
            candidates[address] = replace(candidates[address], set_epoch=previous.set_epoch,
                                          set_version=previous.set_version, members=previous.members)
    # An acknowledged write is on a majority of the set, so every write up to the need-th highest
    # sequence of the set may have been acknowledged (a member that does not answer may be ahead of
    # all the others). A member behind that point missed acknowledged writes (the engine died
    # before ejecting it): it is stale too, and without a majority past that point nobody serves.
    unanswered = [math.inf for a in last_set if a not in found]
    threshold = sorted([*(candidates[a].seq for a in current), *unanswered], reverse=True)[need - 1]
    current = tuple(a for a in current if candidates[a].seq >= threshold)
    if len(current) < need:
        raise NoQuorum(f"only {', '.join(current) or 'none'} of the last member set ({', '.join(last_set)}) hold every "
                       f"write that may have been acknowledged; {need} needed. Bring back "
                       f"{', '.join(a for a in last_set if a not in found)}, or salvage from a replica you trust")
    stale = tuple(a for a in configured if a in found and a not in current)
    highest = max(m.set_version for m in holding.values())
    settled = set(current) == set(last_set) and best.set_version == highest
    epoch = max(m.epoch for m in holding.values()) + 1
    return StartPlan(current, stale, False, epoch, highest if settled else highest + 1)
