"""`nodeorch dev --nodes N`: a local cluster of real agents on loopback, like separate hosts.

Agent i gets its own loopback address (127.0.0.2, 127.0.0.3, ... or from --base-ip) with the same
ports, a config file, a data directory and a log file under one folder, and the cluster shares a
generated keyring. The agents are started with `[cluster] expect = N`, so they place once, together.
The command waits for the agents to converge, shows a live status table, and on Ctrl-C, SIGTERM or
SIGHUP (the terminal closed) stops them all cleanly (each leaves the cluster), then the instances
they ran.

The agents never outlive the command: they run in sessions of their own (the terminal's signals
reach only `nodeorch dev`), and a lifeline process (`python -m nodeorch.faces.dev_lifeline`) holds a pipe
from this command; when the pipe closes without a clean stop (kill -9 of `nodeorch dev`), it stops
the agents and their instances itself.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fcntl
import ipaddress
import json
import os
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from drivers.containers.process import ProcessDriver
from nodeorch.errors import NodeorchError
from nodeorch.faces.client import call
from nodeorch.faces.port_holders import taken_ports
from nodeorch.faces.tables import table
from nodeorch.reconcile.engine_keeper import stop_engines
from nodeorch.reconcile.replica_server_keeper import stop_replica_server
from nodeorch.reconcile.volume_keeper import volume_attacher
from nodeorch.spec.node_config import DEFAULT_API_PORT, DEFAULT_GOSSIP_PORT, render_node_config
from nodeorch.spec.secret_files import write_keyring

MAX_NODES = 200
AGENT_STOP_TIMEOUT = 15.0
"""How long a stopping agent may take (leave timeout plus grace) before it is killed."""
NODES_FILE = "nodes.json"


class DevError(NodeorchError):
    """The dev cluster cannot start; the message says why and what to do."""


def loopback_range(base: str, count: int) -> list[str]:
    first = ipaddress.IPv4Address(base)
    last = first + (count - 1)
    if not (first.is_loopback and last.is_loopback):
        raise DevError(f"--base-ip {base}: {count} addresses from there must stay inside 127.0.0.0/8")
    return [str(first + i) for i in range(count)]


def busy_ports(ips: list[str]) -> list[str]:
    return [problem for ip in ips for problem in taken_ports(ip, (DEFAULT_GOSSIP_PORT, DEFAULT_API_PORT))]


def claim(ip: str) -> int | None:
    """Hold a lock on the range starting at `ip` for this command's lifetime (the kernel drops it
    when the process dies, even by kill -9): two dev commands started together never pick the same
    range. The open descriptor, or None if another dev command holds it."""
    path = Path(tempfile.gettempdir()) / f"nodeorch-dev-{ip}.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    return fd


def choose_addresses(count: int, base: str | None) -> tuple[list[str], int]:
    """The agents' addresses and the lock that reserves them: from `base` when given (refused,
    naming who holds a port, when one is taken); else the first range 127.0.X.2.. that no other
    dev command holds and whose ports are all free, so dev clusters can run side by side."""
    if base is not None:
        ips = loopback_range(base, count)
        lock = claim(ips[0])
        if lock is None:
            raise DevError(f"another `nodeorch dev` runs on {ips[0]}; choose other addresses with --base-ip")
        problems = busy_ports(ips)
        if problems:
            os.close(lock)
            raise DevError("ports are taken:\n  " + "\n  ".join(problems)
                           + "\n  stop what holds them, or choose other addresses with --base-ip")
        return ips, lock
    for third in range(256):
        ips = loopback_range(f"127.0.{third}.2", count)
        lock = claim(ips[0])
        if lock is None:
            continue
        if not busy_ports(ips):
            return ips, lock
        os.close(lock)
    raise DevError("no free loopback range found in 127.0.0.0/16; choose one with --base-ip")


def demo_desired(volumes: bool = True) -> str:
    """The demo desired state of `nodeorch dev`: the same file for every agent. The web service
    serves its folder over HTTP on the address of the agent that runs it; with `volumes`, a
    key-value service keeps its data on a replicated volume (port 8081)."""
    text = f"""\
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
    if volumes:
        text += f"""
[[volume]]
name = "kv"
size = "256MiB"
replicas = 3
replica_timeout = "4s"
replenish_wait = "120s"

[[service]]
name = "kv"
driver = "process"
command = ["{sys.executable}", "-m", "nodeorch.faces.demo_kv", "--data", "${{NODEORCH_VOLUME_KV}}",
           "--bind", "${{NODEORCH_NODE_ADDR}}", "--port", "8081"]
volumes = [{{ volume = "kv", path = "/data" }}]

[service.health]
kind = "http"
port = 8081
path = "/"
interval = "1s"
"""
    return text


