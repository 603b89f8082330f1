"""Volumes across three real agents, as far as the cluster side goes today: every node derives
the same replica placement, `nodeorch volumes` and /v1/volumes show it, and a service that uses a
volume is held rather than started without its data."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from drivers.containers.process import process_start_ticks
from gossip._process import wait_until

from .agents import AgentProcess, agent_trio, cli, instance_pids
from .volumes import need

DESIRED = f"""
revision = 1

[[volume]]
name = "db"
size = "64MiB"
replicas = 2

[[service]]
name = "db"
command = ["{sys.executable}", "-c", "import time; time.sleep(3600)"]
volumes = [{{ volume = "db", path = "/data" }}]

[[service]]
name = "web"
command = ["{sys.executable}", "-c", "import time; time.sleep(3600)"]
"""


def volume(agent: AgentProcess) -> dict[str, Any]:
    entries: list[dict[str, Any]] = agent.cli_json("volumes")
    return next(v for v in entries if v["name"] == "db")


async def test_every_node_places_the_volume_alike_and_holds_its_service(tmp_path: Path) -> None:
    async with agent_trio(tmp_path, DESIRED, expect=3) as agents:
        async def placed_alike() -> list[str] | None:
            placements = {tuple(volume(agent)["placement"]) for agent in agents}
            (only,) = placements if len(placements) == 1 else (None,)
            return list(only) if only and len(only) == 2 else None

        placement = await wait_until(placed_alike, 30)
        db = volume(agents[0])
        assert db["state"] == "pending" and db["to_create"] == placement and db["size"] == 64 << 20
        assert agents[1].cli_json("volume", "db")["placement"] == placement

        async def web_runs() -> bool:
            return any("web-0" in instance_pids(tmp_path, agent.name) for agent in agents)

        await wait_until(web_runs, 30)
        services = {s["name"]: s for s in agents[2].cli_json("services")}
        assert "waiting for volume db" in services["db"]["held"] and services["db"]["instances"] == []
        assert not any("db-0" in instance_pids(tmp_path, agent.name) for agent in agents)
        table = cli("volumes", "--api", agents[0].api, env=agents[0].env)
        assert table.returncode == 0 and "pending" in table.stdout and "64MiB" in table.stdout
        missing = cli("volume", "nope", "--api", agents[0].api, env=agents[0].env)
        assert missing.returncode != 0 and "no volume 'nope'" in missing.stderr


def replica_server_pid(tmp_path: Path, agent: AgentProcess) -> int | None:
    record_file = tmp_path / agent.name / "data" / "volumes" / "replica-server.json"
    try:
        pid = int(json.loads(record_file.read_text())["pid"])
    except (OSError, ValueError, KeyError):
        return None
    return pid if process_start_ticks(pid) is not None else None


def all_replica_servers(tmp_path: Path, agents: list[AgentProcess]) -> list[int] | None:
    found = [replica_server_pid(tmp_path, agent) for agent in agents]
    return [pid for pid in found if pid is not None] if all(found) else None


def start_engine(tmp_path: Path, agents: list[AgentProcess], socket: Path) -> subprocess.Popen[bytes]:
    """An engine run by hand (until agents run them) on the three nodes' replica servers."""
    replicas = [arg for agent in agents for arg in ("--replica", f"{agent.ip}:7948")]
    return subprocess.Popen([sys.executable, "-m", "drivers.volumes", "engine", "--volume", "db", "--size", "64MiB",
                             *replicas, "--keyring", str(tmp_path / "keyring"), "--cluster", "test",
                             "--listen", f"unix:{socket}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def write_4m(socket: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([need("qemu-io"), "-f", "raw", f"nbd+unix:///db?socket={socket}", "-c",
                           "write -P 0x33 0 4M", "-c", "flush"], capture_output=True, text=True, check=False)


async def test_each_node_keeps_a_replica_server_and_reports_what_it_holds(tmp_path: Path) -> None:
    async with agent_trio(tmp_path, DESIRED, expect=3) as agents:
        pids = await wait_until(lambda: all_replica_servers(tmp_path, agents), 30)
        socket = tmp_path / "db.sock"
        engine = start_engine(tmp_path, agents, socket)
        try:
            await wait_until(socket.exists, 20)
            write = write_4m(socket)
            assert write.returncode == 0, write.stderr

            def reported() -> list[dict[str, Any]] | None:
                replicas: list[dict[str, Any]] = volume(agents[0])["replicas"]
                return replicas if len(replicas) == 3 and all(r["used"] >= 4 << 20 for r in replicas) else None

            replicas = await wait_until(reported, 30)
            assert {r["node"] for r in replicas} == {a.name for a in agents}
            assert all(r["mode"] == "detached" and r["epoch"] == 1 for r in replicas)
            assert volume(agents[0])["state"] == "detached"
        finally:
            engine.kill()
            engine.wait()

        # kill -9 of a replica server: its agent starts it again
        os.kill(pids[0], signal.SIGKILL)

        def restarted() -> int | None:
            pid = replica_server_pid(tmp_path, agents[0])
            return pid if pid not in (None, pids[0]) else None

        await wait_until(restarted, 30)
        # an agent restart adopts the running server instead of starting a second one
        agents[1].terminate()
        agents[1].start()
        await agents[1].wait_ready()
        await asyncio.sleep(2)
        assert replica_server_pid(tmp_path, agents[1]) == pids[1]
