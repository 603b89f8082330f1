"""Agent benchmark: idle CPU and RSS of real agents, and how fast a node document change reaches
every node, with Serf's tag propagation (`serf tags -set`) measured in the same run as the anchor.

    python bench/agent.py [--sizes 10,30] [--rounds 5] [--idle 20] [--services-only]

Agents run as `nodeorch dev` runs them: one loopback address each (127.0.0.2, ...), LAN profile,
encrypted, with the demo's desired state (`--services-only`: without its volume and the service
using it, as the demo was before volumes existed, so idle figures compare with older runs).
A document change is a drain toggled through the status endpoint; its arrival at each node is
read from that node's /v1/events stream.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import shutil
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchlib import MonitoredProcess, cpu_seconds, fmt, free_ports, parse_serf_line, rss_mb, wait_for

from gossip import generate_key
from nodeorch.faces.dev import DevCluster, demo_desired


async def follow(session: aiohttp.ClientSession, api: str, node: str, arrivals: dict[int, float],
                 ready: asyncio.Event) -> None:
    """Record when document.updated events about `node` arrive at the agent behind `api`."""
    async with session.get(f"http://{api}/v1/events?since=999999999999") as response:
        ready.set()
        async for line in response.content:
            if line.strip():
                event = json.loads(line)
                if event["kind"] == "document.updated" and event["node"] == node:
                    arrivals.setdefault(event["version"], time.time())


async def measure_agents(count: int, rounds: int, idle: float, services_only: bool) -> dict[str, float | None]:
    desired = demo_desired(volumes=False) if services_only else None
    cluster = DevCluster(count, Path(tempfile.mkdtemp(prefix="nodeorch-bench-")), desired)
    cluster.prepare()
    await cluster.start()
    try:
        async def all_alive() -> bool:
            rows = await cluster.snapshot()
            return all("error" not in r and r["members"]["alive"] == count for r in rows)

        deadline = time.monotonic() + 90
        while not await all_alive():
            if time.monotonic() > deadline:
                raise RuntimeError("agents did not converge within 90 s")
            await asyncio.sleep(0.5)
        await asyncio.sleep(3)
        pids = [p.pid for p in cluster.procs]
        cpu0 = [cpu_seconds(pid) for pid in pids]
        started = time.monotonic()
        await asyncio.sleep(idle)
        elapsed = time.monotonic() - started
        cpu = 100 * statistics.mean(cpu_seconds(pid) - c for pid, c in zip(pids, cpu0, strict=True)) / elapsed
        rss = statistics.mean(rss_mb(pid) for pid in pids)

        delays: list[float] = []
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None)) as session:
            arrivals = [dict[int, float]() for _ in range(count)]
            readies = [asyncio.Event() for _ in range(count)]
            followers = [asyncio.create_task(follow(session, api, "node-1", arrivals[i], readies[i]))
                         for i, api in enumerate(cluster.apis)]
            await asyncio.gather(*(r.wait() for r in readies))
            for round_ in range(rounds):
                for arrival in arrivals:
                    arrival.clear()
                changed = time.time()
                path = "/v1/drain" if round_ % 2 == 0 else "/v1/undrain"
                async with session.post(f"http://{cluster.apis[0]}{path}", headers={"X-Nodeorch": "bench"}) as response:
                    assert response.status == 200
                if not await wait_for(lambda: all(arrivals[i] for i in range(1, count)), 30):
                    print(f"  round {round_}: not every node got the change within 30 s")
                delays += [min(a.values()) - changed for a in arrivals[1:] if a]
                await asyncio.sleep(1)
            for task in followers:
                task.cancel()
        return {"cpu": cpu, "rss": rss, "median": statistics.median(delays) if delays else None,
                "max": max(delays) if delays else None}
    finally:
        await cluster.stop()


async def measure_serf(count: int, rounds: int) -> dict[str, float | None]:
    key = generate_key()
    ports = free_ports(count, 25000)
    members = []
    for i, port in enumerate(ports):
        argv = ["serf", "agent", f"-node=serf-{i}", f"-bind=127.0.0.1:{port}", f"-rpc-addr=127.0.0.1:{port + 10000}",
                f"-encrypt={key}", "-log-level=info"] + ([f"-join=127.0.0.1:{ports[0]}"] if i else [])
        members.append(MonitoredProcess(f"serf-{i}", port, argv, serf_update_line))
    try:
        await members[0].start()
        await asyncio.sleep(0.5)
        await asyncio.gather(*(m.start() for m in members[1:]))
        names = {m.name for m in members}
        await wait_for(lambda: all(names - {m.name} <= m.seen("join") for m in members), 60)
        await asyncio.sleep(3)
        delays: list[float] = []
        for round_ in range(rounds):
            changed = time.time()
            tags = await asyncio.create_subprocess_exec(
                "serf", "tags", f"-rpc-addr=127.0.0.1:{ports[0] + 10000}", "-set", f"round={round_}",
                stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
            await tags.wait()
            await wait_for(functools.partial(all_updated, members[1:], changed), 30)
            delays += [t - changed for m in members[1:] if (t := m.first("update", "serf-0", changed))]
            await asyncio.sleep(1)
        return {"median": statistics.median(delays) if delays else None, "max": max(delays) if delays else None}
    finally:
        for m in members:
            m.signal(signal.SIGKILL)
        for m in members:
            with contextlib.suppress(Exception):
                await m.stop()


def all_updated(members: list[MonitoredProcess], since: float) -> bool:
    return all(m.first("update", "serf-0", since) for m in members)


def serf_update_line(line: str) -> tuple[str, str] | None:
    if "EventMemberUpdate: " in line:
        return "update", line.split("EventMemberUpdate: ", 1)[1].split(maxsplit=1)[0]
    return parse_serf_line(line)


async def main_async(args: argparse.Namespace) -> None:
    print(f"# agent benchmark, {time.strftime('%Y-%m-%d %H:%M')}")
    print("\n| N | agent idle CPU %/agent | agent RSS MB | document propagation median / max | "
          "Serf tag propagation median / max |")
    print("|---|---|---|---|---|")
    for count in [int(s) for s in args.sizes.split(",")]:
        ours = await measure_agents(count, args.rounds, args.idle, args.services_only)
        serf = await measure_serf(count, args.rounds) if shutil.which("serf") else {"median": None, "max": None}
        print(f"| {count} | {fmt(ours['cpu'], '', 3)} | {fmt(ours['rss'], '', 1)} | "
              f"{fmt(ours['median'], ' s', 3)} / {fmt(ours['max'], ' s', 3)} | "
              f"{fmt(serf['median'], ' s', 3)} / {fmt(serf['max'], ' s', 3)} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="10,30")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--idle", type=float, default=20.0)
    parser.add_argument("--services-only", action="store_true", help="the demo without its volume")
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()
