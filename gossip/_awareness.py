"""Lifeguard's local health multiplier (pure).

A node that misses acks it should have got, or has to refute suspicions of itself, is probably the
slow one. Its score rises and stretches its own probe interval and timeout, so a struggling node
accuses others less; successful probes bring the score back down.
"""

from __future__ import annotations


class Awareness:
    __slots__ = ("_max", "score")

    def __init__(self, max_multiplier: int) -> None:
        self._max = max_multiplier
        self.score = 0
        """0 is healthy; max_multiplier - 1 is the worst."""

    def apply(self, delta: int) -> int:
        self.score = min(max(self.score + delta, 0), self._max - 1)
        return self.score

    @property
    def worst(self) -> bool:
        """Whether the score is at its maximum: most of what this node asks goes unanswered."""
        return self.score >= self._max - 1 > 0

    @property
    def multiplier(self) -> int:
        return self.score + 1

    def scale(self, timeout: float) -> float:
        return timeout * (self.score + 1)
