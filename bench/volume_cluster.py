"""Volumes in the cluster, measured with real agents (as `nodeorch dev` runs them, as root):

    python bench/volume_cluster.py [--runs 3] [--volumes 20] [--agents 5]

- failover: the demo's key-value service keeps its data on a 3-replica volume; its node is lost
  (kill -9 of the agent, the instance, the engine, nbdfuse and the replica server at once); timed
  until the service answers healthy on another node with the key written before, next to the
  failure-detection time (until a survivor sees the node dead);
- rebuild: a 1 GiB volume with 512 MiB written; a replica's node is lost for good, and after
  replenish_wait a new replica on a spare node is rebuilt online: the copy time and bytes;
- scale: `--volumes` volumes attached across `--agents` agents (one per slot of a sleeping
  service): the agents' CPU and RSS once all are healthy, and the engines' and replica servers'.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchlib import cpu_seconds, fmt, rss_mb

from drivers.attach.fuse_loop import release_all
from nodeorch.faces.client import call
from nodeorch.faces.dev import DevCluster, demo_desired, volume_demo_left_out
from nodeorch.reconcile.detached_process import read_record
from nodeorch.reconcile.replica_server_keeper import stop_replica_server


def data(cluster: DevCluster, index: int) -> Path:
    return cluster.folder / f"node-{index + 1}" / "data"


def lose_node(cluster: DevCluster, index: int) -> None:
    """Everything of node `index` dies at once, then what the host took with it is cleared."""
    cluster.procs[index].send_signal(signal.SIGKILL)
    folder = data(cluster, index)
    for record in (folder / "run").glob("*.json"):
        with contextlib.suppress(ProcessLookupError, ValueError, OSError):
            os.killpg(json.loads(record.read_text())["pid"], signal.SIGKILL)
    for record in (folder / "volumes" / "engines").glob("*.json"):
        running = read_record(record)
        if running is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(running["pid"]), signal.SIGKILL)
    fuse = subprocess.run(["pgrep", "-f", f"nbdfuse {folder}"], capture_output=True, text=True, check=False)
    for pid in fuse.stdout.split():
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(pid), signal.SIGKILL)
    stop_replica_server(folder, grace=0)
    release_all(folder / "volumes")
    for stale in (folder / "run").glob("*.json"):
        stale.unlink()


async def first(cluster: DevCluster, path: str, skip: int | None = None) -> Any:
    for index, api in enumerate(cluster.apis):
        if index != skip:
            with contextlib.suppress(Exception):
                return await call(api, "GET", path)
    return None


async def kv_where(cluster: DevCluster, skip: int | None = None) -> tuple[str | None, str | None]:
    for service in await first(cluster, "/v1/services", skip) or []:
        if service["name"] == "kv":
            for instance in service["instances"]:
                if instance["state"] == "running":
                    return instance["node"], instance["health"]
    return None, None


def http(method: str, url: str, body: bytes | None = None) -> bytes | None:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data=body, method=method), timeout=2) as answer:
            result: bytes = answer.read()
            return result
    except OSError:
        return None


async def until(check: Any, timeout: float, interval: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = await check()
        if result:
            return result
        await asyncio.sleep(interval)
    return None


async def failover(runs: int) -> dict[str, Any]:
    cluster = DevCluster(3, Path(tempfile.mkdtemp(prefix="nodeorch-bench-")), demo_desired(volumes=True))
    cluster.prepare()
    await cluster.start()
    failovers, detections = [], []
    try:
        for run in range(runs):
            async def healthy() -> str | None:
                node, health = await kv_where(cluster)
                return node if node and health == "healthy" else None

            owner = await until(healthy, 120, 0.2)
            if owner is None:
                raise RuntimeError("the kv service never became healthy")
            index = int(owner.split("-")[1]) - 1
            value = os.urandom(8).hex().encode()
            if http("PUT", f"http://{cluster.ips[index]}:8081/key{run}", value) is None:
                raise RuntimeError("the kv service refused a write")
            await asyncio.sleep(2)
            killed = time.time()
            lose_node(cluster, index)
            detected = recovered = None
            while time.time() - killed < 120 and recovered is None:
                if detected is None:
                    members = await first(cluster, "/v1/members", skip=index) or []
                    if any(m["name"] == owner and m["state"] == "dead" for m in members):
                        detected = time.time() - killed
                node, health = await kv_where(cluster, skip=index)
                if node and node != owner and health == "healthy":
                    where = cluster.ips[int(node.split("-")[1]) - 1]
                    if http("GET", f"http://{where}:8081/key{run}") == value:
                        recovered = time.time() - killed
                await asyncio.sleep(0.05)
            print(f"  run {run + 1}: dead after {fmt(detected, ' s')}, kv answers with its data elsewhere after "
                  f"{fmt(recovered, ' s')}", flush=True)
            if recovered is not None:
                failovers.append(recovered)
            if detected is not None:
                detections.append(detected)
            await cluster.procs[index].wait()
            cluster.procs[index] = await cluster.start_agent(index)
            await asyncio.sleep(15)  # the node rejoins and its replica catches up
    finally:
        await cluster.stop()
    return {"failover": statistics.median(failovers) if failovers else None,
            "detection": statistics.median(detections) if detections else None, "runs": len(failovers)}


BIG = """
revision = 1

