"""Health checks across three agents: a sick instance is replaced once every observer agrees; an
observer cut off from a healthy instance (iptables) cannot get it killed."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from gossip._process import wait_until

from .agents import AgentProcess, agent_trio
from .conftest import free_port
from .test_services_process import get, pids

SERVER = """
import http.server, os, sys
flag = sys.argv[1]
class Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(503 if os.path.exists(flag) else 200)
        self.end_headers()
    def log_message(self, *args):
        pass
http.server.HTTPServer((os.environ["NODEORCH_NODE_ADDR"], int(sys.argv[2])), Health).serve_forever()
"""


def desired(folder: Path, port: int) -> str:
    return f"""
revision = 4

[[service]]
name = "web"
command = ["{sys.executable}", "-c", '''{SERVER}''', "{folder}/sick-${{NODEORCH_NODE}}", "{port}"]
scale = 2
stop_grace = "1s"
restart_delay = "1s"

[service.health]
kind = "http"
port = {port}
path = "/"
interval = "300ms"
timeout = "1s"
healthy_threshold = 1
unhealthy_threshold = 3
initializing_timeout = "20s"
strategy = "recreate"
"""


@pytest.fixture
async def trio(tmp_path: Path) -> AsyncIterator[tuple[list[AgentProcess], int]]:
    port = free_port()
    async with agent_trio(tmp_path, desired(tmp_path, port)) as agents:
        yield agents, port


async def healthy_pair(agent: AgentProcess) -> dict[str, Any] | None:
    services = await get(agent, "/v1/services")
    web = next((s for s in services if s["name"] == "web"), None)
    instances = [i for i in (web or {}).get("instances", []) if i["state"] == "running" and i["health"] == "healthy"]
    return {i["node"]: i for i in instances} if len(instances) == 2 else None


async def test_a_sick_instance_is_replaced_once_all_observers_agree(
    trio: tuple[list[AgentProcess], int], tmp_path: Path
) -> None:
    agents, _ = trio
    pair = await wait_until(lambda: healthy_pair(agents[0]), 40)
    sick_node, well_node = sorted(pair)
    before = {name: pids(tmp_path, name) for name in pair}
    flag = tmp_path / f"sick-{sick_node}"
    flag.touch()

    def replaced() -> bool:
        return pids(tmp_path, sick_node) != before[sick_node] and bool(pids(tmp_path, sick_node))

    await wait_until(replaced, 30)
    flag.unlink()
    await wait_until(lambda: healthy_pair(agents[0]), 30)
    assert pids(tmp_path, well_node) == before[well_node], "the healthy instance was left alone"
    document = await get(next(a for a in agents if a.name == sick_node), f"/v1/nodes/{sick_node}")
    assert document["instances"][0]["restarts"] >= 1


@contextlib.contextmanager
def cut(observer_ip: str, instance_ip: str, port: int) -> Iterator[None]:
    if os.geteuid() != 0 or shutil.which("iptables") is None:
        pytest.fail("this test cuts a link with iptables: run it as root with iptables installed")
    rule = ["INPUT", "-i", "lo", "-p", "tcp", "-s", observer_ip, "-d", instance_ip, "--dport", str(port), "-j", "DROP"]
    subprocess.run(["iptables", "-I", *rule], check=True)
    try:
        yield
    finally:
        subprocess.run(["iptables", "-D", *rule], check=False)


async def test_an_observer_cut_off_from_a_healthy_instance_cannot_get_it_replaced(
    trio: tuple[list[AgentProcess], int], tmp_path: Path
) -> None:
    agents, port = trio
    pair = await wait_until(lambda: healthy_pair(agents[0]), 40)
    owner_name = sorted(pair)[0]
    owner = next(a for a in agents if a.name == owner_name)
    observer = next(a for a in agents if a.name != owner_name)
    before = pids(tmp_path, owner_name)
    with cut(observer.ip, owner.ip, port):

        async def observer_says_unhealthy() -> bool:
            document = await get(observer, f"/v1/nodes/{observer.name}")
            return any(v["node"] == owner_name and v["status"] == "unhealthy" for v in document["health"])

        await wait_until(observer_says_unhealthy, 20)
        # The verdict is out: the owner makes several passes a second and must not act on it.
        for _ in range(10):
            assert pids(tmp_path, owner_name) == before, "a healthy instance was replaced"
            await asyncio.sleep(0.5)
    assert pids(tmp_path, owner_name) == before


async def test_drain_never_lowers_the_number_of_healthy_instances(
    trio: tuple[list[AgentProcess], int], tmp_path: Path
) -> None:
    agents, _ = trio
    pair = await wait_until(lambda: healthy_pair(agents[0]), 40)
    drained = next(a for a in agents if a.name == sorted(pair)[0])
    assert drained.cli_json("drain")["draining"] is True
    fewest = 2
    for _ in range(400):
        services = await get(agents[0], "/v1/services")
        web = next(s for s in services if s["name"] == "web")
        healthy = [i for i in web["instances"] if i["state"] == "running" and i["health"] == "healthy"]
        fewest = min(fewest, len(healthy))
        if len(healthy) == 2 and drained.name not in {i["node"] for i in healthy} and not pids(tmp_path, drained.name):
            break
        await asyncio.sleep(0.1)
    else:
        raise AssertionError(f"the drain did not complete: {web}")
    assert fewest == 2, "never fewer healthy instances than desired during the move"
