"""The keyed work queue: its rules in virtual time, and the asyncio runner that never makes a
reconcile pass wait for its jobs."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import Sequence

from nodeorch.core.backoff import BackoffPolicy
from nodeorch.reconcile.job_table import Job, JobState, JobTable
from nodeorch.reconcile.work_queue import KeyedQueue, WorkQueue


async def nothing(job: Job) -> None:
    return None


def keys(ready: Sequence[tuple[str, object]]) -> list[str]:
    return [key for key, _ in ready]


def test_a_key_is_never_worked_twice_at_once_and_a_re_add_runs_once_more_after() -> None:
    table = JobTable()
    queue = KeyedQueue(table)
    queue.add("web/0", "start", nothing, 0.0)
    assert keys(queue.take_ready(0.0)) == ["web/0"]
    queue.add("web/0", "stop", nothing, 1.0)
    queue.add("web/0", "stop", nothing, 1.5)
    assert queue.take_ready(2.0) == [], "web/0 still runs"
    assert queue.busy("web/0") == "stop", "the newest decision is what comes next"
    queue.finished("web/0", 3.0)
    (again,) = queue.take_ready(3.0)
    assert again[0] == "web/0" and again[1].kind == "stop"
    queue.finished("web/0", 4.0)
    assert queue.take_ready(5.0) == [] and queue.busy("web/0") is None
    kinds = [(j.kind, j.state) for j in table.jobs()]
    assert kinds == [("start", JobState.SUCCEEDED), ("stop", JobState.SUCCEEDED)], "a replaced job is forgotten"


def test_a_waiting_key_takes_the_newest_decision() -> None:
    table = JobTable()
    queue = KeyedQueue(table)
    queue.add("web/1", "start", nothing, 0.0)
    queue.add("web/1", "stop", nothing, 0.5)
    (only,) = queue.take_ready(1.0)
    assert only[1].kind == "stop" and len(table) == 1


def test_failures_back_off_exponentially_per_key() -> None:
    table = JobTable()
    queue = KeyedQueue(table, policy=BackoffPolicy(initial=1.0, maximum=8.0))
    now = 0.0
    starts = []
    for _ in range(5):
        queue.add("web/0", "start", nothing, now)
        while not (ready := queue.take_ready(now)):
            now += 0.25
        starts.append(now)
        assert ready[0][1].job.attempts == len(starts)
        queue.finished("web/0", now, error="image missing")
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    assert gaps == [1.0, 2.0, 4.0, 8.0]
    queue.add("web/9", "start", nothing, now)
    assert keys(queue.take_ready(now)) == ["web/9"], "another key is not held back"
    queue.add("web/0", "start", nothing, now)
    assert queue.next_wake() == now + 8.0
    assert table.jobs()[-1].to_json()["not_before"] == now + 8.0, "a held-back job says when it may start"


def test_a_success_resets_the_backoff() -> None:
    queue = KeyedQueue(JobTable(), policy=BackoffPolicy(initial=5.0, maximum=60.0))
    queue.add("web/0", "stop", nothing, 0.0)
    queue.take_ready(0.0)
    queue.finished("web/0", 0.0, error="busy")
    queue.add("web/0", "stop", nothing, 5.0)
    queue.take_ready(5.0)
    queue.finished("web/0", 5.0)
    queue.add("web/0", "stop", nothing, 5.0)
    assert keys(queue.take_ready(5.0)) == ["web/0"]


def test_each_kind_runs_at_most_its_limit_at_once() -> None:
    queue = KeyedQueue(JobTable(), limits={"rebuild": 2})
    for i in range(4):
        queue.add(f"vol/{i}", "rebuild", nothing, 0.0)
    queue.add("web/0", "stop", nothing, 0.0)
    assert keys(queue.take_ready(0.0)) == ["vol/0", "vol/1", "web/0"]
    queue.finished("vol/0", 1.0)
    assert keys(queue.take_ready(1.0)) == ["vol/2"]


async def test_a_pass_never_waits_for_its_jobs_and_a_slow_stop_holds_no_other_repair() -> None:
    table = JobTable()
    finished: list[str] = []
    web_done = asyncio.Event()

    def on_finished(job: Job) -> None:
        finished.append(job.target)
        if job.target == "web/1":
            web_done.set()

    queue = WorkQueue(table, on_finished)
    release = asyncio.Event()

    async def slow_stop(job: Job) -> None:
        job.progress = 0.5
        await release.wait()

    runner = asyncio.create_task(queue.run())
    try:
        queue.add("db/0", "stop", slow_stop)  # returns at once
        queue.add("web/1", "start", nothing)
        async with asyncio.timeout(2):
            await web_done.wait()
        assert finished == ["web/1"], "the start ran while the stop still waited"
        stop = next(j for j in table.jobs() if j.target == "db/0")
        assert stop.state is JobState.RUNNING and stop.to_json()["progress"] == 0.5
        release.set()
        async with asyncio.timeout(2):
            await queue.settled()
        assert finished == ["web/1", "db/0"]
    finally:
        runner.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await runner


async def test_a_closed_queue_starts_nothing_and_forgets_what_waited() -> None:
    table = JobTable()
    queue = WorkQueue(table, lambda job: None)
    queue.add("web/0", "start", nothing)
    queue.close()
    assert queue.add("web/1", "start", nothing) is None
    assert len(table) == 0


async def test_a_job_taken_just_before_the_queue_closed_does_not_start() -> None:
    ran: list[str] = []

    async def record(job: Job) -> None:
        ran.append(job.target)

    queue = WorkQueue(JobTable(), lambda job: None)
    runner = asyncio.create_task(queue.run())
    queue.add("web/0", "start", record)
    await asyncio.sleep(0)  # the run loop takes the job and schedules its task
    queue.close()
    runner.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await runner
    assert ran == []
