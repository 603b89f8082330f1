"""Rolling updates across three real agents with process services behind an HTTP health check:
batches in slot order, a failed batch pausing the update cluster-wide until `nodeorch service
resume`, a rollback, and an agent killed mid-update."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from gossip._process import wait_until

from .agents import AgentProcess, agent_trio, cli, instance_pids
from .conftest import free_port
from .test_services_process import get

PORT = free_port()

SERVER = """
import http.server, os, sys
needs = os.environ.get("NEEDS_FILE", "")
if needs and not os.path.exists(needs):
    print("missing", needs, flush=True)
    sys.exit(3)
server = http.server.ThreadingHTTPServer((os.environ["NODEORCH_NODE_ADDR"], int(sys.argv[1])),
                                         http.server.SimpleHTTPRequestHandler)
server.serve_forever()
"""


def desired(revision: int, version: str, *, needs: str = "", failure_action: str = "pause",
            monitor: str = "2s", server: Path) -> str:
    return f"""
revision = {revision}

[[service]]
name = "web"
command = ["{sys.executable}", "{server}", "{PORT}"]
scale = 3
restart_delay = "500ms"
restart_max_delay = "2s"
stop_grace = "2s"
env = {{ VERSION = "{version}", NEEDS_FILE = "{needs}" }}
[service.health]
kind = "http"
port = {PORT}
path = "/"
interval = "500ms"
timeout = "1s"
healthy_threshold = 1
unhealthy_threshold = 2
[service.update]
parallelism = 1
delay = "1s"
monitor = "{monitor}"
failure_action = "{failure_action}"
"""


async def web(agent: AgentProcess) -> dict[str, Any]:
    return next(s for s in await get(agent, "/v1/services") if s["name"] == "web")


def ready_slots(service: dict[str, Any], digest: str) -> set[str]:
    return {i["slot"] for i in service["instances"]
            if i["digest"] == digest and i["state"] == "running" and i["health"] == "healthy"}


async def all_ready(agent: AgentProcess) -> dict[str, Any] | None:
    service = await web(agent)
    done = service.get("update", {}).get("state") == "complete"
    return service if done and ready_slots(service, service["digest"]) == {"0", "1", "2"} else None


@pytest.fixture
def server(tmp_path: Path) -> Path:
    path = tmp_path / "server.py"
    path.write_text(SERVER)
    return path


@pytest.fixture
async def trio(tmp_path: Path, server: Path) -> AsyncIterator[list[AgentProcess]]:
    async with agent_trio(tmp_path, desired(1, "v1", server=server)) as agents:
        await wait_until(lambda: all_ready(agents[0]), 60)
        yield agents


class Watch:
    """Polls /v1/services while an update runs: the order in which slots first ran the new spec,
    the fewest healthy instances seen, and any slot seen running twice."""

    def __init__(self, agent: AgentProcess, digest: str) -> None:
        self.agent, self.digest = agent, digest
        self.order: list[str] = []
        self.fewest_healthy = 3
        self.doubled: list[dict[str, Any]] = []

    async def run(self) -> None:
        while True:
            service = await web(self.agent)
            healthy = [i for i in service["instances"] if i["state"] == "running" and i["health"] == "healthy"]
            self.fewest_healthy = min(self.fewest_healthy, len(healthy))
            running = [i["slot"] for i in service["instances"] if i["state"] == "running"]
            if len(running) != len(set(running)):
                self.doubled.append(service)
            for slot in sorted({i["slot"] for i in service["instances"] if i["digest"] == self.digest}):
                if slot not in self.order:
                    self.order.append(slot)
            await asyncio.sleep(0.1)


async def watching(agent: AgentProcess, digest: str, until: Any, timeout: float) -> tuple[Watch, Any]:
    watch = Watch(agent, digest)
    task = asyncio.create_task(watch.run())
    try:
        return watch, await wait_until(until, timeout)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def write_desired(tmp_path: Path, text: str, agent: AgentProcess) -> str:
    """Replace desired.toml; returns the service's new spec digest once the agent has read it."""
    old = (await web(agent))["digest"]
    temp = tmp_path / "desired.toml.new"
    temp.write_text(text)
    temp.replace(tmp_path / "desired.toml")

    async def changed() -> str | None:
        digest: str = (await web(agent))["digest"]
        return digest if digest != old else None

    return str(await wait_until(changed, 10))