def volume_demo_left_out() -> str:
    """Why the demo's volume-backed service is left out on this machine, or "" when it runs."""
    _, reason = volume_attacher(Path("."))
    return reason


def node_config(index: int, folder: Path, ips: list[str]) -> str:
    ip = ips[index]
    return render_node_config(
        name=f"node-{index + 1}", data_dir=folder / f"node-{index + 1}" / "data", cluster="dev",
        keyring=folder / "keyring", bind=f"{ip}:{DEFAULT_GOSSIP_PORT}", api=f"{ip}:{DEFAULT_API_PORT}",
        desired=folder / "desired.toml", seeds=[f"{ips[0]}:{DEFAULT_GOSSIP_PORT}"] if index else [],
        labels={"zone": f"z{index % 3 + 1}"}, expect=len(ips),
    )


async def stop_instances(folder: Path) -> None:
    """Stop the process instances, engines and replica servers the dev agents ran (they outlive an
    agent by design)."""
    nodes = json.loads((folder / NODES_FILE).read_text())
    for node in nodes:
        driver = ProcessDriver(folder / node["name"] / "data", node["name"], node["ip"])
        for instance in await driver.instances():
            await driver.stop(instance.service, instance.slot, grace=5)
        await asyncio.to_thread(stop_engines, folder / node["name"] / "data")
        await asyncio.to_thread(stop_replica_server, folder / node["name"] / "data")


