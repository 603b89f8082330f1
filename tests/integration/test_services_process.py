"""Process services across three agents on loopback: placement, failover, adoption, crash restarts."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gossip._process import wait_until

from .agents import AgentProcess, agent_trio, instance_pids

SERVICE = f"""
revision = 2

[[service]]
name = "web"
driver = "process"
command = ["{sys.executable}", "-m", "http.server", "0", "--bind", "${{NODEORCH_NODE_ADDR}}"]
scale = 2
restart_delay = "1s"
restart_max_delay = "4s"
stop_grace = "2s"
"""


async def get(agent: AgentProcess, path: str) -> Any:
    async with aiohttp.ClientSession() as session, session.get(f"http://{agent.api}{path}") as response:
        return json.loads(await response.text())


async def web_instances(agent: AgentProcess) -> list[dict[str, Any]]:
    services = await get(agent, "/v1/services")
    return next((s["instances"] for s in services if s["name"] == "web"), [])


def running_nodes(instances: list[dict[str, Any]]) -> list[str]:
    return sorted(i["node"] for i in instances if i["state"] == "running")


pids = instance_pids


@pytest.fixture
def desired() -> str:
    return SERVICE


@pytest.fixture
async def trio(tmp_path: Path, desired: str) -> AsyncIterator[list[AgentProcess]]:
    async with agent_trio(tmp_path, desired) as agents:
        yield agents


async def test_two_instances_on_distinct_nodes_survive_a_node_loss_without_duplicates(
    trio: list[AgentProcess], tmp_path: Path
) -> None:
    a = trio[0]

    async def two_on_distinct_nodes() -> list[str] | None:
        nodes = running_nodes(await web_instances(a))
        return nodes if len(nodes) == 2 and len(set(nodes)) == 2 else None

    placed = await wait_until(two_on_distinct_nodes, 30)
    victim = next(agent for agent in trio if agent.name == placed[-1])
    survivors = [agent for agent in trio if agent is not victim]
    victim.kill()
    for pid in pids(tmp_path, victim.name).values():
        os.killpg(pid, signal.SIGKILL)  # the host went down with its instance

    async def recreated_on_the_third() -> bool:
        nodes = running_nodes(await web_instances(survivors[0]))
        return sorted(nodes) == sorted(s.name for s in survivors)

    await wait_until(recreated_on_the_third, 40)
    victim.start()
    await victim.wait_ready()
    await wait_until(lambda: _quiet(trio, tmp_path), 30)
    nodes = running_nodes(await web_instances(a))
    assert len(nodes) == 2 and len(set(nodes)) == 2, "still exactly two, no duplicates"
    total = sum(len(pids(tmp_path, agent.name)) for agent in trio)
    assert total == 2, "exactly two processes exist across the three hosts"


async def _quiet(agents: list[AgentProcess], folder: Path) -> bool:
    """Every agent reports the same two running instances (the restarted one has settled)."""
    views = [running_nodes(await web_instances(agent)) for agent in agents]
    return all(v == views[0] for v in views) and len(views[0]) == 2


async def test_a_killed_instance_restarts_in_place_with_backoff(trio: list[AgentProcess], tmp_path: Path) -> None:
    a = trio[0]

    async def placed() -> list[str] | None:
        nodes = running_nodes(await web_instances(a))
        return nodes if len(nodes) == 2 else None

    host = (await wait_until(placed, 30))[0]
    agent = next(x for x in trio if x.name == host)
    (slot, pid), = pids(tmp_path, host).items()
    restarts_seen = []
    for _ in range(3):
        os.killpg(pid, signal.SIGKILL)

        def restarted(old: int = pid) -> int | None:
            current = pids(tmp_path, host).get(slot)
            return current if current and current != old else None

        killed = time.monotonic()
        pid = await wait_until(restarted, 30, interval=0.05)
        restarts_seen.append(time.monotonic() - killed)
    async def published() -> dict[str, Any] | None:
        # The pid file changes when the driver starts the process; the document follows at the
        # end of that reconcile pass.
        document = await get(agent, f"/v1/nodes/{host}")
        (record,) = [i for i in document["instances"] if i["service"] == "web"]
        return record if record["ref"] == str(pid) else None

    record = await wait_until(published, 10)
    assert record["restarts"] >= 3 and record["state"] in ("running", "starting")
    assert restarts_seen[-1] > restarts_seen[0], f"the delay grows: {restarts_seen}"
    nodes = running_nodes(await web_instances(a))
    assert host in nodes, "restarted where it was, not moved"


async def test_drain_moves_instances_away_start_first(trio: list[AgentProcess], tmp_path: Path) -> None:
    a = trio[0]

    async def placed() -> list[str] | None:
        nodes = running_nodes(await web_instances(a))
        return nodes if len(nodes) == 2 and len(set(nodes)) == 2 else None

    before = await wait_until(placed, 30)
    drained = next(agent for agent in trio if agent.name == before[0])
    assert drained.cli_json("drain")["draining"] is True
    fewest = 2
    deadline = time.monotonic() + 40
    while time.monotonic() < deadline:
        nodes = running_nodes(await web_instances(a))
        fewest = min(fewest, len(nodes))
        if len(nodes) == 2 and drained.name not in nodes:
            break
        await asyncio.sleep(0.05)
    nodes = running_nodes(await web_instances(a))
    assert drained.name not in nodes and len(nodes) == 2, nodes
    assert fewest == 2, "start-first: never fewer running instances than desired during the move"
    assert pids(tmp_path, drained.name) == {}, "the drained node runs nothing"


GLOBAL = f"""
revision = 3

[[service]]
name = "everywhere"
command = ["{sys.executable}", "-c", "import time; time.sleep(600)"]
global = true

[[service]]
name = "only-node-2"
command = ["{sys.executable}", "-c", "import time; time.sleep(600)"]
global = true
node_selector = {{ zone = "z-node-2" }}
"""


@pytest.mark.parametrize("desired", [GLOBAL])
async def test_global_services_run_once_on_each_matching_node(trio: list[AgentProcess], tmp_path: Path) -> None:
    a = trio[0]

    async def settled() -> dict[str, list[str]] | None:
        services = {s["name"]: running_nodes(s["instances"]) for s in await get(a, "/v1/services")}
        ok = services.get("everywhere") == ["node-1", "node-2", "node-3"] and services.get("only-node-2") == ["node-2"]
        return services if ok else None

    await wait_until(settled, 30)
    counts = {agent.name: sorted(pids(tmp_path, agent.name)) for agent in trio}
    assert counts == {
        "node-1": ["everywhere-node-1"],
        "node-2": ["everywhere-node-2", "only-node-2-node-2"],
        "node-3": ["everywhere-node-3"],
    }
