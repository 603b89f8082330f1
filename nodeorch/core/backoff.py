"""Per-key exponential backoff (pure): how long to wait before trying a key again."""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class BackoffPolicy:
    initial: float = 1.0
    maximum: float = 60.0
    factor: float = 2.0

    def delay(self, failures: int) -> float:
        """Wait after `failures` consecutive failures (0 means none: retry at once)."""
        if failures <= 0:
            return 0.0
        return min(self.maximum, self.initial * self.factor ** (failures - 1))


class Backoff:
    """Consecutive failures per key, and when each key may be tried again."""

    def __init__(self, policy: BackoffPolicy) -> None:
        self.policy = policy
        self._failures: dict[Hashable, int] = {}
        self._not_before: dict[Hashable, float] = {}

    def failed(self, key: Hashable, now: float) -> float:
        """Record a failure; returns the time before which the key should not be retried."""
        failures = self._failures.get(key, 0) + 1
        self._failures[key] = failures
        self._not_before[key] = now + self.policy.delay(failures)
        return self._not_before[key]

    def succeeded(self, key: Hashable) -> None:
        self._failures.pop(key, None)
        self._not_before.pop(key, None)

    def failures(self, key: Hashable) -> int:
        return self._failures.get(key, 0)

    def ready_at(self, key: Hashable) -> float:
        return self._not_before.get(key, 0.0)
