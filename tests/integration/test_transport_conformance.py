"""One suite, two transports: the real UDP/TCP sockets and the in-memory network must behave alike,
both at the transport seam and for whole nodes running on them."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack

import pytest

from gossip import (
    Address,
    EventKind,
    GossipNode,
    Keyring,
    MemberEvent,
    MemberState,
    MemoryNetwork,
    Transport,
    TransportError,
    UdpTcpTransport,
    generate_key,
    local,
)
from gossip._process import wait_until

TransportFactory = Callable[[int], Transport]


@pytest.fixture(params=["udp", "memory"])
def make_transport(request: pytest.FixtureRequest) -> TransportFactory:
    if request.param == "udp":
        return lambda i: UdpTcpTransport((f"127.0.0.{i + 2}", 0), max_packet=1400, max_frame=1 << 20)
    network = MemoryNetwork(random.Random(1))
    return lambda i: network.transport((f"127.0.0.{i + 1}", 7946))


async def test_packets_arrive_with_their_source(make_transport: TransportFactory) -> None:
    got: asyncio.Queue[tuple[bytes, Address]] = asyncio.Queue()

    async def no_requests(data: bytes, src: Address) -> bytes | None:
        return None

    async with make_transport(0) as a, make_transport(1) as b:
        b.serve(lambda data, src: got.put_nowait((data, src)), no_requests)
        a.serve(lambda data, src: None, no_requests)
        a.send_packet(b.local_addr, b"hello")
        data, src = await asyncio.wait_for(got.get(), 2)
        assert data == b"hello"
        assert src[1] == a.local_addr[1]


async def test_requests_get_replies_and_silence_is_an_empty_reply(make_transport: TransportFactory) -> None:
    async def echo(data: bytes, src: Address) -> bytes | None:
        return None if data == b"quiet" else data.upper()

    async with make_transport(0) as a, make_transport(1) as b:
        b.serve(lambda data, src: None, echo)
        assert await a.request(b.local_addr, b"ping", timeout=2) == b"PING"
        assert await a.request(b.local_addr, b"quiet", timeout=2) == b""


async def test_a_request_comes_from_the_requesters_address(make_transport: TransportFactory) -> None:
    sources: list[Address] = []

    async def note(data: bytes, src: Address) -> bytes | None:
        sources.append(src)
        return b"ok"

    async with make_transport(0) as a, make_transport(1) as b:
        b.serve(lambda data, src: None, note)
        assert await a.request(b.local_addr, b"hi", timeout=2) == b"ok"
    assert sources[0][0] == a.local_addr[0], "a firewall rule on a member's address applies to its streams too"


async def test_a_closed_peer_is_an_error_not_a_hang(make_transport: TransportFactory) -> None:
    async with make_transport(0) as a:
        b = make_transport(1)
        async with b:
            gone = b.local_addr
        with pytest.raises(TransportError):
            await a.request(gone, b"x", timeout=2)


async def test_a_stuck_peer_times_out(make_transport: TransportFactory) -> None:
    async def stuck(data: bytes, src: Address) -> bytes | None:
        await asyncio.sleep(30)
        return None

    async with make_transport(0) as a, make_transport(1) as b:
        b.serve(lambda data, src: None, stuck)
        with pytest.raises(TransportError, match="no reply"):
            await a.request(b.local_addr, b"x", timeout=0.3)


@pytest.fixture
async def trio(make_transport: TransportFactory) -> AsyncIterator[list[GossipNode]]:
    key = generate_key()
    async with AsyncExitStack() as stack:
        nodes = [
            await stack.enter_async_context(
                GossipNode(local(), name=f"n{i}", keyring=Keyring([key]), transport=make_transport(i))
            )
            for i in range(3)
        ]
        for node in nodes[1:]:
            assert await node.join([nodes[0].local_addr]) == 1
        yield nodes


def alive_everywhere(nodes: list[GossipNode], count: int) -> bool:
    return all(sum(m.state is MemberState.ALIVE for m in n.members()) == count for n in nodes)


async def test_nodes_converge_and_share_app_state(trio: list[GossipNode]) -> None:
    await wait_until(lambda: alive_everywhere(trio, 3), 10)
    await trio[2].set_app_state(b"document " * 500)
    await wait_until(lambda: all((s := n.app_state("n2")) and s[1] == b"document " * 500 for n in trio), 10)


async def test_a_leave_is_left_and_a_silent_stop_is_dead(trio: list[GossipNode]) -> None:
    await wait_until(lambda: alive_everywhere(trio, 3), 10)
    events = trio[0].events()
    assert await trio[2].leave(timeout=3)
    await trio[2].close()
    await wait_until(lambda: (m := trio[0].member("n2")) and m.state is MemberState.LEFT, 10)
    await trio[1].close()
    await wait_until(lambda: (m := trio[0].member("n1")) and m.state is MemberState.DEAD, 20)
    kinds = []
    while not events._queue.empty():
        event = events._queue.get_nowait()
        if isinstance(event, MemberEvent):
            kinds.append((event.kind, event.member.name))
    assert (EventKind.LEFT, "n2") in kinds and (EventKind.DEAD, "n2") not in kinds
    assert (EventKind.DEAD, "n1") in kinds


async def test_a_packet_to_a_closed_port_is_reported_unreachable(make_transport: TransportFactory) -> None:
    unreachable: asyncio.Queue[Address] = asyncio.Queue()

    async def no_requests(data: bytes, src: Address) -> bytes | None:
        return None

    async with make_transport(0) as a:
        b = make_transport(1)
        async with b:
            gone = b.local_addr
        a.serve(lambda data, src: None, no_requests, unreachable.put_nowait)
        a.send_packet(gone, b"anyone?")
        assert await asyncio.wait_for(unreachable.get(), 2) == gone
