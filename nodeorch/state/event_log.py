"""The agent's event log: membership, document, desired-state, job and health events, numbered.

Events are kept in a bounded ring; readers resume with `since(seq)` and wait for news with
`wait_after(seq)`. This is what /v1/events streams as newline-delimited JSON.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from typing import Any

Event = dict[str, Any]


class EventLog:
    def __init__(self, capacity: int = 10_000, clock: Callable[[], float] = time.time) -> None:
        self._events: deque[Event] = deque(maxlen=capacity)
        self._seq = 0
        self._clock = clock
        self._changed = asyncio.Event()

    @property
    def last_seq(self) -> int:
        return self._seq

    def append(self, kind: str, **fields: Any) -> Event:
        self._seq += 1
        event: Event = {"seq": self._seq, "time": round(self._clock(), 3), "kind": kind, **fields}
        self._events.append(event)
        self._changed.set()
        self._changed = asyncio.Event()
        return event

    def since(self, seq: int) -> list[Event]:
        """Events with a sequence number above `seq` still held (the oldest may have been dropped)."""
        if not self._events or seq >= self._seq:
            return []
        first = self._events[0]["seq"]
        start = max(0, seq + 1 - first)
        return [self._events[i] for i in range(start, len(self._events))]

    async def wait_after(self, seq: int, timeout: float) -> list[Event]:
        """Events after `seq`, waiting up to `timeout` for the first one."""
        events = self.since(seq)
        if events:
            return events
        changed = self._changed
        try:
            async with asyncio.timeout(timeout):
                await changed.wait()
        except TimeoutError:
            return []
        return self.since(seq)
