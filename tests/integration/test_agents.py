"""Agents as real processes on loopback, seen through the CLI and the status endpoint."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from gossip import GossipNode, Keyring, lan
from gossip._process import wait_until
from nodeorch.spec.secret_files import load_keyring

from .agents import AgentProcess, cli, states
from .conftest import free_port


async def get(agent: AgentProcess, path: str) -> Any:
    async with aiohttp.ClientSession() as session, session.get(f"http://{agent.api}{path}") as response:
        text = await response.text()
        return json.loads(text) if response.content_type == "application/json" else text


async def alive_everywhere(agents: list[AgentProcess], count: int) -> bool:
    for agent in agents:
        try:
            members = await get(agent, "/v1/members")
        except aiohttp.ClientError:
            return False
        if sum(1 for m in members if m["state"] == "alive") != count:
            return False
    return True


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    return tmp_path


@pytest.fixture
async def trio(folder: Path) -> AsyncIterator[list[AgentProcess]]:
    first = AgentProcess(folder, "node-1", "127.0.0.2", [])
    agents = [first] + [AgentProcess(folder, f"node-{i}", f"127.0.0.{i + 1}", [first.gossip]) for i in (2, 3)]
    try:
        for agent in agents:
            agent.start()
        for agent in agents:
            await agent.wait_ready()
        await wait_until(lambda: alive_everywhere(agents, 3), 20)
        yield agents
    finally:
        for agent in agents:
            agent.kill()


async def test_three_agents_converge_and_see_death_return_and_leave(trio: list[AgentProcess]) -> None:
    for agent in trio:
        assert states(agent) == {"node-1": "alive", "node-2": "alive", "node-3": "alive"}

    victim = trio[2]
    victim.kill()
    killed = time.time()

    async def seen_dead() -> bool:
        for agent in trio[:2]:
            view = {m["name"]: m["state"] for m in await get(agent, "/v1/members")}
            if view.get("node-3") != "dead":
                return False
        return True

    await wait_until(seen_dead, 30)
    member = next(m for m in trio[0].cli_json("members") if m["name"] == "node-3")
    assert member["state"] == "dead" and killed <= member["state_since"] <= time.time()

    victim.start()
    await victim.wait_ready()
    await wait_until(lambda: alive_everywhere(trio, 3), 20)
    assert states(trio[0])["node-3"] == "alive"

    assert trio[1].terminate() == 0, "SIGTERM exits cleanly after leaving"
    await wait_until(lambda: alive_everywhere([trio[0], trio[2]], 2), 10)
    assert states(trio[0])["node-2"] == "left"


async def test_every_endpoint_answers_in_its_documented_shape(trio: list[AgentProcess]) -> None:
    a, b, _ = trio
    health = await get(a, "/v1/health")
    assert health == {"status": "ok"}

    status = await get(a, "/v1/status")
    assert set(status) >= {"node", "cluster", "version", "uptime", "members", "desired", "digest_differs", "jobs"}
    assert status["node"] == "node-1" and status["cluster"] == "test"
    assert status["members"] == {"alive": 3, "suspect": 0, "dead": 0, "left": 0}
    assert status["desired"]["revision"] == 1 and status["digest_differs"] == []

    members = await get(a, "/v1/members")
    assert {tuple(sorted(m)) for m in members} == {
        ("addr", "incarnation", "labels", "name", "port", "state", "state_since")
    }
    assert next(m for m in members if m["name"] == "node-2")["labels"] == {"zone": "z-node-2"}

    await wait_until(lambda: get(a, "/v1/nodes/node-3"), 10)
    document = await get(a, "/v1/nodes/node-3")
    assert document["name"] == "node-3" and document["stale"] is False
    assert document["desired"]["revision"] == 1 and document["labels"] == {"zone": "z-node-3"}
    assert {"version", "boot_id", "draining", "instances", "replicas", "health"} <= set(document)
    missing = await get(a, "/v1/nodes/nobody")
    assert "no document" in missing["error"]

    # Drain on b reaches a's copy of b's document.
    drained = b.cli_json("drain")
    assert drained == {"node": "node-2", "draining": True}

    async def b_draining_seen_by_a() -> bool:
        return bool((await get(a, "/v1/nodes/node-2")).get("draining"))

    await wait_until(b_draining_seen_by_a, 10)
    assert b.cli_json("undrain")["draining"] is False

    text = await get(a, "/metrics")
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert {"nodeorch_members", "nodeorch_gossip_bytes", "nodeorch_gossip_probes", "nodeorch_document_version",
            "nodeorch_up"} <= set(families)
    alive = [s for s in families["nodeorch_members"].samples if s.labels == {"state": "alive"}]
    assert alive[0].value == 3
    assert {s.labels["node"] for s in families["nodeorch_document_version"].samples} == {"node-1", "node-2", "node-3"}


async def test_the_event_stream_resumes_after_a_seq(trio: list[AgentProcess]) -> None:
    a = trio[0]
    async with aiohttp.ClientSession() as session:
        async with session.get(f"http://{a.api}/v1/events?since=0&follow=0") as response:
            assert response.content_type == "application/x-ndjson"
            events = [json.loads(line) for line in (await response.text()).splitlines() if line.strip()]
        assert events[0]["seq"] == 1 and [e["seq"] for e in events] == sorted(e["seq"] for e in events)
        assert {"member.join", "document.updated"} <= {e["kind"] for e in events}
        last = events[-1]["seq"]
        async with session.get(f"http://{a.api}/v1/events?since={last}") as stream:
            trio[1].cli_json("drain")
            line = b""
            while not line.strip():
                line = await asyncio.wait_for(stream.content.readline(), 10)
            event = json.loads(line)
            assert event["seq"] > last
        async with session.get(f"http://{a.api}/v1/events?since=999999999") as future:
            trio[1].cli_json("undrain")
            line = b""
            while not line.strip():
                line = await asyncio.wait_for(future.content.readline(), 10)
            assert json.loads(line)["seq"] > event["seq"], "a since beyond the end means from now on"
        async with session.get(f"http://{a.api}/v1/events?since=banana") as bad:
            assert bad.status == 400 and "since" in (await bad.json())["error"]
    follow = cli("events", "--api", a.api, "--since", str(last))
    assert follow.returncode == 0 and "document.updated" in follow.stdout


async def test_every_cli_command_works_against_an_agent_and_fails_clearly_without_one(
    trio: list[AgentProcess],
) -> None:
    a = trio[0]
    for command in ("status", "members", "nodes"):
        result = cli(command, "--api", a.api)
        assert result.returncode == 0, result.stderr
    assert "node-2" in cli("members", "--api", a.api).stdout
    assert json.loads(cli("nodes", "node-2", "--api", a.api).stdout)["name"] == "node-2"
    nobody = f"127.0.0.1:{free_port()}"
    for command in ("status", "members", "nodes", "events", "drain", "undrain"):
        result = cli(command, "--api", nobody)
        assert result.returncode == 3, command
        assert f"no agent answered at {nobody}" in result.stderr and "--api" in result.stderr
    assert cli("nodes", "nobody", "--api", a.api).returncode == 1, "the agent answered with a problem"
    assert cli("members", "--bogus").returncode == 2


async def test_garbage_and_oversized_http_requests_are_refused_and_harmless(trio: list[AgentProcess]) -> None:
    a = trio[0]
    host, port = a.api.rsplit(":", 1)
    for garbage in (b"\x00\xff" * 100 + b"\r\n\r\n", b"GET / HTTP/9.9\r\n\r\n", b"GET " + b"A" * 70000 + b"\r\n\r\n"):
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(garbage)
        await writer.drain()
        reply = await asyncio.wait_for(reader.read(200), 5)
        assert reply.startswith(b"HTTP/1.") and b" 4" in reply[:13], reply[:60]
        writer.close()
    async with aiohttp.ClientSession() as session:
        async with session.post(f"http://{a.api}/v1/drain", data=b"x" * (1 << 20),
                                headers={"Content-Type": "application/json"}) as response:
            assert response.status == 413
        async with session.delete(f"http://{a.api}/v1/status") as response:
            assert response.status == 405
    assert (await get(a, "/v1/health")) == {"status": "ok"}
    assert (await get(a, "/v1/status"))["draining"] is False


async def test_an_oversized_or_forged_document_is_refused_by_receivers(
    trio: list[AgentProcess], folder: Path
) -> None:
    a = trio[0]
    keyring = Keyring(list(load_keyring(folder / "keyring").keys))
    async with GossipNode(lan(), name="intruder", bind=("127.0.0.9", free_port()), cluster="test",
                          keyring=keyring) as node:
        await node.join([a.gossip])
        await node.set_app_state(b"\x00" * (40 * 1024))

        async def refused() -> bool:
            text = await get(a, "/metrics")
            samples = {
                s.labels["reason"]: s.value
                for f in text_string_to_metric_families(text) if f.name == "nodeorch_documents_refused"
                for s in f.samples
            }
            return samples.get("invalid", 0) >= 1

        await wait_until(refused, 15)
    nodes = {d["name"] for d in await get(a, "/v1/nodes")}
    assert "intruder" not in nodes
    assert (await get(a, "/v1/health")) == {"status": "ok"}


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(15)
    yield sock, path
    sock.close()


async def test_systemd_readiness_watchdog_and_graceful_stop(
    folder: Path, notify_socket: tuple[socket.socket, str]
) -> None:
    sock, path = notify_socket
    agent = AgentProcess(folder, "unit", "127.0.0.2", [], env={"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "400000"})
    agent.start()
    try:
        loop = asyncio.get_running_loop()
        first = await loop.run_in_executor(None, sock.recv, 4096)
        assert first.startswith(b"READY=1"), first
        assert cli("status", "--api", agent.api).returncode == 0, "READY comes when the endpoint serves"
        keepalives = [await loop.run_in_executor(None, sock.recv, 4096) for _ in range(4)]
        assert all(k == b"WATCHDOG=1" for k in keepalives), keepalives
        started = time.monotonic()
        assert agent.terminate() == 0
        assert time.monotonic() - started < 10, "SIGTERM leaves within a bounded time"
        rest = []
        sock.settimeout(0.5)
        while True:
            try:
                rest.append(await loop.run_in_executor(None, sock.recv, 4096))
            except TimeoutError:
                break
        assert b"STOPPING=1" in rest
    finally:
        agent.kill()


def test_the_unit_file_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    import shutil
    import subprocess
    import sys

    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.fail("systemd-analyze is missing: apt-get install systemd (make test installs it as root)")
    unit = (Path(__file__).parents[2] / "systemd" / "nodeorch.service").read_text()
    installed = Path(sys.executable).with_name("nodeorch")
    assert "/usr/local/bin/nodeorch" in unit
    (tmp_path / "nodeorch.service").write_text(unit.replace("/usr/local/bin/nodeorch", str(installed)))
    result = subprocess.run([tool, "verify", str(tmp_path / "nodeorch.service")], capture_output=True, text=True,
                            check=False)
    assert result.returncode == 0 and not result.stderr.strip(), result.stderr


def test_the_agent_refuses_bad_config_and_unsafe_keyrings_with_exit_2(folder: Path) -> None:
    agent = AgentProcess(folder, "picky", "127.0.0.2", [], extra="[bogus]\n")
    result = cli("agent", "--config", str(agent.config))
    assert result.returncode == 2 and "bogus: unknown key" in result.stderr
    wide = AgentProcess(folder, "wide", "127.0.0.2", [], extra="")
    text = wide.config.read_text().replace(f'bind = "{wide.gossip}"', 'bind = "0.0.0.0:7946"\nadvertise = "10.1.2.3"')
    wide.config.write_text(text.replace(f'keyring = "{folder / "keyring"}"', f'keyring = "{folder / "absent"}"'))
    result = cli("agent", "--config", str(wide.config))
    assert result.returncode == 2 and "no such keyring file" in result.stderr and "nodeorch keygen" in result.stderr
    fine = AgentProcess(folder, "keys", "127.0.0.2", [])
    (folder / "keyring").chmod(0o644)
    result = cli("agent", "--config", str(fine.config))
    assert result.returncode == 2 and "readable by others" in result.stderr


async def test_a_bad_desired_file_keeps_the_last_good_state_and_digests_are_compared(folder: Path) -> None:
    own = folder / "own-desired.toml"
    own.write_text("revision = 5\n")
    a = AgentProcess(folder, "node-1", "127.0.0.2", [])
    b = AgentProcess(folder, "node-2", "127.0.0.3", [a.gossip], desired=own)
    try:
        for agent in (a, b):
            agent.start()
        for agent in (a, b):
            await agent.wait_ready()

        async def b_differs() -> bool:
            return bool((await get(a, "/v1/status"))["digest_differs"] == ["node-2"])

        await wait_until(b_differs, 15)
        own.write_text("revision = 6\n[[service]]\nname = 7\n")

        async def refused() -> dict[str, Any] | None:
            status = await get(b, "/v1/status")
            return status if status["desired"]["error"] else None

        status = await wait_until(refused, 10)
        assert status["desired"]["revision"] == 5, "the last good desired state stays in force"
        assert "own-desired.toml" in status["desired"]["error"] and "service[0]" in status["desired"]["error"]
        events = cli("events", "--api", b.api).stdout
        assert "desired.error" in events
        own.write_text((folder / "desired.toml").read_text())
        assert b.proc is not None
        b.proc.send_signal(signal.SIGHUP)

        async def same_again() -> bool:
            status_a, status_b = await get(a, "/v1/status"), await get(b, "/v1/status")
            return bool(status_b["desired"]["error"] is None and status_a["digest_differs"] == [])

        await wait_until(same_again, 15)
    finally:
        a.kill()
        b.kill()
