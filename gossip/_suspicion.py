"""Lifeguard's dynamic suspicion timeout (pure).

A suspicion starts long (max) and shrinks toward min as independent members confirm it:
    timeout(c) = max(min, max - (max - min) * log(c + 1) / log(k + 1))
where c counts distinct confirmers other than the first accuser and k is how many are expected.
A healthy suspect thus has time to refute, while a truly dead one is confirmed and declared quickly.
"""

from __future__ import annotations

import math


def suspicion_timeout(confirmations: int, k: int, min_timeout: float, max_timeout: float) -> float:
    if k < 1:
        return min_timeout
    fraction = math.log(confirmations + 1) / math.log(k + 1)
    return max(min_timeout, max_timeout - fraction * (max_timeout - min_timeout))


class SuspicionTimer:
    __slots__ = ("_confirmers", "_k", "_max", "_min", "deadline", "incarnation", "last_probed", "start")

    def __init__(
        self,
        *,
        incarnation: int,
        accuser: str,
        start: float,
        k: int,
        min_timeout: float,
        max_timeout: float,
    ) -> None:
        self.incarnation = incarnation
        self.start = start
        self._k = k
        self._min = min_timeout
        self._max = max_timeout
        self._confirmers = {accuser}
        self.deadline = start + (max_timeout if k >= 1 else min_timeout)
        self.last_probed = start
        """When this node last probed the suspect itself (the protocol core keeps it)."""

    @property
    def confirmations(self) -> int:
        return len(self._confirmers) - 1

    def confirm(self, sender: str) -> bool:
        """Count an independent confirmation; True if it was new (and so worth re-broadcasting)."""
        if self.confirmations >= self._k or sender in self._confirmers:
            return False
        self._confirmers.add(sender)
        self.deadline = self.start + suspicion_timeout(self.confirmations, self._k, self._min, self._max)
        return True

    def hold(self, now: float, step: float) -> bool:
        """Wait `step` more, but never past the unconfirmed (maximal) timeout; False when that
        has passed already and the verdict must be given now."""
        latest = self.start + self._max
        if now >= latest:
            return False
        self.deadline = min(now + step, latest)
        return True

    def postpone(self, delay: float) -> None:
        """Push the deadline out: this node was stalled and could not hear a refutation in time."""
        self.start += delay
        self.deadline += delay
