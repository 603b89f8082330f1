"""The in-memory job table: every action a reconciler takes is a job, visible at /v1/jobs and
forgotten on restart (desired and observed state are recomputed instead)."""

from __future__ import annotations

import enum
import itertools
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any


class JobState(enum.Enum):
    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


@dataclass(slots=True)
class Job:
    id: int
    kind: str
    """What is done: start, stop, replace, probe, rebuild..."""
    target: str
    """What it is done to: service/slot, volume/replica..."""
    state: JobState = JobState.PENDING
    attempts: int = 0
    created: float = 0.0
    updated: float = 0.0
    error: str = ""
    progress: float | None = None
    """0..1 for long jobs that report it (a rebuild), else None."""
    not_before: float = 0.0
    """A pending job held back by its key's failure backoff starts no earlier than this."""

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id, "kind": self.kind, "target": self.target, "state": self.state.value,
            "attempts": self.attempts, "created": round(self.created, 3), "updated": round(self.updated, 3),
            "error": self.error or None, "progress": self.progress,
            "not_before": round(self.not_before, 3) if self.not_before > self.created else None,
        }


class JobTable:
    """Jobs by id; finished ones beyond `keep_finished` are forgotten oldest first."""

    def __init__(self, keep_finished: int = 500) -> None:
        self._jobs: OrderedDict[int, Job] = OrderedDict()
        self._ids = itertools.count(1)
        self._keep = keep_finished

    def __len__(self) -> int:
        return len(self._jobs)

    def add(self, kind: str, target: str, now: float, *, attempts: int = 1, not_before: float = 0.0) -> Job:
        """A new pending job."""
        job = Job(next(self._ids), kind, target, JobState.PENDING, attempts, now, now, not_before=not_before)
        self._jobs[job.id] = job
        return job

    def mark_running(self, job: Job, now: float) -> None:
        job.state = JobState.RUNNING
        job.updated = now

    def forget(self, job: Job) -> None:
        """Drop a job that will never run (replaced by a newer decision, or the agent is stopping)."""
        self._jobs.pop(job.id, None)

    def finish(self, job: Job, now: float, error: str = "") -> None:
        job.state = JobState.FAILED if error else JobState.SUCCEEDED
        job.error = error
        job.updated = now
        finished = [j for j in self._jobs.values() if j.state in (JobState.SUCCEEDED, JobState.FAILED)]
        for old in finished[: max(0, len(finished) - self._keep)]:
            del self._jobs[old.id]

    def jobs(self) -> list[Job]:
        return list(self._jobs.values())

    def counts(self) -> dict[str, int]:
        counts = {state.value: 0 for state in JobState}
        for job in self._jobs.values():
            counts[job.state.value] += 1
        return counts
