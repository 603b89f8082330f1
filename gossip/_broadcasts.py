"""The transmit-limited broadcast queue (pure).

Each update is piggybacked on outgoing packets until it has been sent retransmit_limit(N) times.
Least-sent updates go first, newest first among equals; an update about the same subject (a newer
state of the same member) replaces the queued one. Beyond max_depth, the most-sent and oldest are
pruned: anti-entropy repairs whatever they would have carried.
"""

from __future__ import annotations

import itertools
from collections.abc import Hashable

# Smallest message that could still fit: stop scanning once less room than this is left.
_MIN_MESSAGE = 8
# Give up filling a packet after looking at this many items that did not fit.
_MAX_MISFITS = 32


class _Item:
    __slots__ = ("key", "order", "payload", "transmits")

    def __init__(self, key: Hashable, payload: bytes, order: int) -> None:
        self.key = key
        self.payload = payload
        self.transmits = 0
        self.order = order


class BroadcastQueue:
    def __init__(self, max_depth: int) -> None:
        self._max_depth = max_depth
        self._items: dict[Hashable, _Item] = {}
        # transmits -> {key: item}, insertion ordered (oldest first)
        self._buckets: dict[int, dict[Hashable, _Item]] = {}
        self._orders = itertools.count()

    def __len__(self) -> int:
        return len(self._items)

    def pending(self, key: Hashable) -> bool:
        return key in self._items

    def transmits(self, key: Hashable) -> int | None:
        item = self._items.get(key)
        return None if item is None else item.transmits

    def queue(self, key: Hashable, payload: bytes) -> None:
        """Queue an update, replacing any queued one about the same key."""
        self._remove(key)
        item = _Item(key, payload, next(self._orders))
        self._items[key] = item
        self._buckets.setdefault(0, {})[key] = item
        if len(self._items) > self._max_depth:
            self._prune()

    def take(self, budget: int, limit: int, per_item_overhead: int = 0) -> list[bytes]:
        """Payloads that fit in `budget` bytes, counting one transmission each; retire finished ones."""
        chosen: list[_Item] = []
        misfits = 0
        for transmits in sorted(self._buckets):
            bucket = self._buckets[transmits]
            for item in reversed(bucket.values()):
                cost = len(item.payload) + per_item_overhead
                if cost <= budget:
                    chosen.append(item)
                    budget -= cost
                else:
                    misfits += 1
                if budget < _MIN_MESSAGE or misfits > _MAX_MISFITS:
                    break
            if budget < _MIN_MESSAGE or misfits > _MAX_MISFITS:
                break
        for item in chosen:
            self._move(item, item.transmits + 1, limit)
        return [item.payload for item in chosen]

    def _move(self, item: _Item, transmits: int, limit: int) -> None:
        bucket = self._buckets[item.transmits]
        del bucket[item.key]
        if not bucket:
            del self._buckets[item.transmits]
        item.transmits = transmits
        if transmits >= limit:
            del self._items[item.key]
        else:
            self._buckets.setdefault(transmits, {})[item.key] = item

    def _remove(self, key: Hashable) -> None:
        item = self._items.pop(key, None)
        if item is not None:
            bucket = self._buckets[item.transmits]
            del bucket[key]
            if not bucket:
                del self._buckets[item.transmits]

    def _prune(self) -> None:
        excess = len(self._items) - self._max_depth
        for transmits in sorted(self._buckets, reverse=True):
            for key in list(self._buckets[transmits])[:excess]:
                self._remove(key)
                excess -= 1
            if excess <= 0:
                return
