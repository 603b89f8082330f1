"""Docker services across three agents sharing the real engine: placement, adoption after an agent
restart (no duplicate containers), replacement on a spec change, failover of a lost node."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from drivers.attach.fuse_loop import missing_tools
from gossip._process import wait_until

from .agents import AgentProcess, agent_trio
from .conftest import docker_client
from .test_services_process import get, pids, running_nodes

NAMES = ["dk-1", "dk-2", "dk-3"]


def desired(image: str, revision: int, mode: str) -> str:
    return f"""
revision = {revision}

[[service]]
name = "box"
driver = "docker"
image = "{image}"
command = ["sleep", "3600"]
env = {{ MODE = "{mode}" }}
scale = 2
stop_grace = "1s"
"""


def containers() -> dict[str, dict[str, Any]]:
    """Our containers on the engine: name -> {id, node, digest, status}."""
    found = {}
    for c in docker_client().api.containers(all=True, filters={"label": "io.nodeorch.service=box"}):
        labels = c["Labels"]
        if labels.get("io.nodeorch.node") in NAMES:
            found[c["Names"][0].lstrip("/")] = {"id": c["Id"], "node": labels["io.nodeorch.node"], "status": c["State"],
                                                "digest": labels["io.nodeorch.digest"]}
    return found


def running_containers() -> dict[str, dict[str, Any]]:
    return {k: v for k, v in containers().items() if v["status"] == "running"}


@pytest.fixture
async def trio(tmp_path: Path, busybox_image: str) -> AsyncIterator[list[AgentProcess]]:
    try:
        async with agent_trio(tmp_path, desired(busybox_image, 1, "one"), NAMES, expect=3) as agents:
            yield agents
    finally:
        client = docker_client()
        for c in client.containers.list(all=True, filters={"label": "io.nodeorch.service=box"}):
            if c.labels.get("io.nodeorch.node") in NAMES:
                c.remove(force=True)


async def two_running_on_distinct_nodes(agent: AgentProcess) -> list[str] | None:
    services = await get(agent, "/v1/services")
    box: dict[str, Any] = next((s for s in services if s["name"] == "box"), {"instances": []})
    nodes = running_nodes(box["instances"])
    engine = running_containers()
    if len(nodes) == 2 and len(set(nodes)) == 2 and len(engine) == 2:
        return nodes
    return None


async def test_docker_services_adopt_replace_and_fail_over(
    trio: list[AgentProcess], tmp_path: Path, busybox_image: str
) -> None:
    a = trio[0]
    placed = await wait_until(lambda: two_running_on_distinct_nodes(a), 40)

    # An agent that crashes and comes straight back adopts its container instead of starting another.
    host = next(agent for agent in trio if agent.name == placed[0])
    before = {v["id"] for v in running_containers().values()}
    host.kill()
    host.start()
    await host.wait_ready()
    try:
        await wait_until(lambda: two_running_on_distinct_nodes(a), 30)
    except TimeoutError:
        views = {agent.name: await get(agent, "/v1/services") for agent in trio}
        raise AssertionError(f"after the restart of {host.name}: engine {containers()}, views {views}") from None
    assert {v["id"] for v in running_containers().values()} == before, "adopted: the same two containers"
    assert len(containers()) == 2, "no duplicate container was created"

    # A changed spec replaces every container.
    (tmp_path / "desired.toml").write_text(desired(busybox_image, 2, "two"))

    def replaced() -> bool:
        now = running_containers()
        return len(now) == 2 and not ({v["id"] for v in now.values()} & before)

    await wait_until(replaced, 40)
    digests = {v["digest"] for v in running_containers().values()}
    assert len(digests) == 1

    # A node lost with its container: the instance comes back on the third node.
    await wait_until(lambda: two_running_on_distinct_nodes(a), 30)
    victim_name = sorted(v["node"] for v in running_containers().values())[-1]
    victim = next(agent for agent in trio if agent.name == victim_name)
    survivors = [agent for agent in trio if agent is not victim]
    victim.kill()
    for name, info in containers().items():
        if info["node"] == victim_name:
            docker_client().containers.get(name).remove(force=True)

    async def on_survivors() -> bool:
        nodes = sorted(v["node"] for v in running_containers().values())
        return nodes == sorted(s.name for s in survivors)

    await wait_until(on_survivors, 40)


async def test_an_unreachable_engine_fails_docker_instances_only(tmp_path: Path) -> None:
    (tmp_path / "desired.toml").write_text(f"""
revision = 1

[[service]]
name = "boxed"
driver = "docker"
image = "nodeorch-test/busybox:local"
command = ["sleep", "3600"]

[[service]]
name = "plain"
command = ["{sys.executable}", "-c", "import time; time.sleep(600)"]
""")
    agent = AgentProcess(tmp_path, "no-engine", "127.0.0.2", [], env={"DOCKER_HOST": "unix:///nonexistent/docker.sock"})
    agent.start()
    try:
        await agent.wait_ready()

        async def settled() -> dict[str, Any] | None:
            services = {s["name"]: s for s in await get(agent, "/v1/services")}
            jobs = await get(agent, "/v1/jobs")
            failed = [j for j in jobs if j["target"] == "boxed/0" and j["state"] == "failed"]
            plain = running_nodes(services.get("plain", {"instances": []})["instances"])
            return {"failed": failed} if failed and plain == ["no-engine"] else None

        outcome = await wait_until(settled, 30)
        assert "the Docker engine is unreachable" in outcome["failed"][0]["error"]
        assert (await get(agent, "/v1/health")) == {"status": "ok"}
    finally:
        agent.kill()
        for pid in pids(tmp_path, "no-engine").values():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)


def web_desired(image: str, port: int) -> str:
    serve = f"mkdir -p /www && echo ok > /www/index.html && exec httpd -f -p $NODEORCH_NODE_ADDR:{port} -h /www"
    return f"""
