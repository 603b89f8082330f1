"""An in-memory network with per-link loss, delay and partitions.

`MemoryNetwork` decides the fate of each message (dropped, or delivered after a delay); it is pure
and shared by two users: `MemoryTransport`, which implements the Transport seam on an asyncio loop,
and the virtual-time simulation, which schedules deliveries on its own clock.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from types import TracebackType
from typing import Self

from gossip._errors import PeerRefused, TransportError
from gossip._messages import Address
from gossip._transport import PacketHandler, RequestHandler, UnreachableHandler


@dataclass(frozen=True, slots=True)
class Link:
    loss: float = 0.0
    """Probability that one packet (or one leg of an exchange) is lost."""
    delay: float = 0.0005
    """One-way latency in seconds."""
    jitter: float = 0.0
    """Uniform extra latency in [0, jitter)."""


class MemoryNetwork:
    def __init__(self, rng: random.Random | None = None, default: Link | None = None) -> None:
        self._rng = rng or random.Random(0)
        self.default = default or Link()
        self._links: dict[tuple[Address, Address], Link] = {}
        self._groups: dict[Address, int] | None = None
        self.endpoints: dict[Address, MemoryTransport] = {}

    # Conditions ----------------------------------------------------------------------------------

    def set_link(self, a: Address, b: Address, link: Link) -> None:
        """Conditions between a and b, both directions."""
        self._links[(a, b)] = link
        self._links[(b, a)] = link

    def partition(self, *groups: Iterable[Address]) -> None:
        """Only traffic within a group flows; addresses in no group reach nobody."""
        self._groups = {addr: i for i, group in enumerate(groups) for addr in group}

    def heal(self) -> None:
        self._groups = None

    def route(self, src: Address, dst: Address) -> float | None:
        """The delay of one message from src to dst, or None if it is lost."""
        if self._groups is not None:
            group = self._groups.get(src)
            if group is None or self._groups.get(dst) != group:
                return None
        link = self._links.get((src, dst), self.default)
        if link.loss > 0 and self._rng.random() < link.loss:
            return None
        return link.delay + (self._rng.random() * link.jitter if link.jitter else 0.0)

    # Endpoints for the asyncio driver --------------------------------------------------------------

    def transport(self, addr: Address) -> MemoryTransport:
        return MemoryTransport(self, addr)


class MemoryTransport:
    """The Transport seam over a MemoryNetwork, delivering on the running asyncio loop."""

    def __init__(self, network: MemoryNetwork, addr: Address) -> None:
        self._network = network
        self._addr = addr
        self._on_packet: PacketHandler | None = None
        self._on_request: RequestHandler | None = None
        self._on_unreachable: UnreachableHandler | None = None
        self.stats: Counter[str] = Counter()

    @property
    def local_addr(self) -> Address:
        return self._addr

    def serve(
        self, on_packet: PacketHandler, on_request: RequestHandler, on_unreachable: UnreachableHandler | None = None
    ) -> None:
        self._on_packet = on_packet
        self._on_request = on_request
        self._on_unreachable = on_unreachable

    async def __aenter__(self) -> Self:
        if self._addr in self._network.endpoints:
            raise TransportError(f"{self._addr[0]}:{self._addr[1]} is already in use")
        self._network.endpoints[self._addr] = self
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._network.endpoints.pop(self._addr, None)
        self._on_packet = self._on_request = None

    def send_packet(self, to: Address, data: bytes) -> None:
        self.stats["packets_out"] += 1
        self.stats["bytes_out"] += len(data)
        delay = self._network.route(self._addr, to)
        if delay is None:
            return
        asyncio.get_running_loop().call_later(delay, self._deliver, to, data, delay)

    def _deliver(self, to: Address, data: bytes, delay: float) -> None:
        endpoint = self._network.endpoints.get(to)
        if endpoint is not None and endpoint._on_packet is not None:
            endpoint.stats["packets_in"] += 1
            endpoint.stats["bytes_in"] += len(data)
            endpoint._on_packet(data, self._addr)
        elif self._on_unreachable is not None:
            # The host is reachable but nothing listens: it answers "port unreachable".
            asyncio.get_running_loop().call_later(delay, self._on_unreachable, to)

    async def request(self, to: Address, data: bytes, timeout: float) -> bytes:
        try:
            async with asyncio.timeout(timeout):
                return await self._exchange(to, data)
        except TimeoutError:
            raise TransportError(f"{to[0]}:{to[1]}: no reply within {timeout:.2f}s") from None

    async def _exchange(self, to: Address, data: bytes) -> bytes:
        self.stats["streams_out"] += 1
        self.stats["bytes_out"] += len(data)
        there = self._network.route(self._addr, to)
        if there is None:
            await asyncio.Event().wait()  # a lost connection looks like silence until the timeout
        await asyncio.sleep(there or 0.0)
        endpoint = self._network.endpoints.get(to)
        if endpoint is None or endpoint._on_request is None:
            raise PeerRefused(f"{to[0]}:{to[1]}: connection refused")
        endpoint.stats["streams_in"] += 1
        endpoint.stats["bytes_in"] += len(data)
        reply = await endpoint._on_request(data, self._addr)
        back = self._network.route(to, self._addr)
        if back is None:
            await asyncio.Event().wait()
        await asyncio.sleep(back or 0.0)
        self.stats["bytes_in"] += len(reply or b"")
        return reply or b""
