"""Agents as real processes for the integration tests: configs in a temp folder, one loopback
address each (like separate hosts), and the CLI run as a user would run it."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

from nodeorch.reconcile.engine_keeper import stop_engines
from nodeorch.reconcile.replica_server_keeper import stop_replica_server
from nodeorch.spec.node_config import render_node_config
from nodeorch.spec.secret_files import write_keyring

from .conftest import free_port


def cli(*args: str, timeout: float = 20, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "nodeorch", *args], capture_output=True, text=True,
                          timeout=timeout, check=False, env={**os.environ, **(env or {})})


class AgentProcess:
    def __init__(self, folder: Path, name: str, ip: str, seeds: list[str], *, cluster: str = "test",
                 extra: str = "", env: dict[str, str] | None = None, desired: Path | None = None,
                 **settings: Any) -> None:
        """`settings` go to render_node_config (expect, allowed_hosts, token_file...)."""
        self.name = name
        self.ip = ip
        self.gossip_port = free_port()
        self.api_port = free_port()
        self.api = f"{ip}:{self.api_port}"
        self.gossip = f"{ip}:{self.gossip_port}"
        self.dir = folder / name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.config = self.dir / "nodeorch.toml"
        self.log = self.dir / "agent.log"
        self.env = env or {}
        keyring = folder / "keyring"
        if not keyring.exists():
            write_keyring(keyring)
        desired = desired or folder / "desired.toml"
        if not desired.exists():
            desired.write_text("revision = 1\n")
        self.config.write_text(render_node_config(
            name=name, data_dir=self.dir / "data", cluster=cluster, keyring=keyring, bind=self.gossip,
            api=self.api, desired=desired, seeds=seeds, labels={"zone": f"z-{name}"}, **settings,
        ) + extra)

        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "nodeorch", "agent", "--config", str(self.config), "--log-level", "debug"],
                stdout=log, stderr=log, stdin=subprocess.DEVNULL, env={**os.environ, **self.env},
            )

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def terminate(self, timeout: float = 15) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def cli_json(self, *args: str) -> Any:
        result = cli(*args, "--api", self.api, "--json", env=self.env)
        assert result.returncode == 0, f"{args}: {result.returncode} {result.stderr}"
        return json.loads(result.stdout)

    async def wait_ready(self, timeout: float = 20) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while loop.time() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"{self.name} exited {self.proc.returncode}: {self.log.read_text()[-2000:]}")
            if cli("status", "--api", self.api, timeout=5, env=self.env).returncode == 0:
                return
            await asyncio.sleep(0.2)
        raise AssertionError(f"{self.name} not ready: {self.log.read_text()[-2000:]}")


def states(agent: AgentProcess) -> dict[str, str]:
    return {m["name"]: m["state"] for m in agent.cli_json("members")}


def instance_pids(folder: Path, name: str) -> dict[str, int]:
    """The instance pids an agent's process driver recorded (service-slot -> pid)."""
    run = folder / name / "data" / "run"
    return {p.stem: json.loads(p.read_text())["pid"] for p in run.glob("*.json")} if run.is_dir() else {}


@contextlib.asynccontextmanager
async def agent_trio(folder: Path, desired: str, names: Sequence[str] = ("node-1", "node-2", "node-3"),
                     *, ready: bool = True, **settings: Any) -> AsyncIterator[list[AgentProcess]]:
    """Three agents on 127.0.0.2-4 sharing `desired` (started together; with `ready`, once each
    answers); on exit the agents and the process instances they ran are killed (instances outlive
    a killed agent by design). `settings` go into every nodeorch.toml (expect=3...)."""
    (folder / "desired.toml").write_text(desired)
    first = AgentProcess(folder, names[0], "127.0.0.2", [], **settings)
    agents = [first] + [AgentProcess(folder, name, f"127.0.0.{i + 2}", [first.gossip], **settings)
                        for i, name in enumerate(names[1:], start=1)]
    try:
        for agent in agents:
            agent.start()
        for agent in agents:
            if ready:
                await agent.wait_ready()
        yield agents
    finally:
        for agent in agents:
            agent.kill()
        for agent in agents:
            for pid in instance_pids(folder, agent.name).values():
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pid, signal.SIGKILL)
            stop_engines(folder / agent.name / "data", grace=0)
            stop_replica_server(folder / agent.name / "data", grace=0)
