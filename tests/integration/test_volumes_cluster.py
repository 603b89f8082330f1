"""Volumes across three real agents, as far as the cluster side goes today: every node derives
the same replica placement, `nodeorch volumes` and /v1/volumes show it, and a service that uses a
volume is held rather than started without its data."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from gossip._process import wait_until

from .agents import AgentProcess, agent_trio, cli, instance_pids

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
