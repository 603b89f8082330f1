"""Rolling updates without a master (pure): which slots of a service may be replaced now.

Every node computes the same answer from the same gossiped documents. Slots are taken in slot
order, `parallelism` at a time (a batch). A slot is done when an instance of the target spec runs
there (healthy, for a service with a health check) and has done so for `monitor` seconds; the
next batch starts `delay` seconds after the last slot of the previous one is done. An instance of
the target spec that exits or is unhealthy before the update is done fails it: the node owning
that instance leaves a mark in its document (paused, or rollback to the previous spec), and the
latest mark of any node decides for all of them until an operator's `resume` mark, newer still.
"""

from __future__ import annotations

import enum
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from nodeorch.spec.service_spec import ServiceSpec
from nodeorch.state.records import HealthStatus, InstancePhase, UpdateAction, UpdateMark

_BAD_PHASES = (InstancePhase.EXITED, InstancePhase.FAILED, InstancePhase.RESTARTING)


class UpdateState(enum.Enum):
    COMPLETE = "complete"
    """Every slot runs the desired spec, past its monitor time."""
    UPDATING = "updating"
    PAUSED = "paused"
    ROLLING_BACK = "rolling_back"
    ROLLED_BACK = "rolled_back"


@dataclass(frozen=True, slots=True)
class SlotInstance:
    """One instance of the service, as its node reports it; `slot` is the logical slot."""

    slot: str
    node: str
    digest: str
    phase: InstancePhase
    health: HealthStatus
    since: float


@dataclass(frozen=True, slots=True)
class Rollout:
    service: str
    desired: str
    """The digest of the spec in desired.toml."""
    target: str
    """The digest instances should run now: `desired`, or `previous` while rolling back."""
    state: UpdateState
    done: int
    total: int
    replaceable: frozenset[str]
    """Slots whose instance may be replaced by the target spec now."""
    failures: tuple[tuple[str, str, str], ...] = ()
    """(slot, node, what went wrong) for target instances failing the update."""
    reason: str = ""
    """Why the update is paused or rolled back (from the deciding mark)."""
    previous: str = ""
    """The spec most replaced instances ran before (a rollback goes back to it)."""

    def to_json(self) -> dict[str, object]:
        return {"state": self.state.value, "desired": self.desired, "target": self.target, "done": self.done,
                "total": self.total, "reason": self.reason or None,
                "failures": [{"slot": slot, "node": node, "problem": problem} for slot, node, problem in self.failures]}


def deciding_mark(service: str, digest: str, marks: Iterable[UpdateMark]) -> UpdateMark | None:
    """The latest mark any node left on this update (by time, then action for a tie)."""
    relevant = [m for m in marks if m.service == service and m.digest == digest]
    return max(relevant, key=lambda m: (m.at, m.action.value), default=None)


def _slot_order(slot: str) -> tuple[int, int | str]:
    return (0, int(slot)) if slot.isdigit() else (1, slot)


def _problem(instance: SlotInstance) -> str:
    return f"exited on {instance.node}" if instance.phase in _BAD_PHASES else f"unhealthy on {instance.node}"


def plan_rollout(
    now: float,
    spec: ServiceSpec,
    slots: Iterable[str],
    instances: Iterable[SlotInstance],
    marks: Iterable[UpdateMark],
) -> Rollout:
    """Where the update of `spec` stands. `slots`: the service's placed logical slots;
    `instances`: every instance of the service any live node reports; `marks`: every node's marks."""
    policy = spec.update
    ordered = sorted(set(slots), key=_slot_order)
    instances = list(instances)
    mark = deciding_mark(spec.name, spec.digest, marks)
    resumed_at = max((m.at for m in marks if m.service == spec.name and m.digest == spec.digest
                      and m.action is UpdateAction.RESUMED), default=0.0) if mark else 0.0
    others = Counter(i.digest for i in instances if i.digest != spec.digest and i.phase is InstancePhase.RUNNING)
    previous = min(others, key=lambda d: (-others[d], d)) if others else ""
    target, rolling_back = spec.digest, False
    if mark is not None and mark.action is UpdateAction.ROLLBACK and mark.previous:
        target, rolling_back, previous = mark.previous, True, mark.previous

    done_at: dict[str, float] = {}
    running_target: set[str] = set()
    failures: list[tuple[str, str, str]] = []
    for instance in instances:
        if instance.digest != target:
            continue
        ready = instance.phase is InstancePhase.RUNNING and (
            spec.health is None or instance.health is HealthStatus.HEALTHY)
        if ready:
            running_target.add(instance.slot)
            done_at[instance.slot] = min(done_at.get(instance.slot, instance.since + policy.monitor),
                                         instance.since + policy.monitor)
        elif (instance.phase in _BAD_PHASES or instance.health is HealthStatus.UNHEALTHY) \
                and instance.since >= resumed_at:
            failures.append((instance.slot, instance.node, _problem(instance)))
    complete = {slot for slot in ordered if slot in done_at and now >= done_at[slot]}
    held = {i.slot for i in instances}
    on_target = {i.slot for i in instances if i.digest == target}
    pending = {slot for slot in ordered if slot in held and slot not in on_target}

    if len(complete) == len(ordered):
        state = UpdateState.ROLLED_BACK if rolling_back else UpdateState.COMPLETE
        return Rollout(spec.name, spec.digest, target, state, len(complete), len(ordered), frozenset(),
                       reason=mark.reason if rolling_back and mark else "", previous=previous)
    failures = [f for f in failures if f[0] not in running_target]
    if rolling_back:
        state = UpdateState.ROLLING_BACK
    elif mark is not None and mark.action is UpdateAction.PAUSED:
        state = UpdateState.PAUSED
    else:
        state = UpdateState.UPDATING
    replaceable: frozenset[str] = frozenset()
    if state in (UpdateState.UPDATING, UpdateState.ROLLING_BACK):
        replaceable = _next_batch(now, ordered, complete, done_at, pending, policy.parallelism, policy.delay)
    reason = mark.reason if mark is not None and mark.action is not UpdateAction.RESUMED else ""
    return Rollout(spec.name, spec.digest, target, state, len(complete), len(ordered), replaceable,
                   tuple(sorted(failures)), reason, previous)


def _next_batch(now: float, ordered: Sequence[str], complete: set[str], done_at: dict[str, float],
                pending: set[str], parallelism: int, delay: float) -> frozenset[str]:
    """The pending slots of the first batch not yet done, once `delay` has passed since the batch
    before it was done."""
    batches = [ordered[i:i + parallelism] for i in range(0, len(ordered), parallelism)]
    for index, batch in enumerate(batches):
        if all(slot in complete for slot in batch):
            continue
        if index > 0 and now < max(done_at[slot] for slot in batches[index - 1]) + delay:
            return frozenset()
        return frozenset(slot for slot in batch if slot in pending)
    return frozenset()


def failure_mark(now: float, rollout: Rollout, spec: ServiceSpec, slot: str, problem: str,
                 previous: str) -> UpdateMark:
    """The mark the owner of a failing instance leaves: what the service's failure_action says,
    or a pause when there is nothing known to roll back to."""
    action = UpdateAction.ROLLBACK if spec.update.failure_action == "rollback" and previous else UpdateAction.PAUSED
    reason = f"{spec.name}/{slot} {problem} during the update to {rollout.desired}"
    rollback_to = previous if action is UpdateAction.ROLLBACK else ""
    return UpdateMark(spec.name, rollout.desired, action, now, reason, rollback_to)
