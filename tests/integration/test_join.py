"""Joining through seeds: IPv4 and IPv6 literals, DNS names resolved at each attempt, failures."""

from __future__ import annotations

import pytest

from gossip import ConfigError, GossipNode, JoinError, Keyring, MemberState, generate_key, local, parse_address
from gossip._process import wait_until

from .conftest import free_port


def test_seed_addresses_parse_in_every_documented_form() -> None:
    assert parse_address("10.0.0.1") == ("10.0.0.1", 7946)
    assert parse_address("10.0.0.1:8000") == ("10.0.0.1", 8000)
    assert parse_address("[::1]:8000") == ("::1", 8000)
    assert parse_address("fe80::1") == ("fe80::1", 7946)
    assert parse_address("seed.example.internal:7000") == ("seed.example.internal", 7000)
    for bad in ("", ":7000", "host:port", "host:70000", "[::1"):
        with pytest.raises(ConfigError):
            parse_address(bad)


async def test_members_join_over_ipv6_loopback() -> None:
    key = Keyring([generate_key()])
    async with (
        GossipNode(local(), name="v6-a", bind=("::1", free_port()), keyring=key) as a,
        GossipNode(local(), name="v6-b", bind=("::1", free_port()), keyring=key) as b,
    ):
        assert await b.join([f"[::1]:{a.local_addr[1]}"]) == 1
        await wait_until(lambda: (m := a.member("v6-b")) is not None and m.state is MemberState.ALIVE, 5)
        assert a.member("v6-b").addr == ("::1", b.local_addr[1])  # type: ignore[union-attr]


async def test_a_seed_given_by_dns_name_is_resolved() -> None:
    key = Keyring([generate_key()])
    async with (
        GossipNode(local(), name="dns-a", bind=("127.0.0.1", free_port()), keyring=key) as a,
        GossipNode(local(), name="dns-b", bind=("127.0.0.1", free_port()), keyring=key) as b,
    ):
        assert await b.join([f"localhost:{a.local_addr[1]}"]) == 1


async def test_joining_nobody_is_a_clear_error() -> None:
    async with GossipNode(local(), name="alone", bind=("127.0.0.1", free_port()), insecure=True) as a:
        with pytest.raises(JoinError, match="no seed answered"):
            await a.join([f"127.0.0.1:{free_port()}"])
        with pytest.raises(JoinError, match="no usable seed"):
            await a.join([a.local_addr])  # only itself


def test_a_node_without_a_keyring_must_say_it_is_insecure() -> None:
    with pytest.raises(ConfigError, match="insecure=True"):
        GossipNode(local(), name="x")


async def test_a_seed_that_was_down_at_join_is_tried_again_until_it_answers() -> None:
    key = Keyring([generate_key()])
    port = free_port()
    async with GossipNode(local(), name="early", bind=("127.0.0.1", free_port()), keyring=key) as early:
        with pytest.raises(JoinError, match="no seed answered"):
            await early.join([f"127.0.0.1:{port}"])
        async with GossipNode(local(), name="seed", bind=("127.0.0.1", port), keyring=key) as seed:
            # The periodic rejoin rides on the probe tick: within 1.5 rejoin intervals and a tick.
            await wait_until(lambda: (m := seed.member("early")) is not None and m.state is MemberState.ALIVE,
                             1.5 * local().rejoin_interval + 2 * local().probe_interval + 2)
            assert early.member("seed") is not None
