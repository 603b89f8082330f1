"""The real engine against simulated replica nodes, in virtual time (shipped, not test-only).

- `VirtualTimeLoop`: an asyncio loop whose clock jumps to the next timer instead of sleeping, so
  minutes of timeouts and retries run in milliseconds, the same way every time for a given seed.
- `SimReplica`: a replica node (a ReplicaService over a MemoryStore) that can be killed (its
  connections reset, unsynced blocks lost) and restarted, stalled (answers wait), or partitioned
  (like TCP: nothing gets through, everything sent is delivered, in order, once it heals, unless
  the connection was closed or reset meanwhile).
- `MemoryLink`: the engine's side of a connection to a SimReplica, with the same interface as
  ReplicaClient.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import selectors
from collections import deque
from collections.abc import Callable
from typing import Any

from drivers.volumes._client import ReplicaLost, Reply, outcome
from drivers.volumes._errors import ProtocolError
from drivers.volumes._memory_store import MemoryStore, MemoryView
from drivers.volumes._replica_service import ReplicaService
from drivers.volumes._wire import BLOCK_CHANGES

LATENCY = 0.0002


class _VirtualSelector(selectors.DefaultSelector):
    def __init__(self, loop: VirtualTimeLoop) -> None:
        super().__init__()
        self._loop = loop

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        ready = super().select(0)
        if ready or timeout == 0:
            return ready
        if timeout is None:
            raise RuntimeError("the simulation has nothing left to do but would wait forever")
        self._loop.now += timeout
        return []


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    def __init__(self) -> None:
        self.now = 1000.0
        super().__init__(_VirtualSelector(self))

    def time(self) -> float:
        return self.now


class SimReplica:
    def __init__(self, address: str, *, local: bool = False) -> None:
        self.address = address
        self.local = local
        """On the engine's host: the engine reads its blocks directly (MemoryView)."""
        self.store = MemoryStore()
        self.service = ReplicaService(self.store)
        self.running = True
        self.partitioned = False
        self.stalled_until = 0.0
        self.links: set[MemoryLink] = set()
        self._held: list[Callable[[], None]] = []

    def kill(self) -> None:
        """kill -9 and a power cut: connections reset, unsynced blocks gone."""
        self.running = False
        self.store.crash()
        for link in list(self.links):
            link.reset("connection reset by peer")
        self._held.clear()

    def restart(self) -> None:
        self.service = ReplicaService(self.store)
        self.running = True

    def partition(self) -> None:
        self.partitioned = True

    def heal(self) -> None:
        self.partitioned = False
        held, self._held = self._held, []
        for deliver in held:
            deliver()

    def carry(self, deliver: Callable[[], None]) -> None:
        """Deliver now, or, while partitioned, once the partition heals (TCP keeps the bytes)."""
        if self.partitioned:
            self._held.append(deliver)
        else:
            deliver()


class MemoryLink:
    _sessions = itertools.count(1)

    def __init__(self, replica: SimReplica, on_lost: Callable[[str, str], None]) -> None:
        self.address = replica.address
        self._replica = replica
        self._on_lost = on_lost
        self._session = next(MemoryLink._sessions)
        self.closed_because = ""
        self._open = False
        self._pending: dict[Reply, float] = {}
        """Each request waiting for its answer, with when it was sent; oldest first."""
        self._queue: deque[tuple[float, Reply, int, dict[str, Any], bytes]] = deque()
        self._pump_scheduled = False
        self._reset = False
        self._changes: set[Reply] = set()
        self._view: MemoryView | None = None

    @property
    def connected(self) -> bool:
        return self._open and not self.closed_because

    @property
    def outstanding(self) -> int:
        return len(self._pending)

    @property
    def oldest_unanswered(self) -> float | None:
        return next(iter(self._pending.values()), None)

    async def connect(self, timeout: float) -> None:
        if not self._replica.running:
            raise ReplicaLost(f"{self.address}: connection refused")
        if self._replica.partitioned:
            await asyncio.sleep(timeout)
            raise ReplicaLost(f"{self.address}: connect timed out")
        self._open = True
        self._replica.links.add(self)

    def send(self, op: int, header: dict[str, Any], data: bytes = b"") -> Reply:
        loop = asyncio.get_running_loop()
        future: Reply = loop.create_future()
        if not self.connected:
            future.set_exception(ReplicaLost(f"{self.address}: {self.closed_because or 'not connected'}"))
            return future
        self._pending[future] = loop.time()
        if op in BLOCK_CHANGES:
            self._changes.add(future)
        future.add_done_callback(self._answered)
        self._queue.append((loop.time() + LATENCY, future, op, header, data))
        self._pump()
        return future

    def _answered(self, future: Reply) -> None:
        self._pending.pop(future, None)
        self._changes.discard(future)

    def attach_local(self, volume: str, offered: object) -> None:
        backing = self._replica.store.backings.get(volume) if self._replica.local and self.connected else None
        self._view = MemoryView(backing) if backing is not None else None

    def read_locally(self, offset: int, length: int, epoch: int) -> bytes | None:
        if self._view is None or self._changes or not self.connected:
            return None
        return self._view.read(offset, length, epoch)

    def _pump(self) -> None:
        """Deliver queued requests strictly in order (one TCP stream), each after its latency,
        while the replica runs, is not stalled and is reachable."""
        self._pump_scheduled = False
        loop = asyncio.get_running_loop()
        replica = self._replica
        while self._queue:
            if not replica.running or self._reset:
                self._queue.clear()  # the replica died with the connection: nothing more arrives
                return
            at = max(self._queue[0][0], replica.stalled_until)
            if at > loop.time():
                self._schedule_pump(at)
                return
            if replica.partitioned:
                replica.carry(self._pump)  # held until the partition heals
                return
            _, future, op, header, data = self._queue.popleft()
            try:
                answer = replica.service.answer(op, header, data, self._session)
            except ProtocolError as error:
                self.reset(str(error))
                return
            loop.call_later(LATENCY, replica.carry, functools.partial(self._answer, future, answer))

    def _schedule_pump(self, at: float) -> None:
        if not self._pump_scheduled:
            self._pump_scheduled = True
            asyncio.get_running_loop().call_at(at, self._pump)

    def _answer(self, future: Reply, answer: tuple[int, dict[str, Any], bytes]) -> None:
        if not future.done() and self.connected:
            future.set_result(answer)

    def reset(self, reason: str) -> None:
        """The connection broke (the replica died): every pending request fails."""
        was_open = self.connected
        self._reset = True
        self._close(reason)
        if was_open:
            self._on_lost(self.address, reason)

    def _close(self, reason: str) -> None:
        if not self.closed_because:
            self.closed_because = reason
        self._replica.links.discard(self)
        if self._view is not None:
            self._view.close()
            self._view = None
        for future in list(self._pending):
            if not future.done():
                future.set_exception(ReplicaLost(f"{self.address}: {self.closed_because}"))

    async def call(self, op: int, header: dict[str, Any], data: bytes = b"") -> tuple[dict[str, Any], bytes]:
        return outcome(self.address, await self.send(op, header, data))

    def close(self, reason: str = "closed") -> None:
        """Our side closes: what was already sent still arrives (as TCP delivers it before the
        FIN), but no answer comes back."""
        self._close(reason)

    async def aclose(self) -> None:
        self.close()