revision = 1

[[service]]
name = "box"
driver = "docker"
image = "{image}"
command = ["sh", "-c", "{serve}"]
scale = 2
stop_grace = "1s"
restart_delay = "1s"

[service.health]
kind = "http"
port = {port}
path = "/index.html"
interval = "300ms"
timeout = "1s"
healthy_threshold = 1
unhealthy_threshold = 3
"""


async def healthy_boxes(agent: AgentProcess) -> dict[str, Any] | None:
    services = await get(agent, "/v1/services")
    box: dict[str, Any] = next((s for s in services if s["name"] == "box"), {"instances": []})
    healthy = [i for i in box["instances"] if i["state"] == "running" and i["health"] == "healthy"]
    return {i["node"]: i for i in healthy} if len(healthy) == 2 and len(running_containers()) == 2 else None


async def test_docker_crash_restart_health_replacement_and_drain(tmp_path: Path, busybox_image: str) -> None:
    from .conftest import free_port

    try:
        async with agent_trio(tmp_path, web_desired(busybox_image, free_port()), NAMES) as trio:
            a = trio[0]
            await wait_until(lambda: healthy_boxes(a), 40)
            await wait_until(lambda: len(containers()) == 2, 20)  # the cold start's duplicates are gone
            pair = await wait_until(lambda: healthy_boxes(a), 20)
            client = docker_client()

            # The container's process dies: restarted in place (a new container on the same node).
            node = sorted(pair)[0]
            (name, info), = [(n, i) for n, i in running_containers().items() if i["node"] == node]
            client.containers.get(name).kill()
            await wait_until(lambda: any(i["node"] == node and i["id"] != info["id"]
                                         for i in running_containers().values()), 30)
            await wait_until(lambda: healthy_boxes(a), 30)

            # Its probe fails (the page disappears): replaced once every observer agrees.
            (name, info), = [(n, i) for n, i in running_containers().items() if i["node"] == node]
            client.containers.get(name).exec_run(["/bin/busybox", "rm", "/www/index.html"])
            await wait_until(lambda: any(i["node"] == node and i["id"] != info["id"]
                                         for i in running_containers().values()), 30)
            await wait_until(lambda: healthy_boxes(a), 30)

            # Drain: the instances leave the node start-first, never fewer healthy than desired.
            drained = next(agent for agent in trio if agent.name == node)
            assert drained.cli_json("drain")["draining"] is True
            fewest = 2
            for _ in range(400):
                healthy = healthy_nodes(await get(a, "/v1/services"))
                fewest = min(fewest, len(healthy))
                if len(healthy) == 2 and node not in healthy:
                    break
                await asyncio.sleep(0.1)
            assert fewest == 2, "never fewer healthy instances than desired during the drain"
            await wait_until(lambda: node not in {i["node"] for i in running_containers().values()}, 10)
    finally:
        for c in docker_client().containers.list(all=True, filters={"label": "io.nodeorch.service=box"}):
            if c.labels.get("io.nodeorch.node") in NAMES:
                c.remove(force=True)


def healthy_nodes(services: list[dict[str, Any]]) -> list[str]:
    box: dict[str, Any] = next((s for s in services if s["name"] == "box"), {"instances": []})
    return [i["node"] for i in box["instances"] if i["state"] == "running" and i["health"] == "healthy"]


def volume_desired(image: str) -> str:
    return f"""
revision = 1

[[volume]]
name = "box-data"
size = "64MiB"

[[service]]
name = "box"
driver = "docker"
image = "{image}"
command = ["sh", "-c", "echo from-the-container > /data/note; sleep 3600"]
volumes = [{{ volume = "box-data", path = "/data" }}]
stop_grace = "1s"
"""


async def test_a_docker_service_writes_to_its_volume_through_the_bind_mount(
        tmp_path: Path, busybox_image: str) -> None:
    if missing := missing_tools():
        pytest.fail(f"volume services need {', '.join(missing)} (make test installs them as root)")
    async with agent_trio(tmp_path, volume_desired(busybox_image), NAMES, expect=3) as agents:
        try:
            def note() -> str | None:
                for agent in agents:
                    written = tmp_path / agent.name / "data" / "volumes" / "mounts" / "box-data" / "note"
                    with contextlib.suppress(OSError):
                        return written.read_text()
                return None

            assert await wait_until(note, 60) == "from-the-container\n", \
                "the container's /data is the volume mounted on the host"
            (container,) = running_containers().values()
            inspected = docker_client().api.inspect_container(container["id"])
            assert any(m["Destination"] == "/data" and m["Source"].endswith("/volumes/mounts/box-data")
                       for m in inspected["Mounts"])
            assert "NODEORCH_VOLUME_BOX_DATA=/data" in inspected["Config"]["Env"]
        finally:  # before the agents' teardown unmounts the volume under it
            for c in docker_client().containers.list(all=True, filters={"label": "io.nodeorch.service=box"}):
                if c.labels.get("io.nodeorch.node") in NAMES:
                    c.remove(force=True)
