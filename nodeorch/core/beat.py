"""One rhythm for an agent's periodic work.

The services pass, the volume pass, the replica server's check, the desired file's poll and the
health probes each come back every second or few. Left to their own start times they would wake
the process at as many moments, and on an idle host waking a process is most of what it costs.
So each waits for the next beat of its interval instead, and the beats of every interval fall on
the same instants: one wake-up a second does the work of all of them. Each agent has its own
phase, so the agents of one host do not all wake at the same instant either.
"""

from __future__ import annotations

import time
from collections.abc import Callable


def until_beat(now: float, interval: float, phase: float) -> float:
    """Seconds from `now` to the next instant `phase + k * interval` (never 0: a whole interval
    when `now` is on a beat, so a loop that finished its work at once waits for the next one)."""
    return interval - (now - phase) % interval


class Beat:
    def __init__(self, phase: float = 0.0, clock: Callable[[], float] = time.monotonic) -> None:
        """`clock`: the event loop's (asyncio's loop time is the monotonic clock)."""
        self.phase = phase
        self._clock = clock

    def until_next(self, interval: float) -> float:
        return until_beat(self._clock(), interval, self.phase)
