"""A keyed work queue in the spirit of client-go's workqueue, and the asyncio runner that drains it.

Reconcile passes only enqueue; workers run the jobs. The rules (pure, in `KeyedQueue`):
- one job per key (a slot such as `web/1`): a key is never worked on twice at once, so a stop and
  a start of the same slot cannot overlap;
- adding a key already waiting replaces what it will do (the newest decision wins);
- adding a key while it runs marks it dirty: it runs once more, with the newest decision, after
  the current run ends;
- a failed key waits out a per-key exponential backoff before it runs again; it is not retried on
  its own: the next reconcile pass, which recomputes what is needed, adds it again;
- at most `limits[kind]` jobs of one kind run at once (rebuilds can be held to two while stops go on).

Every job is visible in the job table: pending while it waits (with the time it may start),
running, then succeeded or failed, with its attempts and progress.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

from nodeorch.core.backoff import Backoff, BackoffPolicy
from nodeorch.reconcile.job_table import Job, JobTable

log = logging.getLogger(__name__)

Action = Callable[[Job], Awaitable[None]]
"""What a job does; it may set `job.progress` as it goes. An exception fails the job."""

DEFAULT_LIMIT = 4
FAILURE_BACKOFF = BackoffPolicy(initial=1.0, maximum=60.0)


@dataclass(slots=True)
class Queued:
    kind: str
    action: Action
    job: Job


class KeyedQueue:
    """The queue's rules, without I/O: `now` comes in, what may run comes out."""

    def __init__(self, jobs: JobTable, limits: Mapping[str, int] | None = None,
                 policy: BackoffPolicy = FAILURE_BACKOFF) -> None:
        self._jobs = jobs
        self._limits = dict(limits or {})
        self._waiting: dict[str, Queued] = {}
        self._dirty: dict[str, Queued] = {}
        self._running: dict[str, Queued] = {}
        self._backoff = Backoff(policy)

    def _limit(self, kind: str) -> int:
        return self._limits.get(kind, DEFAULT_LIMIT)

    def add(self, key: str, kind: str, action: Action, now: float) -> Job:
        """Queue `action` for `key`; returns its (pending) job."""
        pending = self._dirty if key in self._running else self._waiting
        previous = pending.get(key)
        if previous is not None:
            self._jobs.forget(previous.job)
        job = self._jobs.add(kind, key, now, attempts=self._backoff.failures(key) + 1,
                             not_before=self._backoff.ready_at(key))
        pending[key] = Queued(kind, action, job)
        return job

    @property
    def running(self) -> int:
        return len(self._running)

    def busy(self, key: str) -> str | None:
        """The kind of the job waiting or running for `key`, if any."""
        for table in (self._dirty, self._waiting, self._running):
            if key in table:
                return table[key].kind
        return None

    def take_ready(self, now: float) -> list[tuple[str, Queued]]:
        """The jobs that may start now, marked running, oldest first."""
        running_by_kind: dict[str, int] = {}
        for item in self._running.values():
            running_by_kind[item.kind] = running_by_kind.get(item.kind, 0) + 1
        ready = []
        for key, item in sorted(self._waiting.items(), key=lambda kv: kv[1].job.id):
            if self._backoff.ready_at(key) > now or running_by_kind.get(item.kind, 0) >= self._limit(item.kind):
                continue
            running_by_kind[item.kind] = running_by_kind.get(item.kind, 0) + 1
            del self._waiting[key]
            self._running[key] = item
            self._jobs.mark_running(item.job, now)
            ready.append((key, item))
        return ready

    def finished(self, key: str, now: float, error: str = "") -> None:
        """The running job of `key` ended; a dirty key goes back to waiting."""
        item = self._running.pop(key)
        self._jobs.finish(item.job, now, error)
        if error:
            self._backoff.failed(key, now)
        else:
            self._backoff.succeeded(key)
        again = self._dirty.pop(key, None)
        if again is not None:
            again.job.attempts = self._backoff.failures(key) + 1
            self._waiting[key] = again

    def next_wake(self) -> float | None:
        """When a waiting job held back by its backoff may start (None: nothing is held back)."""
        times = [self._backoff.ready_at(key) for key in self._waiting]
        return min(times) if times else None

    def drop_waiting(self) -> None:
        """Forget every job that has not started (the agent is stopping)."""
        for item in [*self._waiting.values(), *self._dirty.values()]:
            self._jobs.forget(item.job)
        self._waiting.clear()
        self._dirty.clear()


class WorkQueue:
    """Runs a KeyedQueue's jobs as asyncio tasks until cancelled; `add` never waits for a job."""

    def __init__(self, jobs: JobTable, on_finished: Callable[[Job], None], *,
                 limits: Mapping[str, int] | None = None, clock: Callable[[], float] = time.time) -> None:
        self._queue = KeyedQueue(jobs, limits)
        self._on_finished = on_finished
        self._clock = clock
        self._wake = asyncio.Event()
        self._quiet = asyncio.Event()
        self._closed = False

    def add(self, key: str, kind: str, action: Action) -> Job | None:
        """Queue a job; None once the queue is closed (the agent is stopping)."""
        if self._closed:
            return None
        job = self._queue.add(key, kind, action, self._clock())
        self._quiet.clear()
        self._wake.set()
        return job

    def busy(self, key: str) -> str | None:
        return self._queue.busy(key)

    def close(self) -> None:
        """Start nothing more: waiting jobs are dropped; running ones end when run() is cancelled."""
        self._closed = True
        self._queue.drop_waiting()
        self._wake.set()

    async def settled(self) -> None:
        """Until no job runs and none is ready to (jobs held back by a backoff may still wait)."""
        await self._quiet.wait()

    async def run(self) -> None:
        async with asyncio.TaskGroup() as workers:
            while not self._closed:
                for key, item in self._queue.take_ready(self._clock()):
                    workers.create_task(self._work(key, item))
                if self._queue.running == 0:
                    self._quiet.set()
                wake = self._queue.next_wake()
                timeout = None if wake is None else max(0.0, wake - self._clock())
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(timeout):
                        await self._wake.wait()
                self._wake.clear()

    async def _work(self, key: str, item: Queued) -> None:
        if self._closed:
            return  # taken before the queue closed, scheduled after: it must not start
        error = ""
        try:
            await item.action(item.job)
        except asyncio.CancelledError:
            raise
        except Exception as failure:  # a job's failure is recorded, never raised into the queue
            error = str(failure) or type(failure).__name__
        if self._closed:
            return
        self._queue.finished(key, self._clock(), error)
        self._on_finished(item.job)
        self._wake.set()