[[volume]]
name = "big"
size = "1GiB"
replenish_wait = "5s"

[[service]]
name = "big"
command = ["sleep", "86400"]
volumes = [{ volume = "big", path = "/data" }]
stop_grace = "1s"
"""


async def rebuild() -> dict[str, Any]:
    cluster = DevCluster(4, Path(tempfile.mkdtemp(prefix="nodeorch-bench-")), BIG)
    cluster.prepare()
    await cluster.start()
    try:
        async def volume() -> dict[str, Any] | None:
            for entry in await first(cluster, "/v1/volumes") or []:
                if entry["name"] == "big" and entry["state"] == "healthy" and entry["engine"]:
                    return dict(entry)
            return None

        big = await until(volume, 180, 0.5)
        if big is None:
            raise RuntimeError("the 1 GiB volume never became healthy")
        owner = int(big["engine"]["node"].split("-")[1]) - 1
        mount = data(cluster, owner) / "volumes" / "mounts" / "big"
        await until(lambda: asyncio.sleep(0, os.path.ismount(mount)), 60)
        started = time.monotonic()
        await asyncio.to_thread(subprocess.run, ["dd", "if=/dev/urandom", f"of={mount / 'fill'}", "bs=1M",
                                                 "count=512", "conv=fsync"], capture_output=True, check=True)
        print(f"  512 MiB written through the filesystem in {time.monotonic() - started:.1f} s", flush=True)
        status_file = data(cluster, owner) / "volumes" / "engines" / "big.status"
        before = json.loads(status_file.read_text())["io"]
        victim = next(int(r["node"].split("-")[1]) - 1 for r in big["replicas"] if r["node"] != big["engine"]["node"])
        lost = time.monotonic()
        lose_node(cluster, victim)

        async def rebuilt() -> bool:
            entry = await volume()
            return entry is not None and f"node-{victim + 1}" not in [r["node"] for r in entry["replicas"]
                                                                     if r["mode"] == "member"]

        await asyncio.sleep(3)
        if not await until(rebuilt, 300, 0.5):
            raise RuntimeError("the replacement replica was never rebuilt")
        after = json.loads(status_file.read_text())["io"]
        copy_ms = after.get("rebuild_ms", 0) - before.get("rebuild_ms", 0)
        sent = after.get("rebuild_bytes", 0) - before.get("rebuild_bytes", 0)
        return {"copy_s": copy_ms / 1000, "sent_mib": sent / (1 << 20), "lost_to_healthy": time.monotonic() - lost}
    finally:
        await cluster.stop()


def per_slot(volumes: int) -> str:
    return f"""
revision = 1

[[volume]]
name = "v"
size = "64MiB"

