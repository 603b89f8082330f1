"""Volumes across three real agents, as far as the cluster side goes today: every node derives the
same placement, the node of the slot that uses a volume runs its engine on the replica servers the
agents keep, /v1/volumes and `nodeorch volumes` show it, a dead node's volume is served elsewhere
with its data, and the service that uses it is held (attaching is the next step)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from gossip._process import wait_until
from nodeorch.reconcile.detached_process import read_record
from nodeorch.reconcile.engine_keeper import stop_engines
from nodeorch.reconcile.replica_server_keeper import stop_replica_server

from .agents import AgentProcess, agent_trio, cli, instance_pids
from .volumes import need

DESIRED = f"""
revision = 1

[[volume]]
name = "db"
size = "64MiB"
replica_timeout = "2s"

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


def replica_server_pid(tmp_path: Path, agent: AgentProcess) -> int | None:
    record = read_record(tmp_path / agent.name / "data" / "volumes" / "replica-server.json")
    return None if record is None else int(record["pid"])


def engine_socket(tmp_path: Path, agent: AgentProcess) -> Path:
    return tmp_path / agent.name / "data" / "volumes" / "engines" / "db.sock"


def qemu_io(socket: Path, *commands: str) -> subprocess.CompletedProcess[str]:
    args = [need("qemu-io"), "-f", "raw", f"nbd+unix:///db?socket={socket}"]
    for command in commands:
        args += ["-c", command]
    return subprocess.run(args, capture_output=True, text=True, check=False, timeout=60)


def event_kinds(agent: AgentProcess) -> list[str]:
    logged = cli("events", "--json", "--api", agent.api, env=agent.env)
    return [json.loads(line)["kind"] for line in logged.stdout.splitlines() if line.strip()]


def one_engine(tmp_path: Path, agents: list[AgentProcess]) -> bool:
    """Exactly one of these nodes runs an engine of the volume."""
    return sum(read_record(tmp_path / a.name / "data" / "volumes" / "engines" / "db.json") is not None
               for a in agents) == 1


async def serving(agents: list[AgentProcess], state: str, replicas: int) -> dict[str, Any]:
    """The volume as the first agent shows it, once every agent sees it in `state` with one engine
    and `replicas` replicas on live nodes."""
    async def agreed() -> dict[str, Any] | None:
        views = [volume(agent) for agent in agents]
        engines = {(v["engine"] or {}).get("node") for v in views}
        held = {sum(1 for r in v["replicas"] if not r["node_down"]) for v in views}
        ok = all(v["state"] == state for v in views) and len(engines) == 1 and None not in engines \
            and held == {replicas}
        return views[0] if ok else None

    found: dict[str, Any] = await wait_until(agreed, 60)
    return found


async def test_the_node_of_the_slot_runs_the_engine_and_a_dead_node_s_volume_moves_with_its_data(
        tmp_path: Path) -> None:
    async with agent_trio(tmp_path, DESIRED, expect=3) as agents:
        db = await serving(agents, "healthy", 3)
        assert sorted(db["placement"]) == sorted(a.name for a in agents) and db["engine"]["epoch"] == 1
        assert sorted(r["node"] for r in db["replicas"]) == sorted(db["placement"])
        assert all(r["epoch"] == 1 for r in db["replicas"])
        owner = next(a for a in agents if a.name == db["engine"]["node"])
        written = qemu_io(engine_socket(tmp_path, owner), "write -P 0x5c 0 8M", "flush")
        assert written.returncode == 0 and "error" not in written.stdout, written.stdout + written.stderr
        await wait_until(lambda: all(r["used"] >= 8 << 20 for r in volume(agents[0])["replicas"]), 20)

        services = {s["name"]: s for s in agents[0].cli_json("services")}
        assert "waiting for volume db" in services["db"]["held"] and services["db"]["instances"] == []
        assert not any("db-0" in instance_pids(tmp_path, agent.name) for agent in agents)
        table = cli("volumes", "--api", agents[0].api, env=agents[0].env)
        assert table.returncode == 0 and "healthy" in table.stdout and "64MiB" in table.stdout
        missing = cli("volume", "nope", "--api", agents[0].api, env=agents[0].env)
        assert missing.returncode != 0 and "no volume 'nope'" in missing.stderr

        # the engine's node dies: agent, engine and replica server, all at once
        owner.kill()
        stop_engines(tmp_path / owner.name / "data", grace=0)
        stop_replica_server(tmp_path / owner.name / "data", grace=0)
        survivors = [a for a in agents if a is not owner]
        moved = await serving(survivors, "degraded", 2)
        assert moved["engine"]["node"] != owner.name and moved["engine"]["epoch"] >= 2
        await wait_until(lambda: one_engine(tmp_path, survivors), 20)
        heir = next(a for a in survivors if a.name == moved["engine"]["node"])
        assert "volume.degraded" in event_kinds(heir)
        check = qemu_io(engine_socket(tmp_path, heir), "read -P 0x5c 0 8M")
        assert check.returncode == 0 and "error" not in check.stdout, check.stdout + check.stderr


