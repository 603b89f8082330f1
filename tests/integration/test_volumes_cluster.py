"""Volumes across real agents (separate processes on loopback, real replica servers, engines,
nbdfuse, loop devices and ext4): every node derives the same placement, the node of the slot
that uses a volume runs its engine and mounts the volume for the instance, and the volume
survives the death of its node, of a replica's node, and agents restarting under I/O.
Every process, mount and loop device is removed afterwards, whatever happened."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from drivers.attach.fuse_loop import missing_tools, mounts_under, release_all
from gossip._process import wait_until
from nodeorch.reconcile.detached_process import read_record
from nodeorch.reconcile.replica_server_keeper import stop_replica_server
from nodeorch.spec.node_config import DEFAULT_REPLICA_PORT

from .agents import AgentProcess, agent_trio, cli, instance_pids
from .volumes import cut_tcp_ports, need

SLEEPER = f'["{sys.executable}", "-c", "import time; time.sleep(3600)"]'
DESIRED = f"""
revision = 1

[[volume]]
name = "db"
size = "64MiB"
replica_timeout = "2s"

[[service]]
name = "db"
command = {SLEEPER}
volumes = [{{ volume = "db", path = "/data" }}]

[[service]]
name = "web"
command = {SLEEPER}
"""

WRITING = DESIRED.replace(f"command = {SLEEPER}\nvolumes", "command = " + json.dumps(
    [sys.executable, "-m", "nodeorch.faces.sequence_writer", "${NODEORCH_VOLUME_DB}"]) + "\nvolumes", 1)


@pytest.fixture(autouse=True)
def attaching_works() -> None:
    if os.geteuid() != 0:
        pytest.fail("volume services need root (loop devices, mounts): run make test as root")
    if missing := missing_tools():
        pytest.fail(f"volume services need {', '.join(missing)} (make test installs them as root)")


def data_dir(tmp_path: Path, agent: AgentProcess) -> Path:
    return tmp_path / agent.name / "data"


def mount_of(tmp_path: Path, agent: AgentProcess) -> Path:
    return data_dir(tmp_path, agent) / "volumes" / "mounts" / "db"


def write_synced(path: Path, data: bytes) -> None:
    with path.open("wb") as out:
        out.write(data)
        out.flush()
        os.fsync(out.fileno())


def kill_node(tmp_path: Path, agent: AgentProcess) -> None:
    """Everything of a node dies at once, kill -9: agent, instances, engines, nbdfuse, replica
    server; then what the dead host would have lost with it (mounts, loop devices) is cleared."""
    agent.kill()
    for pid in instance_pids(tmp_path, agent.name).values():
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
    volumes = data_dir(tmp_path, agent) / "volumes"
    for record in (volumes / "engines").glob("*.json"):
        running = read_record(record)
        if running is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(running["pid"]), signal.SIGKILL)
    fuse = subprocess.run(["pgrep", "-f", f"nbdfuse {volumes}"], capture_output=True, text=True, check=False)
    for fuse_pid in fuse.stdout.split():
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(fuse_pid), signal.SIGKILL)
    release_all(volumes)
    stop_replica_server(data_dir(tmp_path, agent), grace=0)


def instance_log(tmp_path: Path, agent: AgentProcess) -> str:
    log = data_dir(tmp_path, agent) / "logs" / "db-0.log"
    return log.read_text() if log.exists() else ""


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


def acked(text: str) -> int:
    """The last sequence number the writer had fsynced, by its log."""
    numbers = re.findall(r"^acked (\d+) at", text, re.MULTILINE)
    return int(numbers[-1]) if numbers else 0


async def test_a_service_keeps_every_acknowledged_write_when_its_node_dies(tmp_path: Path) -> None:
    async with agent_trio(tmp_path, WRITING, expect=3) as agents:
        db = await serving(agents, "healthy", 3)
        assert sorted(db["placement"]) == sorted(a.name for a in agents) and db["engine"]["epoch"] == 1
        owner = next(a for a in agents if a.name == db["engine"]["node"])
        await wait_until(lambda: acked(instance_log(tmp_path, owner)) >= 100, 60)
        assert mount_of(tmp_path, owner).resolve() in mounts_under(mount_of(tmp_path, owner)), "mounted there"
        services = {s["name"]: s for s in agents[0].cli_json("services")}
        assert [(i["node"], i["state"]) for i in services["db"]["instances"]] == [(owner.name, "running")]
        table = cli("volumes", "--api", agents[0].api, env=agents[0].env)
        assert table.returncode == 0 and "healthy" in table.stdout and "64MiB" in table.stdout
        missing = cli("volume", "nope", "--api", agents[0].api, env=agents[0].env)
        assert missing.returncode != 0 and "no volume 'nope'" in missing.stderr

        kill_node(tmp_path, owner)
        last = acked(instance_log(tmp_path, owner))
        survivors = [a for a in agents if a is not owner]
        moved = await serving(survivors, "degraded", 2)
        assert moved["engine"]["node"] != owner.name and moved["engine"]["epoch"] >= 2
        heir = next(a for a in survivors if a.name == moved["engine"]["node"])
        found = await wait_until(lambda: re.search(r"^found (\d+) in order=(\w+) at", instance_log(tmp_path, heir),
                                                   re.MULTILINE), 60)
        assert int(found.group(1)) >= last and found.group(2) == "True", \
            f"{last} writes were acknowledged; the heir found {found.group(0)}"
        await wait_until(lambda: one_engine(tmp_path, survivors), 20)
        assert "volume.degraded" in event_kinds(heir)


async def test_an_engine_cut_off_from_two_replicas_fails_io_loses_nothing_and_recovers_by_itself(
        tmp_path: Path) -> None:
    async with agent_trio(tmp_path, WRITING, expect=3) as agents:
        db = await serving(agents, "healthy", 3)
        owner = next(a for a in agents if a.name == db["engine"]["node"])
        await wait_until(lambda: acked(instance_log(tmp_path, owner)) >= 50, 60)
        others = tuple(a.ip for a in agents if a is not owner)
        with cut_tcp_ports(DEFAULT_REPLICA_PORT, hosts=others):
            await wait_until(lambda: "OSError" in instance_log(tmp_path, owner), 60)  # EIO, never a false ack
            last = acked(instance_log(tmp_path, owner))
            await wait_until(lambda: volume(owner)["state"] == "faulted", 30)
            await asyncio.sleep(3)
            assert acked(instance_log(tmp_path, owner)) == last, "nothing acknowledged without a majority"
        # healed: the same engine serves again, the instance starts again on a checked filesystem
        found = await wait_until(lambda: re.findall(r"^found (\d+) in order=(\w+) at", instance_log(tmp_path, owner),
                                                    re.MULTILINE), 90)
        assert int(found[-1][0]) >= last and found[-1][1] == "True", f"{last} acknowledged; {found[-1]} found"
        await wait_until(lambda: acked(instance_log(tmp_path, owner)) > last + 20, 30)
        healed = await serving(agents, "healthy", 3)
        assert healed["engine"]["node"] == owner.name


async def test_draining_the_node_of_a_volume_service_moves_it_stop_first_with_its_data(tmp_path: Path) -> None:
    async with agent_trio(tmp_path, WRITING, expect=3) as agents:
        db = await serving(agents, "healthy", 3)
        owner = next(a for a in agents if a.name == db["engine"]["node"])
        await wait_until(lambda: acked(instance_log(tmp_path, owner)) >= 50, 60)
        owner.cli_json("drain")

        def found_elsewhere() -> tuple[AgentProcess, re.Match[str]] | None:
            for agent in agents:  # the writer's first line on its new node
                match = re.search(r"^found (\d+) in order=(\w+) at", instance_log(tmp_path, agent), re.MULTILINE)
                if agent is not owner and match:
                    return agent, match
            return None

        moved, found = await wait_until(found_elsewhere, 60)
        last = acked(instance_log(tmp_path, owner))
        assert int(found.group(1)) >= last and found.group(2) == "True", f"{last} acknowledged; {found.group(0)}"
        assert "OSError" not in instance_log(tmp_path, owner), "the old instance was stopped before its volume"
        assert mount_of(tmp_path, owner).resolve() not in mounts_under(mount_of(tmp_path, owner)), "unmounted"
        assert read_record(data_dir(tmp_path, owner) / "volumes" / "engines" / "db.json") is None, "engine stopped"
        healthy = await serving(agents, "healthy", 3)
        assert healthy["engine"]["node"] == moved.name and healthy["engine"]["epoch"] == 2, \
            "one clean handover: the new engine fenced the old one's epoch once"


WITH_OLD = DESIRED + f"""
[[volume]]
name = "old"
size = "32MiB"