[[service]]
name = "v"
command = ["sleep", "86400"]
scale = {volumes}
spread = "none"
stop_grace = "1s"
volumes = [{{ volume = "v", path = "/data", per_slot = true }}]
"""


def pids_of(pattern: str, folder: Path) -> list[int]:
    found = subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True, check=False).stdout.split()
    pids = []
    for pid in found:
        with contextlib.suppress(OSError):
            if str(folder) in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace"):
                pids.append(int(pid))
    return pids


async def scale(volumes: int, agents: int) -> dict[str, Any]:
    cluster = DevCluster(agents, Path(tempfile.mkdtemp(prefix="nodeorch-bench-")), per_slot(volumes))
    cluster.prepare()
    await cluster.start()
    try:
        async def all_healthy() -> bool:
            entries = await first(cluster, "/v1/volumes") or []
            services = await first(cluster, "/v1/services") or []
            running = sum(1 for s in services for i in s["instances"] if i["state"] == "running")
            return sum(1 for v in entries if v["state"] == "healthy") == volumes and running == volumes

        started = time.monotonic()
        if not await until(all_healthy, 600, 1.0):
            raise RuntimeError(f"{volumes} volumes never became healthy and attached")
        ready = time.monotonic() - started
        await asyncio.sleep(10)
        groups = {"agents": [p.pid for p in cluster.procs],
                  "engines": pids_of("drivers.volumes engine", cluster.folder),
                  "replica servers": pids_of("drivers.volumes replica", cluster.folder)}
        before = {name: [cpu_seconds(pid) for pid in pids] for name, pids in groups.items()}
        t0 = time.monotonic()
        await asyncio.sleep(30)
        elapsed = time.monotonic() - t0
        result: dict[str, Any] = {"ready": ready}
        for name, pids in groups.items():
            cpu = [100 * (cpu_seconds(pid) - b) / elapsed for pid, b in zip(pids, before[name], strict=True)]
            result[name] = {"count": len(pids), "cpu_mean": statistics.mean(cpu), "cpu_max": max(cpu),
                            "rss": statistics.mean(rss_mb(pid) for pid in pids)}
        return result
    finally:
        await cluster.stop()


async def main_async(args: argparse.Namespace) -> None:
    if reason := volume_demo_left_out():
        raise SystemExit(f"bench/volume_cluster.py: {reason}")
    print(f"# volumes in the cluster, {time.strftime('%Y-%m-%d %H:%M')}")
    if args.only_scale:
        await report_scale(args)
        return
    r = await failover(args.runs)
    print(f"\nkill -9 of the kv service's node (3 agents): dead at a survivor after {fmt(r['detection'], ' s')}, "
          f"kv healthy elsewhere with its data after {fmt(r['failover'], ' s')} (median of {r['runs']})", flush=True)
    b = await rebuild()
    print(f"\n1 GiB volume, 512 MiB used, a replica lost for good: rebuilt onto a spare node in {b['copy_s']:.1f} s "
          f"of copying ({b['sent_mib']:.0f} MiB sent); lost to healthy {b['lost_to_healthy']:.1f} s "
          "(replenish_wait 5 s included)", flush=True)
    await report_scale(args)


async def report_scale(args: argparse.Namespace) -> None:
    s = await scale(args.volumes, args.agents)
    print(f"\n{args.volumes} volumes attached across {args.agents} agents (all healthy after {s['ready']:.0f} s):")
    print("| processes | count | CPU mean (% of a core) | CPU max | RSS mean |")
    print("|---|---|---|---|---|")
    for name in ("agents", "engines", "replica servers"):
        g = s[name]
        print(f"| {name} | {g['count']} | {g['cpu_mean']:.2f} | {g['cpu_max']:.2f} | {g['rss']:.1f} MB |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--volumes", type=int, default=20)
    parser.add_argument("--agents", type=int, default=5)
    parser.add_argument("--only-scale", action="store_true", help="only the many-volumes measurement")
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()
