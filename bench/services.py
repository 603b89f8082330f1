"""Services benchmark: failover time after kill -9 of a node, and agent idle CPU with many instances.

    python bench/services.py [--sizes 3,10] [--runs 5] [--instances 100]

Failover: one web instance with an http health check; its node's agent and the instance are
killed -9 together (the host is lost); measured until a survivor reports the instance running and
healthy on another node, next to the failure-detection time (until the survivors see the node
dead). Idle: `--instances` sleeping instances spread over 10 agents; the agents' CPU over 30 s.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchlib import cpu_seconds, fmt, rss_mb

from nodeorch.faces.client import call
from nodeorch.faces.dev import DevCluster

WEB = f"""
revision = 1

[[service]]
name = "web"
command = ["{sys.executable}", "-m", "http.server", "18080", "--bind", "${{NODEORCH_NODE_ADDR}}"]
scale = 1
stop_grace = "1s"

[service.health]
kind = "http"
port = 18080
path = "/"
interval = "500ms"
timeout = "1s"
healthy_threshold = 1
unhealthy_threshold = 3
"""


def sleepers(count: int) -> str:
    return f"""
revision = 1

[[service]]
name = "idle"
command = ["sleep", "86400"]
scale = {count}
spread = "none"
stop_grace = "1s"
"""


def instance_pids(cluster: DevCluster, index: int) -> list[int]:
    run = cluster.folder / f"node-{index + 1}" / "data" / "run"
    return [json.loads(p.read_text())["pid"] for p in run.glob("*.json")] if run.is_dir() else []


async def web_where(api: str) -> tuple[str | None, str | None]:
    with contextlib.suppress(Exception):
        services = await call(api, "GET", "/v1/services")
        for s in services:
            if s["name"] == "web":
                for i in s["instances"]:
                    if i["state"] == "running":
                        return i["node"], i["health"]
    return None, None


async def failover(count: int, runs: int) -> dict[str, Any]:
    cluster = DevCluster(count, Path(tempfile.mkdtemp(prefix="nodeorch-bench-")), WEB)
    cluster.prepare()
    await cluster.start()
    failovers, detections = [], []
    try:
        for _ in range(runs):
            deadline = time.monotonic() + 60
            owner = None
            while time.monotonic() < deadline:
                node, health = await web_where(cluster.apis[0])
                if node and health == "healthy":
                    owner = node
                    break
                await asyncio.sleep(0.2)
            if owner is None:
                raise RuntimeError("the web instance never became healthy")
            await asyncio.sleep(2)
            index = int(owner.split("-")[1]) - 1
            survivor = cluster.apis[(index + 1) % count]
            killed = time.time()
            cluster.procs[index].send_signal(signal.SIGKILL)
            for pid in instance_pids(cluster, index):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pid, signal.SIGKILL)
            detected = recovered = None
            while time.time() - killed < 60 and recovered is None:
                if detected is None:
                    with contextlib.suppress(Exception):
                        members = await call(survivor, "GET", "/v1/members")
                        if any(m["name"] == owner and m["state"] == "dead" for m in members):
                            detected = time.time() - killed
                node, health = await web_where(survivor)
                if node and node != owner and health == "healthy":
                    recovered = time.time() - killed
                await asyncio.sleep(0.05)
            if recovered is not None:
                failovers.append(recovered)
            if detected is not None:
                detections.append(detected)
            await cluster.procs[index].wait()
            run_dir = cluster.folder / f"node-{index + 1}" / "data" / "run"
            for stale in run_dir.glob("*.json"):
                stale.unlink()
            cluster.procs[index] = await cluster.start_agent(index)
            await asyncio.sleep(8)
    finally:
        await cluster.stop()
    return {"failover": statistics.median(failovers) if failovers else None,
            "detection": statistics.median(detections) if detections else None, "runs": len(failovers)}


async def idle(instances: int, agents: int = 10) -> dict[str, Any]:
    cluster = DevCluster(agents, Path(tempfile.mkdtemp(prefix="nodeorch-bench-")), sleepers(instances))
    cluster.prepare()
    await cluster.start()
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            with contextlib.suppress(Exception):
                services = await call(cluster.apis[0], "GET", "/v1/services")
                running = sum(1 for s in services for i in s["instances"] if i["state"] == "running")
                if running == instances:
                    break
            await asyncio.sleep(1)
        await asyncio.sleep(10)
        pids = [p.pid for p in cluster.procs]
        before = [cpu_seconds(pid) for pid in pids]
        started = time.monotonic()
        await asyncio.sleep(30)
        elapsed = time.monotonic() - started
        cpu = [100 * (cpu_seconds(pid) - b) / elapsed for pid, b in zip(pids, before, strict=True)]
        return {"running": running, "cpu_mean": statistics.mean(cpu), "cpu_max": max(cpu),
                "rss": statistics.mean(rss_mb(pid) for pid in pids)}
    finally:
        await cluster.stop()


async def main_async(args: argparse.Namespace) -> None:
    print(f"# services benchmark, {time.strftime('%Y-%m-%d %H:%M')}")
    print("\n| agents | kill -9 to dead at a survivor (median) | kill -9 to running and healthy elsewhere (median) "
          "| runs |")
    print("|---|---|---|---|")
    for count in [int(s) for s in args.sizes.split(",")]:
        r = await failover(count, args.runs)
        print(f"| {count} | {fmt(r['detection'], ' s')} | {fmt(r['failover'], ' s')} | {r['runs']} |", flush=True)
    r = await idle(args.instances)
    print(f"\n{r['running']} instances over 10 agents: agent idle CPU {r['cpu_mean']:.2f} % of a core "
          f"(max {r['cpu_max']:.2f} %), agent RSS {r['rss']:.1f} MB", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="3,10")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--instances", type=int, default=100)
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()
