"""Shared helpers for integration tests: free loopback ports, and clusters of member processes."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import AsyncExitStack

import pytest

from gossip._process import NodeProcess


def free_port() -> int:
    """A port free for both UDP and TCP on 127.0.0.1."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind(("127.0.0.1", 0))
            port = int(udp.getsockname()[1])
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
                try:
                    tcp.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return port


ClusterFactory = Callable[..., "AsyncIterator[list[NodeProcess]]"]


@pytest.fixture
async def processes() -> AsyncIterator[list[NodeProcess]]:
    """Member processes a test starts; all are stopped (SIGKILL if need be) afterwards."""
    started: list[NodeProcess] = []
    yield started
    async with AsyncExitStack():
        for proc in started:
            proc.kill()
        for proc in started:
            await proc.wait(5)


async def start_cluster(
    started: list[NodeProcess], count: int, *, keys: Iterable[str], cluster: str = "default",
    profile: str = "lan",
) -> list[NodeProcess]:
    keys = list(keys)
    ports = [free_port() for _ in range(count)]
    nodes = []
    for i, port in enumerate(ports):
        join = [f"127.0.0.1:{ports[0]}"] if i else []
        node = NodeProcess(f"node-{i + 1}", f"127.0.0.1:{port}", join=join, cluster=cluster, keys=keys,
                           profile=profile)
        started.append(node)
        await node.start()
        nodes.append(node)
    return nodes
