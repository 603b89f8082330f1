"""Replay protection: a sliding window of sequence numbers per sender boot (pure).

Every sealed packet carries the sender's boot id (random per process start) and a sequence number
that grows with each packet. A receiver accepts each (boot, seq) at most once, and nothing older
than the window. A boot unheard for `memory` seconds is forgotten: anything that old is already
stale under the incarnation and version rules, so replaying it changes nothing either.
"""

from __future__ import annotations


class ReplayGuard:
    __slots__ = ("_max_boots", "_memory", "_next_prune", "_seen", "_window")

    def __init__(self, window: int, memory: float, max_boots: int = 65536) -> None:
        self._window = window
        self._memory = memory
        self._max_boots = max_boots
        # (boot, channel) -> [highest seq, bitmap of seen seqs below it, last accepted time]
        self._seen: dict[tuple[int, int], list[float]] = {}
        self._next_prune = 0.0

    def __len__(self) -> int:
        return len(self._seen)

    def accept(self, boot: int, channel: int, seq: int, now: float) -> bool:
        """True the first time (boot, channel, seq) is offered within the window; False for replays."""
        if now >= self._next_prune or len(self._seen) >= self._max_boots:
            self._prune(now)
        key = (boot, channel)
        entry = self._seen.get(key)
        if entry is None:
            self._seen[key] = [seq, 1, now]
            return True
        highest, bitmap = int(entry[0]), int(entry[1])
        if seq > highest:
            shift = seq - highest
            bitmap = ((bitmap << shift) | 1) & ((1 << self._window) - 1) if shift < self._window else 1
            entry[0], entry[1], entry[2] = seq, bitmap, now
            return True
        offset = highest - seq
        if offset >= self._window or bitmap >> offset & 1:
            return False
        entry[1] = bitmap | (1 << offset)
        entry[2] = now
        return True

    def _prune(self, now: float) -> None:
        horizon = now - self._memory
        stale = [key for key, entry in self._seen.items() if entry[2] < horizon]
        for key in stale:
            del self._seen[key]
        if len(self._seen) >= self._max_boots:
            by_age = sorted(self._seen, key=lambda k: self._seen[k][2])
            for key in by_age[: len(by_age) // 2]:
                del self._seen[key]
        self._next_prune = now + self._memory / 4
