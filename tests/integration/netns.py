"""Test hosts in network namespaces joined by a bridge, created and removed by the tests (root).

Each host gets a veth pair into a hub namespace that holds the bridge, an address on a private
test subnet that exists only inside these namespaces, and its own loopback."""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import Sequence

import pytest

SUBNET = "10.213.{}.{}"


def require_root_and_ip() -> None:
    if os.geteuid() != 0:
        pytest.fail("network-namespace tests need root (ip netns); run make test as root")
    if shutil.which("ip") is None:
        pytest.fail("the `ip` tool is missing: apt-get install iproute2 (make test installs it as root)")


def run(*args: str) -> None:
    result = subprocess.run(args, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(args)}: {result.stderr.strip()}")


class Bridge:
    """`with Bridge(3) as hosts:` -> namespace names; host i has address SUBNET.format(net, i + 2)."""

    def __init__(self, count: int, net: int = 1) -> None:
        self.tag = uuid.uuid4().hex[:6]
        self.hub = f"no-hub-{self.tag}"
        self.hosts = [f"no-h{i}-{self.tag}" for i in range(count)]
        self.net = net

    def address(self, index: int) -> str:
        return SUBNET.format(self.net, index + 2)

    def __enter__(self) -> list[str]:
        require_root_and_ip()
        try:
            run("ip", "netns", "add", self.hub)
            run("ip", "-n", self.hub, "link", "add", "br0", "type", "bridge")
            run("ip", "-n", self.hub, "link", "set", "br0", "up")
            for i, host in enumerate(self.hosts):
                run("ip", "netns", "add", host)
                outer, inner = f"v{i}-{self.tag}", f"e{i}-{self.tag}"
                run("ip", "link", "add", outer, "type", "veth", "peer", "name", inner)
                run("ip", "link", "set", outer, "netns", self.hub)
                run("ip", "link", "set", inner, "netns", host)
                run("ip", "-n", self.hub, "link", "set", outer, "master", "br0")
                run("ip", "-n", self.hub, "link", "set", outer, "up")
                run("ip", "-n", host, "link", "set", inner, "name", "eth0")
                run("ip", "-n", host, "addr", "add", f"{self.address(i)}/24", "dev", "eth0")
                run("ip", "-n", host, "link", "set", "eth0", "up", "multicast", "on")
                run("ip", "-n", host, "link", "set", "lo", "up")
                run("ip", "-n", host, "route", "add", "224.0.0.0/4", "dev", "eth0")
        except Exception:
            self.__exit__()
            raise
        return self.hosts

    def __exit__(self, *_: object) -> None:
        for ns in [*self.hosts, self.hub]:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)


def in_netns(ns: str, argv: Sequence[str]) -> list[str]:
    return ["ip", "netns", "exec", ns, *argv]
