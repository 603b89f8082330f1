"""`nodeorch dev --nodes N`: a local cluster of real agents on loopback, like separate hosts.

Agent i gets its own loopback address (127.0.0.2, 127.0.0.3, ...) with the same ports, a config
file, a data directory and a log file under one folder, and the cluster shares a generated keyring.
The command waits for the agents to converge, shows a live status table, and on Ctrl-C stops them
all cleanly (SIGTERM: each leaves the cluster).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from drivers.containers.process import ProcessDriver
from nodeorch.cli import table
from nodeorch.client import call
from nodeorch.config import render_node_config
from nodeorch.keyring import write_keyring

GOSSIP_PORT = 7946
API_PORT = 7947
MAX_NODES = 200

def demo_desired() -> str:
    """The demo desired state of `nodeorch dev`: the same file for every agent. The web service
    serves its folder over HTTP on the address of the agent that runs it."""
    return f"""\
revision = 1

[[service]]
name = "web"
driver = "process"
command = ["{sys.executable}", "-m", "http.server", "8080", "--bind", "${{NODEORCH_NODE_ADDR}}"]
scale = 2

[service.health]
kind = "http"
port = 8080
path = "/"
interval = "1s"
"""


def node_config(index: int, folder: Path, seeds: list[str]) -> str:
    ip = f"127.0.0.{index + 2}"
    return render_node_config(
        name=f"node-{index + 1}", data_dir=folder / f"node-{index + 1}" / "data", cluster="dev",
        keyring=folder / "keyring", bind=f"{ip}:{GOSSIP_PORT}", api=f"{ip}:{API_PORT}",
        desired=folder / "desired.toml", seeds=seeds, labels={"zone": f"z{index % 3 + 1}"},
    )


class DevCluster:
    def __init__(self, count: int, folder: Path, desired: str | None = None) -> None:
        self.count = count
        self.folder = folder
        self.desired = desired if desired is not None else demo_desired()
        self.procs: list[asyncio.subprocess.Process] = []
        self.apis = [f"127.0.0.{i + 2}:{API_PORT}" for i in range(count)]

    def prepare(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        keyring = self.folder / "keyring"
        if not keyring.exists():
            write_keyring(keyring)
        (self.folder / "desired.toml").write_text(self.desired)
        seeds = [f"127.0.0.2:{GOSSIP_PORT}"]
        for i in range(self.count):
            node = self.folder / f"node-{i + 1}"
            (node / "data").mkdir(parents=True, exist_ok=True)
            (node / "nodeorch.toml").write_text(node_config(i, self.folder, seeds if i else []))

    async def start(self) -> None:
        for i in range(self.count):
            self.procs.append(await self.start_agent(i))

    async def start_agent(self, index: int) -> asyncio.subprocess.Process:
        node = self.folder / f"node-{index + 1}"
        log = (node / "agent.log").open("ab")
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "nodeorch", "agent", "--config", str(node / "nodeorch.toml"),
            stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=log,
        )
        log.close()
        return proc

    async def snapshot(self) -> list[dict[str, Any]]:
        async def one(i: int) -> dict[str, Any]:
            name = f"node-{i + 1}"
            if self.procs[i].returncode is not None:
                return {"name": name, "api": self.apis[i], "error": f"exited ({self.procs[i].returncode})"}
            try:
                status = await call(self.apis[i], "GET", "/v1/status")
                return {"api": self.apis[i], **status}
            except Exception as error:  # unreachable while it starts, or any answer but status
                return {"name": name, "api": self.apis[i], "error": str(error)[:40] or "starting"}

        return list(await asyncio.gather(*(one(i) for i in range(self.count))))

    async def stop(self) -> None:
        """Stop the agents (each leaves the cluster), then the service instances they ran, which
        outlive an agent by design."""
        for proc in self.procs:
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(proc.wait(), 10)
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        for i in range(self.count):
            driver = ProcessDriver(self.folder / f"node-{i + 1}" / "data", f"node-{i + 1}", f"127.0.0.{i + 2}")
            for instance in await driver.instances():
                await driver.stop(instance.service, instance.slot, grace=5)

    async def services(self) -> list[dict[str, Any]]:
        for api in self.apis:
            with contextlib.suppress(Exception):
                result: list[dict[str, Any]] = await call(api, "GET", "/v1/services")
                return result
        return []


def render_services(services: list[dict[str, Any]]) -> str:
    lines = []
    for service in services:
        running = [i for i in service["instances"] if i["state"] == "running"]
        where = ", ".join(f"{i['node']} (slot {i['slot']})" for i in running) or "nowhere yet"
        lines.append(f"service {service['name']}: {len(running)}/{service['desired']} running on {where}")
    return "\n".join(lines)


def render(rows: list[dict[str, Any]], started: float) -> str:
    lines = []
    for row in rows:
        if "error" in row:
            lines.append((row.get("name", row.get("node")), row["api"], "-", "-", "-", row["error"]))
            continue
        m = row["members"]
        lines.append((row["node"], row["api"], f"{m['alive']}/{m['suspect']}/{m['dead']}/{m['left']}",
                      row["desired"]["revision"], "yes" if row["draining"] else "no", ""))
    header = ["NODE", "API", "ALIVE/SUSPECT/DEAD/LEFT", "REVISION", "DRAINING", "NOTE"]
    return f"nodeorch dev: {len(rows)} agents, {time.monotonic() - started:.0f}s\n" + table(lines, header)


def converged(rows: list[dict[str, Any]]) -> bool:
    return all("error" not in r and r["members"]["alive"] == len(rows) for r in rows)


async def dev(count: int, folder: Path) -> None:
    cluster = DevCluster(count, folder)
    cluster.prepare()
    print(f"nodeorch dev: {count} agents under {folder} (configs, keyring, data, agent.log)")
    print(f"  try: nodeorch members --api {cluster.apis[0]}    Ctrl-C stops every agent cleanly")
    started = time.monotonic()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    await cluster.start()
    interactive = sys.stdout.isatty()
    announced, last = False, ""
    try:
        while not stop.is_set():
            rows = await cluster.snapshot()
            screen = render(rows, started)
            services = render_services(await cluster.services())
            if services:
                screen += "\n" + services
            if not announced and converged(rows):
                announced = True
                screen += f"\nconverged: every agent sees {count} alive after {time.monotonic() - started:.1f}s"
            if interactive:
                sys.stdout.write("\x1b[H\x1b[2J" + screen + "\n")
                sys.stdout.flush()
            elif screen.split("\n", 1)[1] != last:
                print(screen, flush=True)
            last = screen.split("\n", 1)[1]
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 1.0)
    finally:
        print("\nstopping the agents (each leaves the cluster)...", flush=True)
        await cluster.stop()
        print("stopped.")


def run_dev(args: argparse.Namespace) -> int:
    if not 1 <= args.nodes <= MAX_NODES:
        print(f"nodeorch: --nodes must be between 1 and {MAX_NODES}", file=sys.stderr)
        return 2
    folder = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="nodeorch-dev-"))
    asyncio.run(dev(args.nodes, folder))
    return 0
