"""`nodeorch dev` as a user runs it: two clusters at once, a closed terminal (SIGHUP), a kill -9,
and a port somebody else holds. Nothing of a dev cluster may outlive the command."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from drivers.attach.fuse_loop import mounts_under
from drivers.containers.process import process_start_ticks
from gossip._process import wait_until
from nodeorch.faces.dev import volume_demo_left_out

from .agents import cli


class DevRun:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.output = folder.with_suffix(".out")
        with self.output.open("wb") as out:
            # A session of its own, as a terminal gives it: signals sent to it reach nobody else.
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "nodeorch", "dev", "--nodes", "2", "--dir", str(folder)],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
            )

    def first_api(self) -> str | None:
        match = re.search(r"nodeorch members --api (\S+)", self.output.read_text())
        return match.group(1) if match else None

    def processes(self) -> list[int]:
        """Processes whose command line names this dev cluster's folder: the command, its lifeline
        and its agents."""
        pids = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                with contextlib.suppress(OSError):
                    if str(self.folder) in entry.joinpath("cmdline").read_bytes().decode(errors="replace"):
                        pids.append(int(entry.name))
        return pids

    def instance_pids(self) -> list[int]:
        return [json.loads(p.read_text())["pid"] for p in self.folder.glob("node-*/data/run/*.json")]


def alive(pid: int) -> bool:
    return process_start_ticks(pid) is not None


@pytest.fixture
def dev_runs(tmp_path: Path) -> Iterator[list[DevRun]]:
    runs: list[DevRun] = []
    yield runs
    for run in runs:  # whatever a failed test left: the command, its agents, their instances
        with contextlib.suppress(ProcessLookupError):
            run.proc.kill()
        run.proc.wait(10)
        for pid in run.processes() + run.instance_pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


async def running_instances(run: DevRun, count: int) -> list[int] | None:
    pids = [pid for pid in run.instance_pids() if alive(pid)]
    return pids if len(pids) >= count else None


async def test_two_dev_clusters_run_at_once_and_neither_outlives_its_command(
    tmp_path: Path, dev_runs: list[DevRun]
) -> None:
    hung_up, killed = DevRun(tmp_path / "first"), DevRun(tmp_path / "second")
    dev_runs += [hung_up, killed]
    for run in dev_runs:
        await wait_until(lambda run=run: run.first_api() is not None, 30)  # type: ignore[misc]
    apis = [run.first_api() for run in dev_runs]
    assert apis[0] != apis[1], "the second cluster chose free addresses of its own"
    for api in apis:
        assert api is not None

        async def two_alive(api: str = api) -> bool:
            result = cli("status", "--api", api, "--json", timeout=5)
            return result.returncode == 0 and json.loads(result.stdout)["members"]["alive"] == 2

        await wait_until(two_alive, 30)
    # the demo's scale-2 web service runs in each cluster, and as root its volume-backed kv service
    expected = 2 if volume_demo_left_out() else 3
    for run in dev_runs:
        await wait_until(lambda run=run: running_instances(run, expected), 60)  # type: ignore[misc]
    doomed = {id(run): run.processes() + run.instance_pids() for run in dev_runs}
    # command, lifeline, 2 agents, the instances (and replica servers, an engine, nbdfuse)
    assert all(len(pids) >= 4 + expected for pids in doomed.values()), doomed

    started = time.monotonic()
    hung_up.proc.send_signal(signal.SIGHUP)  # the terminal that ran it was closed
    killed.proc.send_signal(signal.SIGKILL)  # no chance to clean up: the lifeline does
    assert hung_up.proc.wait(30) == 0
    killed.proc.wait(10)

    async def all_gone() -> bool:
        return not any(alive(pid) for pids in doomed.values() for pid in pids)

    await wait_until(all_gone, 30)
    print(f"both clusters gone {time.monotonic() - started:.1f}s after SIGHUP and kill -9")
    assert "stopped." in hung_up.output.read_text()
    assert [run.processes() for run in dev_runs] == [[], []], "nothing started later outlives it either"
    assert not mounts_under(tmp_path), "no volume stays mounted"


def test_a_taken_port_is_reported_with_what_holds_it(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as holder:
        holder.bind(("127.0.9.3", 7946))
        result = subprocess.run(
            [sys.executable, "-m", "nodeorch", "dev", "--nodes", "2", "--dir", str(tmp_path), "--base-ip", "127.0.9.2"],
            capture_output=True, text=True, timeout=30, check=False,
        )
    assert result.returncode == 2, result.stderr
    assert f"127.0.9.3:7946/udp is held by pid {os.getpid()}" in result.stderr
    assert "--base-ip" in result.stderr
