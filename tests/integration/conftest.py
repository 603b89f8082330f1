"""Shared helpers for integration tests: free loopback ports, and clusters of member processes."""

from __future__ import annotations

import random
import socket
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import pytest

from gossip._process import NodeProcess

_HANDED_OUT: set[int] = set()


def _ephemeral_floor() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port() -> int:
    """A port free for both UDP and TCP on 127.0.0.1, below the kernel's ephemeral range: members
    open their streams from their own loopback address, and a port the kernel hands out for one of
    those connections must never be the one a member is about to listen on. Never the same port
    twice in one test run."""
    floor = _ephemeral_floor()
    while True:
        port = random.randrange(max(1024, floor - 12000), floor)
        if port in _HANDED_OUT:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp, \
                socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
            try:
                udp.bind(("127.0.0.1", port))
                tcp.bind(("127.0.0.1", port))
            except OSError:
                continue
        _HANDED_OUT.add(port)
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


BUSYBOX_IMAGE = "nodeorch-test/busybox:local"


def docker_client() -> Any:
    """The local Docker engine, or a failure that says how to get one."""
    import docker

    try:
        client = docker.from_env(timeout=30)
        client.ping()
    except docker.errors.DockerException as error:
        pytest.fail(f"the Docker engine is not reachable ({error}); `make test` as root installs docker.io and "
                    "starts dockerd --storage-driver=vfs")
    return client


@pytest.fixture(scope="session")
def busybox_image() -> str:
    """A local image built with `docker import` from a busybox root filesystem (nothing is pulled)."""
    import io
    import shutil
    import tarfile

    import docker

    client = docker_client()
    try:
        client.images.get(BUSYBOX_IMAGE)
        return BUSYBOX_IMAGE
    except docker.errors.ImageNotFound:
        pass
    busybox = shutil.which("busybox")
    if busybox is None:
        pytest.fail("busybox is missing: apt-get install busybox-static (make test installs it as root)")
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        tar.add(busybox, arcname="bin/busybox")
        for applet in ("sh", "sleep", "httpd", "echo", "cat", "ls", "true", "false", "mkdir", "wget"):
            link = tarfile.TarInfo(f"bin/{applet}")
            link.type, link.linkname = tarfile.SYMTYPE, "busybox"
            tar.addfile(link)
        for folder in ("tmp", "www"):
            entry = tarfile.TarInfo(folder)
            entry.type, entry.mode = tarfile.DIRTYPE, 0o1777
            tar.addfile(entry)
    repository, tag = BUSYBOX_IMAGE.split(":")
    client.api.import_image_from_data(buffer.getvalue(), repository=repository, tag=tag)
    return BUSYBOX_IMAGE