async def test_an_update_replaces_one_slot_at_a_time_and_a_failure_pauses_it_until_resumed(
    trio: list[AgentProcess], tmp_path: Path, server: Path
) -> None:
    a = trio[0]
    v2 = await write_desired(tmp_path, desired(2, "v2", server=server), a)
    watch, _ = await watching(a, v2, lambda: all_ready(a), 90)
    assert watch.order == ["0", "1", "2"], "slot order, one batch after the other"
    assert watch.fewest_healthy >= 2, "parallelism 1: never more than one instance out at once"
    assert watch.doubled == [], "stop-first: never two instances of a slot"

    # v3 needs a file that is not there: its first instance exits, and the update pauses everywhere.
    flag = tmp_path / "ready-for-v3"
    v3 = await write_desired(tmp_path, desired(3, "v3", needs=str(flag), server=server), a)

    async def paused_everywhere() -> list[dict[str, Any]] | None:
        updates = [(await web(agent)).get("update", {}) for agent in trio]
        return updates if all(u.get("state") == "paused" for u in updates) else None

    updates = await wait_until(paused_everywhere, 30)
    assert all("exited" in u["reason"] and u["target"] == v3 for u in updates), updates
    await asyncio.sleep(6)  # more than monitor + delay: no further batch starts
    service = await web(a)
    assert ready_slots(service, v2) == {"1", "2"}, "the other slots still run v2, healthy"
    table = cli("services", "--api", a.api)
    assert table.returncode == 0 and "paused 0/3" in table.stdout, table.stdout

    # The operator fixes what v3 needs and resumes, on another node: the update runs to its end.
    flag.write_text("")
    resumed = cli("service", "resume", "web", "--api", trio[2].api)
    assert resumed.returncode == 0 and "resumed (was paused)" in resumed.stdout, resumed.stderr
    watch, _ = await watching(a, v3, lambda: all_ready(a), 90)
    assert watch.fewest_healthy >= 2 and watch.doubled == []
    again = cli("service", "resume", "web", "--api", a.api)
    assert again.returncode == 1 and "nothing to resume" in again.stderr, "a finished update has nothing to resume"


async def test_with_rollback_a_failing_update_goes_back_to_the_previous_spec(
    trio: list[AgentProcess], tmp_path: Path, server: Path
) -> None:
    a = trio[0]
    v1 = (await web(a))["digest"]
    await write_desired(tmp_path, desired(2, "v2", needs=str(tmp_path / "never"), failure_action="rollback",
                                          server=server), a)

    async def rolled_back() -> dict[str, Any] | None:
        service = await web(a)
        update = service.get("update", {})
        return service if update.get("state") == "rolled_back" and ready_slots(service, v1) == {"0", "1", "2"} \
            else None

    service = await wait_until(rolled_back, 60)
    assert service["update"]["target"] == v1 and "exited" in service["update"]["reason"]
    assert all(i["digest"] == v1 for i in service["instances"]), "every instance back on the previous spec"


async def test_an_agent_killed_mid_update_neither_stalls_nor_duplicates_it(
    trio: list[AgentProcess], tmp_path: Path, server: Path
) -> None:
    a = trio[0]
    v2 = await write_desired(tmp_path, desired(2, "v2", monitor="3s", server=server), a)

    async def slot_1_being_replaced() -> str | None:
        service = await web(a)
        return next((i["node"] for i in service["instances"] if i["slot"] == "1" and i["digest"] == v2), None)

    owner_name = await wait_until(slot_1_being_replaced, 60)
    owner = next(agent for agent in trio if agent.name == owner_name)
    watcher = next(agent for agent in trio if agent is not owner)
    owner.kill()  # its instance keeps running, as on a host whose agent crashed
    await asyncio.sleep(1)
    owner.start()
    watch, _ = await watching(watcher, v2, lambda: all_ready(watcher), 90)
    assert watch.doubled == [], "no slot ran twice"
    running = {name: sorted(instance_pids(tmp_path, name)) for name in ("node-1", "node-2", "node-3")}
    assert sorted(len(slots) for slots in running.values()) == [1, 1, 1], running
    for pid in instance_pids(tmp_path, owner.name).values():
        os.kill(pid, 0)  # the restarted agent's instance runs (adopted or replaced, once)
