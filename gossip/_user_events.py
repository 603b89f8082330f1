"""User events (pure): the clock that stamps them and the memory that delivers each one once per
member, however many times gossip brings it.

An event is identified by its origin, its name and its stamp: a hybrid logical clock in
milliseconds (the wall clock, but never behind any stamp seen), so a restarted member's events
never repeat the stamps of its earlier life, and an event from a far older past is refused.
"""

from __future__ import annotations

from collections import OrderedDict

REMEMBERED = 4096
"""Events remembered for deduplication; gossip stops retransmitting an event long before this
many newer ones pass."""
MAX_AGE_MS = 600_000
"""An event stamped this much before our clock is stale (a partition's leftover)."""


class UserEventClock:
    def __init__(self) -> None:
        self.time = 0
        self._seen: OrderedDict[tuple[str, int, str], None] = OrderedDict()

    def stamp(self, wall: float) -> int:
        """The stamp of an event this member sends at unix time `wall`."""
        self.time = max(self.time + 1, int(wall * 1000))
        return self.time

    def accept(self, origin: str, stamp: int, name: str, wall: float) -> bool:
        """Whether an event is new here (and so is delivered and passed on); the clock moves past it."""
        now = max(self.time, int(wall * 1000))
        self.time = max(self.time, stamp)
        key = (origin, stamp, name)
        if stamp + MAX_AGE_MS < now or key in self._seen:
            return False
        self._seen[key] = None
        if len(self._seen) > REMEMBERED:
            self._seen.popitem(last=False)
        return True
