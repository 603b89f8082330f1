"""The health watcher: probes the instances this node observes and judges the ones it owns.

For every running instance of a service with a health check, the observers (the owner and up to two
others, by rendezvous) probe it every `interval`. Each observer publishes its verdicts in its
document; the owner replaces an instance only when every live observer's verdict about that very
instance (matched by its ref) is unhealthy, and only as the service's strategy allows.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from drivers.health import ExecProbe, HttpProbe, Probe, TcpProbe
from nodeorch.core.beat import Beat
from nodeorch.core.health_verdicts import HealthTracker, aggregate, observers
from nodeorch.spec.service_spec import HealthSpec, ServiceSpec
from nodeorch.state.records import HealthStatus, HealthVerdict

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Watched:
    """One instance as an observer sees it."""

    service: str
    slot: str
    owner: str
    ref: str
    host: str
    since: float


def probe_for(spec: HealthSpec, env: Mapping[str, str]) -> Probe:
    if spec.kind == "http":
        return HttpProbe(spec.port, spec.path)
    if spec.kind == "tcp":
        return TcpProbe(spec.port)
    return ExecProbe(spec.command, env)


class HealthWatcher:
    def __init__(self, me: str, on_change: Callable[[], None], clock: Callable[[], float] = time.time,
                 source: str | None = None, beat: Beat | None = None) -> None:
        self._me = me
        self._beat = beat or Beat()
        self._source = source
        self._on_change = on_change
        self._clock = clock
        self._trackers: dict[Watched, HealthTracker] = {}
        self._tasks: dict[Watched, asyncio.Task[None]] = {}

    def update(self, specs: Mapping[str, ServiceSpec], instances: Iterable[Watched], live: Iterable[str]) -> None:
        """Start probing what this node must observe now; stop probing the rest."""
        live = frozenset(live)
        wanted = set()
        for item in instances:
            spec = specs.get(item.service)
            if spec is None or spec.health is None:
                continue
            if self._me in observers(item.service, item.slot, item.owner, live, spec.health.kind):
                wanted.add(item)
                if item not in self._tasks:
                    tracker = HealthTracker(spec.health, started=item.since or self._clock())
                    self._trackers[item] = tracker
                    self._tasks[item] = asyncio.create_task(self._probe_loop(item, spec, tracker))
        for item in [w for w in self._tasks if w not in wanted]:
            self._tasks.pop(item).cancel()
            self._trackers.pop(item, None)
            self._on_change()

    async def _probe_loop(self, item: Watched, spec: ServiceSpec, tracker: HealthTracker) -> None:
        assert spec.health is not None
        probe = probe_for(spec.health, {**spec.env, "NODEORCH_SERVICE": spec.name, "NODEORCH_SLOT": item.slot})
        while True:
            result = await probe.check(item.host, spec.health.timeout, self._source)
            before = tracker.status
            after = tracker.record(result.ok, self._clock(), result.detail)
            if after != before:
                log.info("%s: %s/%s on %s is %s (%s)", self._me, item.service, item.slot, item.owner, after,
                         result.detail)
                self._on_change()
            await asyncio.sleep(self._beat.until_next(spec.health.interval))

    def records(self) -> tuple[HealthVerdict, ...]:
        """This node's verdicts, for its document."""
        return tuple(
            HealthVerdict(w.service, w.slot, w.owner, w.ref, t.status, t.since, t.failures)
            for w, t in sorted(self._trackers.items(), key=lambda x: (x[0].service, x[0].slot, x[0].owner))
        )

    async def close(self) -> None:
        for task in self._tasks.values():
            task.cancel()
        for task in self._tasks.values():
            with contextlib.suppress(asyncio.CancelledError):
                await task


def instance_health(
    item: Watched,
    spec: ServiceSpec,
    live: Iterable[str],
    verdicts_by_node: Mapping[str, Iterable[HealthVerdict]],
) -> HealthStatus:
    """unknown / healthy / unhealthy for one instance, from its live observers' verdicts on it."""
    if spec.health is None:
        return HealthStatus.UNKNOWN
    watchers = observers(item.service, item.slot, item.owner, live, spec.health.kind)
    verdicts: dict[str, HealthStatus] = {}
    for node in watchers:
        for verdict in verdicts_by_node.get(node, ()):
            if (verdict.service, verdict.slot, verdict.node, verdict.ref) == (
                item.service, item.slot, item.owner, item.ref
            ):
                verdicts[node] = verdict.status
    return aggregate(verdicts, watchers)


def to_recreate(
    mine: Iterable[Watched],
    specs: Mapping[str, ServiceSpec],
    health: Mapping[Watched, HealthStatus],
) -> set[str]:
    """Keys of this node's instances to replace for their health, as each service's strategy allows."""
    healthy: dict[str, int] = {}
    for item, status in health.items():
        if status is HealthStatus.HEALTHY:
            healthy[item.service] = healthy.get(item.service, 0) + 1
    chosen = set()
    for item in mine:
        spec = specs.get(item.service)
        if spec is None or spec.health is None or health.get(item) is not HealthStatus.UNHEALTHY:
            continue
        strategy = spec.health.strategy
        if strategy == "none":
            continue
        if strategy == "recreate_on_quorum" and healthy.get(item.service, 0) < spec.health.quorum:
            continue
        chosen.add(f"{item.service}/{item.slot}")
    return chosen
