"""The asyncio driver: feeds the protocol core with real time and real packets.

    async with GossipNode(lan(), name="a", bind=("10.0.0.1", 7946), cluster="prod",
                          keyring=Keyring([key])) as node:
        await node.join(["10.0.0.2:7946"])
        async for event in node.events(): ...

The node owns one transport and one timer. Every input (a packet, a TCP exchange, a timer, a call
of the user) goes through the core, whose actions are carried out at once; the timer is re-armed for
the core's next deadline after each input. Nothing from the network can raise out of here.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import math
import random
import socket
import time
from collections import Counter
from collections.abc import Iterable, Mapping
from types import TracebackType
from typing import Self

from gossip._config import GossipConfig
from gossip._crypto import CHANNEL_PACKET, CHANNEL_STREAM, Keyring, Sealer
from gossip._errors import ClosedError, ConfigError, DecodeError, JoinError, PeerRefused, TransportError
from gossip._events import Event
from gossip._members import Member
from gossip._messages import Address, MemberState
from gossip._protocol import Action, EmitEvent, GossipCore, SendPacket, SendRequest
from gossip._transport import Transport, UdpTcpTransport

log = logging.getLogger(__name__)

DEFAULT_PORT = 7946


def parse_address(text: str, default_port: int = DEFAULT_PORT) -> tuple[str, int]:
    """'host', 'host:port', '[v6]:port' or a bare IPv6 literal -> (host, port); host may be a DNS name."""
    text = text.strip()
    if not text:
        raise ConfigError("empty address")
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise ConfigError(f"bad address {text!r}: expected [v6addr]:port")
        port_text = rest[1:] if rest else ""
    elif text.count(":") > 1:
        host, port_text = text, ""
    else:
        host, _, port_text = text.partition(":")
    try:
        port = int(port_text) if port_text else default_port
    except ValueError:
        raise ConfigError(f"bad port in {text!r}") from None
    if not 0 < port < 65536:
        raise ConfigError(f"port out of range in {text!r}")
    if not host:
        raise ConfigError(f"missing host in {text!r}")
    return host, port


async def resolve(seeds: Iterable[str | Address], default_port: int = DEFAULT_PORT) -> list[Address]:
    """Seeds to IP addresses, resolving DNS names now (they may have moved since last time)."""
    loop = asyncio.get_running_loop()
    found: list[Address] = []
    for seed in seeds:
        host, port = parse_address(seed, default_port) if isinstance(seed, str) else seed
        try:
            ipaddress.ip_address(host)
            candidates = [(host, port)]
        except ValueError:
            try:
                infos = await loop.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
            except OSError as error:
                log.warning("cannot resolve seed %s: %s", host, error)
                continue
            candidates = [(str(info[4][0]), port) for info in infos]
        for candidate in candidates:
            if candidate not in found:
                found.append(candidate)
    return found


class EventStream:
    """A subscription to the node's events; iterate with `async for`. Bounded: if the reader falls
    behind by more than `maxsize` events, the oldest are dropped and counted in `lost`."""

    def __init__(self, node: GossipNode, maxsize: int) -> None:
        self._node = node
        self._queue: asyncio.Queue[Event | None] = asyncio.Queue(maxsize)
        self.lost = 0

    def _put(self, event: Event | None) -> None:
        while True:
            try:
                self._queue.put_nowait(event)
                return
            except asyncio.QueueFull:
                self._queue.get_nowait()
                self.lost += 1

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> Event:
        event = await self._queue.get()
        if event is None:
            raise StopAsyncIteration
        return event

    def close(self) -> None:
        self._node._streams.discard(self)
        self._put(None)


class GossipNode:
    """One cluster member on an asyncio loop. An async context manager: it starts on entry and
    stops (without a leave; call leave() first for a graceful exit) on exit."""

    def __init__(
        self,
        config: GossipConfig,
        *,
        name: str,
        bind: Address = ("127.0.0.1", DEFAULT_PORT),
        advertise: Address | None = None,
        cluster: str = "default",
        keyring: Keyring | None = None,
        insecure: bool = False,
        meta: bytes = b"",
        transport: Transport | None = None,
        rng: random.Random | None = None,
    ) -> None:
        if keyring is None and not insecure:
            raise ConfigError("no keyring: pass keyring=Keyring([...]) or insecure=True for plaintext")
        if not name or len(name) > config.max_name_length or not name.isprintable():
            raise ConfigError(f"node name must be 1 to {config.max_name_length} printable characters")
        self.config = config
        self.name = name
        self.keyring = keyring
        self.drops: Counter[str] = Counter()
        self._sealer = Sealer(
            cluster,
            keyring,
            replay_window=config.replay_window,
            replay_memory=config.replay_memory,
            drops=self.drops,
        )
        self._transport: Transport = transport or UdpTcpTransport(
            bind,
            max_packet=config.max_packet_size,
            max_frame=config.max_stream_frame,
            max_inbound_streams=config.max_inbound_streams,
            stream_timeout=config.tcp_timeout,
        )
        self._advertise = advertise
        self._meta = meta
        self._rng = rng or random.Random()
        self._core: GossipCore | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0
        self._rejoin_at = math.inf
        self._rejoining: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._waiters: dict[int, asyncio.Future[bool]] = {}
        self._streams: set[EventStream] = set()
        self._seeds: list[str | Address] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False

    # Lifetime --------------------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        self._loop = asyncio.get_running_loop()
        await self._transport.__aenter__()
        try:
            addr = self._advertise or self._transport.local_addr
            if ipaddress.ip_address(addr[0]).is_unspecified:
                raise ConfigError(f"bound to {addr[0]}: set an advertise address other members can reach")
            now = self._loop.time()
            self._core = GossipCore(
                self.config,
                name=self.name,
                addr=addr,
                meta=self._meta,
                now=now,
                rng=self._rng,
                packet_overhead=self._sealer.overhead,
                clock_offset=time.time() - now,
            )
        except BaseException:
            await self._transport.__aexit__(None, None, None)
            raise
        self._transport.serve(self._on_packet, self._on_request, self._on_unreachable)
        self._rejoin_at = now + self._rejoin_delay()
        self._arm()
        log.info("%s: gossip listening on %s:%s", self.name, *self._transport.local_addr)
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Stop at once: no leave message (others will see a failure unless leave() ran first)."""
        if self._closed:
            return
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(BaseException):
                await task
        for waiter in self._waiters.values():
            if not waiter.done():
                waiter.set_result(False)
        for stream in list(self._streams):
            stream.close()
        await self._transport.__aexit__(None, None, None)

    @property
    def core(self) -> GossipCore:
        if self._core is None or self._closed:
            raise ClosedError("the node is not running")
        return self._core

    @property
    def local_addr(self) -> Address:
        return self.core.local.addr

    # Reading -------------------------------------------------------------------------------------

    def members(self) -> list[Member]:
        return self.core.members()

    def member(self, name: str) -> Member | None:
        return self.core.member(name)

    def alive_peers(self) -> list[Member]:
        """Other members currently alive or suspect."""
        return self.core.alive_peers()

    @property
    def local(self) -> Member:
        return self.core.local

    def app_state(self, name: str) -> tuple[int, bytes] | None:
        """(version, data) of a member's application state, as last received."""
        return self.core.app_state(name)

    def stats(self) -> Mapping[str, int]:
        """Counters: packets and bytes in and out, drops by reason, probes, suspicions, refutations..."""
        merged: Counter[str] = Counter()
        merged.update(self.core.stats)
        merged.update({f"drop_{reason}": count for reason, count in self.drops.items()})
        transport_stats = getattr(self._transport, "stats", None)
        if isinstance(transport_stats, Counter):
            merged.update(transport_stats)
        merged["awareness"] = self.core.awareness
        merged["queued_broadcasts"] = self.core.queued_broadcasts
        merged["events_lost"] = sum(s.lost for s in self._streams)
        return merged

    def events(self, maxsize: int = 4096) -> EventStream:
        """Subscribe to events from now on."""
        stream = EventStream(self, maxsize)
        self._streams.add(stream)
        return stream

    # Acting --------------------------------------------------------------------------------------

    async def join(self, seeds: Iterable[str | Address]) -> int:
        """Exchange state with each seed; returns how many answered. Raises JoinError if none did.

        The seeds are remembered: they are tried again periodically, so a node that lost everyone
        (a long partition, all peers restarted) finds its way back."""
        seeds = list(seeds)
        for seed in seeds:
            if seed not in self._seeds:
                self._seeds.append(seed)
        addrs = [a for a in await resolve(seeds) if a != self.local_addr]
        if not addrs:
            if seeds:
                raise JoinError(f"no usable seed address among {', '.join(map(str, seeds))}")
            return 0
        actions = self.core.join(addrs)
        futures = self._run(actions)
        results = await asyncio.gather(*futures) if futures else []
        joined = sum(1 for ok in results if ok)
        if not joined:
            raise JoinError(f"no seed answered: {', '.join(f'{h}:{p}' for h, p in addrs)}")
        return joined

    async def set_meta(self, meta: bytes) -> None:
        self._run(self.core.set_meta(self._now(), meta))

    async def set_app_state(self, data: bytes) -> None:
        self._run(self.core.set_app_state(self._now(), data))

    async def send_event(self, name: str, payload: bytes = b"") -> None:
        """Send a user event to every member, this one included (a UserEvent on each one's event
        stream, once); PayloadTooLarge beyond `max_user_event_size`, BadEventName for a bad name."""
        self._run(self.core.send_user_event(self._now(), name, payload))

    async def leave(self, timeout: float = 5.0) -> bool:
        """Tell the cluster we are leaving; True if the news went out before the timeout."""
        self._run(self.core.leave(self._now()))
        deadline = self._now() + timeout
        while not self.core.leave_sent():
            if self._now() >= deadline:
                return False
            await asyncio.sleep(0.05)
        return True

    # Plumbing ------------------------------------------------------------------------------------

    def _now(self) -> float:
        assert self._loop is not None
        return self._loop.time()

    def _arm(self) -> None:
        """(Re)arm the timer for the core's next deadline, if that is sooner than the armed one."""
        if self._closed or self._core is None:
            return
        deadline = self._core.next_deadline()
        if self._timer is not None:
            if abs(deadline - self._timer_at) < 0.0005:
                return
            # Sooner: wake earlier. Later (an acked probe's deadline is gone): a wake-up now would
            # find nothing to do, and idle wake-ups are the idle cost.
            self._timer.cancel()
            self._timer = None
        if math.isinf(deadline):  # nothing due until input arrives (which re-arms); uvloop aborts on call_at(inf)
            return
        assert self._loop is not None
        self._timer_at = deadline
        self._timer = self._loop.call_at(deadline, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        now = self._now()
        try:
            self._run(self.core.tick(now))
        except Exception:
            log.exception("%s: protocol timer failed; continuing", self.name)
        if now >= self._rejoin_at and (self._rejoining is None or self._rejoining.done()):
            # One at a time: a seed's name can take long to resolve while its DNS is down.
            self._rejoin_at = now + self._rejoin_delay()
            self._rejoining = asyncio.create_task(self._rejoin_seeds())
            self._tasks.add(self._rejoining)
            self._rejoining.add_done_callback(self._tasks.discard)
        self._arm()

    def _run(self, actions: list[Action]) -> list[asyncio.Future[bool]]:
        futures: list[asyncio.Future[bool]] = []
        for action in actions:
            if isinstance(action, SendPacket):
                self._transport.send_packet(action.to, self._sealer.seal(action.payload, CHANNEL_PACKET))
            elif isinstance(action, SendRequest):
                assert self._loop is not None
                future: asyncio.Future[bool] = self._loop.create_future()
                self._waiters[action.token] = future
                futures.append(future)
                task = asyncio.create_task(self._exchange(action))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
            elif isinstance(action, EmitEvent):
                for stream in list(self._streams):
                    stream._put(action.event)
        self._arm()
        return futures

    async def _exchange(self, action: SendRequest) -> None:
        reply: bytes | None = None
        refused = False
        try:
            sealed = await self._transport.request(
                action.to, self._sealer.seal(action.payload, CHANNEL_STREAM), action.timeout
            )
            reply = self._sealer.open(sealed, self._now(), CHANNEL_STREAM) if sealed else b""
        except PeerRefused:
            refused = True
        except TransportError as error:
            log.debug("%s: exchange with %s:%s failed: %s", self.name, action.to[0], action.to[1], error)
        except DecodeError:
            pass  # counted by the sealer
        if self._closed:
            return
        ok = False
        try:
            ok, actions = self.core.on_response(self._now(), action.token, reply, refused=refused)
            self._run(actions)
        except Exception:
            log.exception("%s: handling a reply from %s:%s failed", self.name, *action.to)
        waiter = self._waiters.pop(action.token, None)
        if waiter is not None and not waiter.done():
            waiter.set_result(ok)

    def _on_packet(self, data: bytes, src: Address) -> None:
        if self._closed:
            return
        try:
            payload = self._sealer.open(data, self._now(), CHANNEL_PACKET)
        except DecodeError as error:
            log.debug("%s: dropped packet from %s:%s: %s", self.name, src[0], src[1], error)
            return
        try:
            self._run(self.core.on_packet(self._now(), payload, src))
        except Exception:
            self.drops["internal_error"] += 1
            log.exception("%s: handling a packet from %s:%s failed; dropped", self.name, *src)

    def _on_unreachable(self, addr: Address) -> None:
        if not self._closed:
            self._run(self.core.on_unreachable(self._now(), addr))

    async def _on_request(self, data: bytes, src: Address) -> bytes | None:
        if self._closed:
            return None
        try:
            payload = self._sealer.open(data, self._now(), CHANNEL_STREAM)
        except DecodeError as error:
            log.debug("%s: dropped stream from %s:%s: %s", self.name, src[0], src[1], error)
            return None
        try:
            reply, actions = self.core.on_request(self._now(), payload, src)
            self._run(actions)
        except Exception:
            self.drops["internal_error"] += 1
            log.exception("%s: handling a stream from %s:%s failed; dropped", self.name, *src)
            return None
        return None if reply is None else self._sealer.seal(reply, CHANNEL_STREAM)

    def _rejoin_delay(self) -> float:
        return self.config.rejoin_interval * (0.5 + self._rng.random())

    async def _rejoin_seeds(self) -> None:
        """Exchange state with one seed that is not a live member, if any: started from the probe
        tick every rejoin_interval or so (a timer of its own would be one more idle wake-up)."""
        if not self._seeds or self.core.local.state is MemberState.LEFT:
            return
        known = {m.addr for m in self.core.alive_peers()}
        try:
            candidates = [a for a in await resolve(self._seeds) if a not in known and a != self.local_addr]
        except ConfigError:
            return
        if candidates and not self._closed:
            self._run(self.core.join([self._rng.choice(candidates)]))
