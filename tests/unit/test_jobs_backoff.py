"""The job table and per-key backoff used by the reconcilers."""

from __future__ import annotations

from nodeorch.core.backoff import Backoff, BackoffPolicy
from nodeorch.reconcile.job_table import JobState, JobTable


def test_jobs_record_their_outcome_and_old_finished_ones_are_forgotten() -> None:
    table = JobTable(keep_finished=2)
    jobs = [table.add("start", f"web/{i}", now=float(i)) for i in range(4)]
    assert [j.id for j in jobs] == [1, 2, 3, 4] and table.counts()["pending"] == 4
    for job in jobs:
        table.mark_running(job, now=5.0)
    table.finish(jobs[0], now=10.0)
    table.finish(jobs[1], now=11.0, error="image not found")
    assert jobs[1].state is JobState.FAILED and jobs[1].error == "image not found"
    table.finish(jobs[2], now=12.0)
    assert [j.id for j in table.jobs()] == [2, 3, 4], "the oldest finished job was forgotten"
    assert table.counts() == {"pending": 0, "running": 1, "succeeded": 1, "failed": 1}
    assert table.jobs()[0].to_json()["error"] == "image not found"


def test_backoff_doubles_up_to_the_maximum_and_resets_on_success() -> None:
    policy = BackoffPolicy(initial=1.0, maximum=10.0)
    assert [policy.delay(n) for n in range(6)] == [0.0, 1.0, 2.0, 4.0, 8.0, 10.0]
    backoff = Backoff(policy)
    assert backoff.failed("web/0", now=100.0) == 101.0
    assert backoff.failed("web/0", now=101.0) == 103.0
    assert backoff.failures("web/0") == 2 and backoff.ready_at("web/1") == 0.0
    backoff.succeeded("web/0")
    assert backoff.failures("web/0") == 0 and backoff.ready_at("web/0") == 0.0