[[service]]
name = "old"
command = {SLEEPER}
volumes = [{{ volume = "old", path = "/old" }}]
"""


def replica_files(tmp_path: Path, agents: list[AgentProcess], volume: str) -> list[str]:
    return [a.name for a in agents if (data_dir(tmp_path, a) / "volumes" / "replicas" / f"{volume}.meta").exists()]


async def test_a_removed_volume_is_kept_until_deleted_and_then_dropped_on_every_node(tmp_path: Path) -> None:
    async with agent_trio(tmp_path, WITH_OLD, expect=3) as agents:
        await serving(agents, "healthy", 3)
        await wait_until(lambda: len(replica_files(tmp_path, agents, "old")) == 3, 60)
        (tmp_path / "desired.toml").write_text(DESIRED.replace("revision = 1", "revision = 2"))

        def orphaned() -> dict[str, Any] | None:
            entries: list[dict[str, Any]] = agents[0].cli_json("volumes")
            old = next((v for v in entries if v["name"] == "old"), None)
            return old if old and old["state"] == "orphaned" and old["engine"] is None else None

        old = await wait_until(orphaned, 60)
        assert len(old["replicas"]) == 3, "a volume removed from the file keeps its replicas"
        assert not any(mount_of(tmp_path, a).with_name("old").exists()
                       and mount_of(tmp_path, a).with_name("old").resolve() in mounts_under(mount_of(tmp_path, a))
                       for a in agents), "and is detached"
        refused = cli("volume", "delete", "db", "--yes", "--api", agents[0].api, env=agents[0].env)
        assert refused.returncode != 0 and "in the desired state" in refused.stderr
        unconfirmed = cli("volume", "delete", "old", "--api", agents[0].api, env=agents[0].env)
        assert unconfirmed.returncode != 0 and "confirm with --yes" in unconfirmed.stderr
        assert len(replica_files(tmp_path, agents, "old")) == 3
        deleted = cli("volume", "delete", "old", "--yes", "--api", agents[0].api, env=agents[0].env)
        assert deleted.returncode == 0, deleted.stderr
        await wait_until(lambda: replica_files(tmp_path, agents, "old") == [], 30)
        await wait_until(lambda: all(v["name"] != "old" for v in agents[2].cli_json("volumes")), 30)
        assert replica_files(tmp_path, agents, "db") != [], "other volumes are untouched"
        assert "volume.replica_deleted" in event_kinds(agents[1])


async def test_after_two_replica_disks_are_lost_salvage_from_the_survivor_serves_the_volume_again(
        tmp_path: Path) -> None:
    async with agent_trio(tmp_path, DESIRED, expect=3) as agents:
        db = await serving(agents, "healthy", 3)
        owner = next(a for a in agents if a.name == db["engine"]["node"])
        await wait_until(lambda: mount_of(tmp_path, owner).resolve() in mounts_under(mount_of(tmp_path, owner)), 30)
        write_synced(mount_of(tmp_path, owner) / "blob", os.urandom(1 << 20))
        for lost in (a for a in agents if a is not owner):  # their disks die under running servers
            for path in (data_dir(tmp_path, lost) / "volumes" / "replicas").iterdir():
                path.unlink()
            server = replica_server_pid(tmp_path, lost)
            assert server is not None
            os.kill(server, signal.SIGKILL)
        await wait_until(lambda: volume(owner)["state"] == "faulted", 30)
        await asyncio.sleep(4)
        assert volume(owner)["state"] == "faulted", "one replica of three: never served without salvage"
        wrong = cli("volume", "salvage", "db", "--api", owner.api, env=owner.env)
        assert wrong.returncode != 0 and "--from NODE is required" in wrong.stderr
        salvaged = cli("volume", "salvage", "db", "--from", owner.name, "--api", owner.api, env=owner.env,
                       timeout=120)
        assert salvaged.returncode == 0, salvaged.stdout + salvaged.stderr
        healthy = await serving(agents, "healthy", 3)
        assert healthy["engine"]["epoch"] > db["engine"]["epoch"]
        images = {a.name: (data_dir(tmp_path, a) / "volumes" / "replicas" / "db.img").read_bytes() for a in agents}
        assert len(set(images.values())) == 1, "every replica holds the survivor's data"
        again = cli("volume", "salvage", "db", "--from", owner.name, "--api", owner.api, env=owner.env)
        assert again.returncode != 0 and "salvage is only for a volume no engine can start" in again.stderr


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


REPLENISH = DESIRED.replace('replica_timeout = "2s"', 'replica_timeout = "2s"\nreplenish_wait = "15s"')


async def test_a_lost_replica_is_replaced_after_replenish_wait_and_rebuilt(tmp_path: Path) -> None:
    names = ("node-1", "node-2", "node-3", "node-4")
    async with agent_trio(tmp_path, REPLENISH, names, expect=4) as agents:
        db = await serving(agents, "healthy", 3)
        owner = next(a for a in agents if a.name == db["engine"]["node"])
        data = os.urandom(4 << 20)
        await wait_until(lambda: mount_of(tmp_path, owner).resolve() in mounts_under(mount_of(tmp_path, owner)), 30)
        write_synced(mount_of(tmp_path, owner) / "blob", data)
        engine = read_record(data_dir(tmp_path, owner) / "volumes" / "engines" / "db.json")
        spare = next(a for a in agents if a.name not in db["placement"])
        victim = next(a for a in agents if a.name in db["placement"] and a is not owner)
        kill_node(tmp_path, victim)
        survivors = [a for a in agents if a is not victim]
        await serving(survivors, "degraded", 2)
        healed = await serving(survivors, "healthy", 3)
        assert spare.name in healed["placement"] and victim.name not in healed["placement"]
        assert healed["engine"]["node"] == owner.name, "the engine stays where it ran"
        again = read_record(data_dir(tmp_path, owner) / "volumes" / "engines" / "db.json")
        assert engine is not None and again is not None and again["pid"] == engine["pid"], \
            "the engine took the new replica while serving, not by starting again"
        assert {"volume.degraded", "volume.rebuilt", "volume.healthy"} <= set(event_kinds(owner))
        rebuilds = [j for j in owner.cli_json("jobs") if j["kind"] == "rebuild"]
        assert [(j["target"], j["state"], j["progress"]) for j in rebuilds] == [
            (f"db on {spare.name}", "succeeded", 1.0)], "the rebuild is a job in /v1/jobs"
        assert (mount_of(tmp_path, owner) / "blob").read_bytes() == data


def fio_against(folder: Path, seconds: int) -> subprocess.Popen[str]:
    """Verified random writes to a file on the mounted volume, each 16th followed by fsync."""
    return subprocess.Popen([need("fio"), "--name=rolling", "--ioengine=psync", f"--directory={folder}",
                             "--rw=randwrite", "--bs=4k", "--size=16M", "--rate_iops=300", "--fsync=16",
                             "--time_based", f"--runtime={seconds}", "--verify=crc32c", "--do_verify=1",
                             "--verify_state_save=0", "--verify_fatal=1"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


async def test_restarting_every_agent_in_turn_does_not_interrupt_io(tmp_path: Path) -> None:
    async with agent_trio(tmp_path, DESIRED, expect=3) as agents:
        db = await serving(agents, "healthy", 3)
        owner = next(a for a in agents if a.name == db["engine"]["node"])
        await wait_until(lambda: instance_pids(tmp_path, owner.name).get("db-0"), 30)
        instance = instance_pids(tmp_path, owner.name)["db-0"]
        engine_pid = read_record(data_dir(tmp_path, owner) / "volumes" / "engines" / "db.json")
        load = fio_against(mount_of(tmp_path, owner), 20)
        try:
            for agent in agents:
                agent.terminate()
                agent.start()
                await agent.wait_ready()
            out, _ = await asyncio.to_thread(load.communicate, timeout=120)
        finally:
            load.kill()
            load.wait()
        assert load.returncode == 0 and "err= 0" in out, out[-2000:]
        again = read_record(data_dir(tmp_path, owner) / "volumes" / "engines" / "db.json")
        assert engine_pid is not None and again is not None and again["pid"] == engine_pid["pid"], \
            "the same engine served throughout"
        assert instance_pids(tmp_path, owner.name)["db-0"] == instance, "and the same instance used it"
        assert (await serving(agents, "healthy", 3))["engine"]["epoch"] == 1


async def test_a_replica_node_back_before_replenish_wait_gets_only_what_it_missed(tmp_path: Path) -> None:
    async with agent_trio(tmp_path, DESIRED.replace('replica_timeout = "2s"',
                                                    'replica_timeout = "2s"\nreplenish_wait = "120s"'),
                          expect=3) as agents:
        db = await serving(agents, "healthy", 3)
        owner = next(a for a in agents if a.name == db["engine"]["node"])
        mount = mount_of(tmp_path, owner)
        await wait_until(lambda: mount.resolve() in mounts_under(mount), 30)
        write_synced(mount / "first", b"\x01" * (16 << 20))
        victim = next(a for a in agents if a is not owner)
        victim.kill()
        stop_replica_server(data_dir(tmp_path, victim), grace=0)
        survivors = [a for a in agents if a is not victim]
        await serving(survivors, "degraded", 2)
        missed = 2 << 20
        write_synced(mount / "second", b"\x02" * (1 << 20))
        write_synced(mount / "third", b"\x03" * (1 << 20))
        status_file = data_dir(tmp_path, owner) / "volumes" / "engines" / "db.status"
        before = json.loads(status_file.read_text())["io"].get("rebuild_bytes", 0)
        victim.start()
        await victim.wait_ready()
        back = await serving(agents, "healthy", 3)
        assert victim.name in back["placement"], "the replica kept its place"
        sent = json.loads(status_file.read_text())["io"].get("rebuild_bytes", 0) - before
        assert 0 < sent <= 2 * missed, f"{sent} bytes sent to catch up on {missed} bytes of files (and their metadata)"
        assert (mount / "second").read_bytes() == b"\x02" * (1 << 20)