async def test_each_node_keeps_its_replica_server_through_a_kill_and_an_agent_restart(tmp_path: Path) -> None:
    async with agent_trio(tmp_path, DESIRED, expect=3) as agents:
        async def all_servers() -> list[int] | None:
            found = [replica_server_pid(tmp_path, agent) for agent in agents]
            return [pid for pid in found if pid is not None] if all(found) else None

        pids = await wait_until(all_servers, 30)
        os.kill(pids[0], signal.SIGKILL)

        def restarted() -> int | None:
            pid = replica_server_pid(tmp_path, agents[0])
            return pid if pid not in (None, pids[0]) else None

        await wait_until(restarted, 30)
        agents[1].terminate()
        agents[1].start()
        await agents[1].wait_ready()
        await asyncio.sleep(2)
        assert replica_server_pid(tmp_path, agents[1]) == pids[1], "the restarted agent adopted its server"


REPLENISH = DESIRED.replace('replica_timeout = "2s"', 'replica_timeout = "2s"\nreplenish_wait = "6s"')


async def test_a_lost_replica_is_replaced_after_replenish_wait_and_rebuilt(tmp_path: Path) -> None:
    names = ("node-1", "node-2", "node-3", "node-4")
    async with agent_trio(tmp_path, REPLENISH, names, expect=4) as agents:
        db = await serving(agents, "healthy", 3)
        owner = next(a for a in agents if a.name == db["engine"]["node"])
        written = qemu_io(engine_socket(tmp_path, owner), "write -P 0x6d 0 4M", "flush")
        assert written.returncode == 0 and "error" not in written.stdout, written.stdout + written.stderr
        spare = next(a for a in agents if a.name not in db["placement"])
        victim = next(a for a in agents if a.name in db["placement"] and a is not owner)
        victim.kill()
        stop_engines(tmp_path / victim.name / "data", grace=0)
        stop_replica_server(tmp_path / victim.name / "data", grace=0)
        survivors = [a for a in agents if a is not victim]
        await serving(survivors, "degraded", 2)
        healed = await serving(survivors, "healthy", 3)
        assert spare.name in healed["placement"] and victim.name not in healed["placement"]
        assert healed["engine"]["node"] == owner.name, "the engine stays where it ran"
        assert {"volume.degraded", "volume.healthy"} <= set(event_kinds(owner))
        check = qemu_io(engine_socket(tmp_path, owner), "read -P 0x6d 0 4M")
        assert check.returncode == 0 and "error" not in check.stdout, check.stdout + check.stderr


def fio_against(socket: Path, seconds: int) -> subprocess.Popen[str]:
    return subprocess.Popen([need("fio"), "--name=rolling", "--ioengine=nbd", f"--uri=nbd+unix:///db?socket={socket}",
                             "--rw=randwrite", "--bs=4k", "--size=16M", "--iodepth=4", "--rate_iops=500",
                             "--time_based", f"--runtime={seconds}", "--verify=crc32c", "--do_verify=1",
                             "--verify_fatal=1"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


async def test_restarting_every_agent_in_turn_does_not_interrupt_io(tmp_path: Path) -> None:
    async with agent_trio(tmp_path, DESIRED, expect=3) as agents:
        db = await serving(agents, "healthy", 3)
        owner = next(a for a in agents if a.name == db["engine"]["node"])
        engine_pid = read_record(tmp_path / owner.name / "data" / "volumes" / "engines" / "db.json")
        load = fio_against(engine_socket(tmp_path, owner), 20)
        try:
            for agent in agents:
                agent.terminate()
                agent.start()
                await agent.wait_ready()
            out, _ = await asyncio.to_thread(load.communicate, timeout=120)
        finally:
            load.kill()
        assert load.returncode == 0 and "err= 0" in out, out[-2000:]
        again = read_record(tmp_path / owner.name / "data" / "volumes" / "engines" / "db.json")
        assert engine_pid is not None and again is not None and again["pid"] == engine_pid["pid"], \
            "the same engine served throughout"
        assert (await serving(agents, "healthy", 3))["engine"]["epoch"] == 1


async def test_a_replica_node_back_before_replenish_wait_gets_only_what_it_missed(tmp_path: Path) -> None:
    async with agent_trio(tmp_path, DESIRED.replace('replica_timeout = "2s"',
                                                    'replica_timeout = "2s"\nreplenish_wait = "120s"'),
                          expect=3) as agents:
        db = await serving(agents, "healthy", 3)
        owner = next(a for a in agents if a.name == db["engine"]["node"])
        socket = engine_socket(tmp_path, owner)
        assert qemu_io(socket, "write -P 0x01 0 16M", "flush").returncode == 0
        victim = next(a for a in agents if a is not owner)
        victim.kill()
        stop_replica_server(tmp_path / victim.name / "data", grace=0)
        survivors = [a for a in agents if a is not victim]
        await serving(survivors, "degraded", 2)
        missed = 2 << 20
        assert qemu_io(socket, "write -P 0x02 20M 1M", "write -P 0x03 40M 1M", "flush").returncode == 0
        status_file = tmp_path / owner.name / "data" / "volumes" / "engines" / "db.status"
        before = json.loads(status_file.read_text())["io"].get("rebuild_bytes", 0)
        victim.start()
        await victim.wait_ready()
        back = await serving(agents, "healthy", 3)
        assert victim.name in back["placement"], "the replica kept its place"
        sent = json.loads(status_file.read_text())["io"].get("rebuild_bytes", 0) - before
        assert 0 < sent <= 2 * missed, f"{sent} bytes sent to catch up on {missed} bytes missed"
        assert qemu_io(socket, "read -P 0x02 20M 1M", "read -P 0x01 0 16M").returncode == 0
