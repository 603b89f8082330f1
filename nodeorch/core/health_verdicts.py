"""Health verdicts (pure): who watches which instance, and what their probes conclude.

Every instance is probed by its owner and by up to two other live nodes chosen by rendezvous
hashing, so every node agrees on who watches what. Each observer keeps consecutive successes and
failures and publishes a verdict in its document. An instance is replaced only when every live
observer reports it unhealthy: one observer cut off from it cannot kill a healthy instance.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from nodeorch.core.placement import rendezvous_score
from nodeorch.spec.service_spec import HealthSpec
from nodeorch.state.records import HealthStatus

OTHER_OBSERVERS = 2


def observers(service: str, slot: str, owner: str, live_nodes: Iterable[str], kind: str) -> list[str]:
    """The owner first, then up to two others by rendezvous score; exec probes run on the owner only."""
    if kind == "exec":
        return [owner]
    live = live_nodes if isinstance(live_nodes, frozenset) else frozenset(live_nodes)
    return [owner, *_other_observers(service, slot, owner, live)]


@functools.lru_cache(maxsize=4096)
def _other_observers(service: str, slot: str, owner: str, live: frozenset[str]) -> tuple[str, ...]:
    """Kept: every services pass asks again for every instance it sees, and the live set rarely changes."""
    others = sorted((n for n in live if n != owner), key=lambda n: (-rendezvous_score(f"health:{service}", slot, n), n))
    return tuple(others[:OTHER_OBSERVERS])


@dataclass(slots=True)
class HealthTracker:
    """One observer's view of one instance."""

    spec: HealthSpec
    started: float
    """When the instance (as this observer knows it) started; initializing_timeout runs from here."""
    successes: int = 0
    failures: int = 0
    status: HealthStatus = HealthStatus.INITIALIZING
    since: float = 0.0
    detail: str = ""

    def record(self, ok: bool, now: float, detail: str = "") -> HealthStatus:
        self.detail = detail
        if ok:
            self.successes, self.failures = self.successes + 1, 0
            if self.successes >= self.spec.healthy_threshold and self.status is not HealthStatus.HEALTHY:
                self.status, self.since = HealthStatus.HEALTHY, now
        else:
            self.failures, self.successes = self.failures + 1, 0
            if self.failures >= self.spec.unhealthy_threshold and self.status is not HealthStatus.UNHEALTHY:
                self.status, self.since = HealthStatus.UNHEALTHY, now
        if self.status is HealthStatus.INITIALIZING and now - self.started >= self.spec.initializing_timeout:
            self.status, self.since = HealthStatus.UNHEALTHY, now  # never became healthy in time
        return self.status


def aggregate(verdicts: Mapping[str, HealthStatus], live_observers: Iterable[str]) -> HealthStatus:
    """One instance's health from its live observers' verdicts: unhealthy only when all agree."""
    seen = [verdicts.get(o) for o in live_observers]
    if seen and all(v is HealthStatus.UNHEALTHY for v in seen):
        return HealthStatus.UNHEALTHY
    if any(v is HealthStatus.HEALTHY for v in seen):
        return HealthStatus.HEALTHY
    return HealthStatus.UNKNOWN