class DevCluster:
    def __init__(self, count: int, folder: Path, desired: str | None = None, base_ip: str | None = None) -> None:
        self.count = count
        self.folder = folder
        self.left_out = "" if desired is not None else volume_demo_left_out()
        self.desired = desired if desired is not None else demo_desired(volumes=not self.left_out)
        self.base_ip = base_ip
        self.procs: list[asyncio.subprocess.Process] = []
        self.ips: list[str] = []
        self.apis: list[str] = []
        self._lifeline: asyncio.subprocess.Process | None = None
        self._range_lock: int | None = None

    def prepare(self) -> None:
        """Choose free addresses and write the configs, keyring and desired state (DevError if the
        addresses asked for are taken)."""
        self.ips, self._range_lock = choose_addresses(self.count, self.base_ip)
        self.apis = [f"{ip}:{DEFAULT_API_PORT}" for ip in self.ips]
        self.folder.mkdir(parents=True, exist_ok=True)
        keyring = self.folder / "keyring"
        if not keyring.exists():
            write_keyring(keyring)
        (self.folder / "desired.toml").write_text(self.desired)
        nodes = []
        for i in range(self.count):
            node = self.folder / f"node-{i + 1}"
            (node / "data").mkdir(parents=True, exist_ok=True)
            (node / "nodeorch.toml").write_text(node_config(i, self.folder, self.ips))
            nodes.append({"name": f"node-{i + 1}", "ip": self.ips[i]})
        (self.folder / NODES_FILE).write_text(json.dumps(nodes))

    async def start(self) -> None:
        with (self.folder / "lifeline.log").open("ab") as log:
            self._lifeline = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "nodeorch.faces.dev_lifeline", str(self.folder),
                stdin=asyncio.subprocess.PIPE, stdout=log, stderr=log, start_new_session=True,
            )
        for i in range(self.count):
            self.procs.append(await self.start_agent(i))

    async def start_agent(self, index: int) -> asyncio.subprocess.Process:
        """Agent `index` in a session of its own: a closed terminal or Ctrl-C reaches only this
        command, which then stops the agents in order."""
        node = self.folder / f"node-{index + 1}"
        with (node / "agent.log").open("ab") as log:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "nodeorch", "agent", "--config", str(node / "nodeorch.toml"),
                stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True,
            )
        await self._tell_lifeline(f"agent {proc.pid}")
        return proc

    async def _tell_lifeline(self, line: str) -> None:
        if self._lifeline is not None and self._lifeline.stdin is not None:
            with contextlib.suppress(ConnectionError):
                self._lifeline.stdin.write(line.encode() + b"\n")
                await self._lifeline.stdin.drain()

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
        outlive an agent by design; then release the lifeline."""
        for proc in self.procs:
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(AGENT_STOP_TIMEOUT):
                    await proc.wait()
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        await stop_instances(self.folder)
        if self._lifeline is not None:
            await self._tell_lifeline("done")
            if self._lifeline.stdin is not None:
                self._lifeline.stdin.close()
            await self._lifeline.wait()
        if self._range_lock is not None:
            os.close(self._range_lock)
            self._range_lock = None

    async def services(self) -> list[dict[str, Any]]:
        return await self._first_answer("/v1/services")

    async def volumes(self) -> list[dict[str, Any]]:
        return await self._first_answer("/v1/volumes")

    async def _first_answer(self, path: str) -> list[dict[str, Any]]:
        for api in self.apis:
            with contextlib.suppress(Exception):
                result: list[dict[str, Any]] = await call(api, "GET", path)
                return result
        return []


def render_volumes(volumes: list[dict[str, Any]]) -> str:
    lines = []
    for volume in volumes:
        engine = volume.get("engine")
        where = f"engine on {engine['node']} (epoch {engine['epoch']})" if engine else "no engine"
        replicas = ", ".join(f"{r['node']}:{r['mode']}" + (f" {r['progress']:.0%}" if r.get("progress") else "")
                             for r in volume["replicas"])
        lines.append(f"volume {volume['name']}: {volume['state']}, {where}, replicas {replicas or 'none yet'}")
    return "\n".join(lines)


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


def _say(text: str) -> None:
    """Print, unless the terminal is gone (SIGHUP): stopping must go on regardless."""
    with contextlib.suppress(OSError):
        print(text, flush=True)


async def dev(cluster: DevCluster) -> None:
    count = cluster.count
    _say(f"nodeorch dev: {count} agents on {cluster.ips[0]}..{cluster.ips[-1]} under {cluster.folder} "
         "(configs, keyring, data, agent.log)")
    _say(f"  try: nodeorch members --api {cluster.apis[0]}    Ctrl-C stops every agent cleanly")
    if cluster.left_out:
        _say(f"  the volume-backed key-value service is left out: {cluster.left_out} (run as root with the tools "
             "`make test` installs: nbdkit, libnbd-bin, fuse3, e2fsprogs)")
    else:
        _say("  a key-value service keeps its data on a replicated volume: curl -X PUT --data hello "
             "http://NODE-ADDRESS:8081/greeting (see `nodeorch services` for NODE-ADDRESS)")
    started = time.monotonic()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        loop.add_signal_handler(signum, stop.set)
    try:
        await cluster.start()
        await show_live_status(cluster, stop, started)
    finally:
        _say("\nstopping the agents (each leaves the cluster)...")
        await cluster.stop()
        _say("stopped.")


async def show_live_status(cluster: DevCluster, stop: asyncio.Event, started: float) -> None:
    interactive = sys.stdout.isatty()
    announced, last = False, ""
    while not stop.is_set():
        rows = await cluster.snapshot()
        screen = render(rows, started)
        services = render_services(await cluster.services())
        if services:
            screen += "\n" + services
        volumes = render_volumes(await cluster.volumes())
        if volumes:
            screen += "\n" + volumes
        if not announced and converged(rows):
            announced = True
            screen += f"\nconverged: every agent sees {cluster.count} alive after {time.monotonic() - started:.1f}s"
        with contextlib.suppress(OSError):
            if interactive:
                sys.stdout.write("\x1b[H\x1b[2J" + screen + "\n")
                sys.stdout.flush()
            elif screen.split("\n", 1)[1] != last:
                print(screen, flush=True)
        last = screen.split("\n", 1)[1]
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(1.0):
                await stop.wait()


def run_dev(args: argparse.Namespace) -> int:
    if not 1 <= args.nodes <= MAX_NODES:
        print(f"nodeorch: --nodes must be between 1 and {MAX_NODES}", file=sys.stderr)
        return 2
    folder = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="nodeorch-dev-"))
    cluster = DevCluster(args.nodes, folder, base_ip=args.base_ip)
    try:
        cluster.prepare()
    except (DevError, ValueError) as error:
        print(f"nodeorch dev: {error}", file=sys.stderr)
        return 2
    asyncio.run(dev(cluster))
    return 0
