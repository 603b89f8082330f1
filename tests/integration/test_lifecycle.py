"""Agents as a fleet starts and stops them: together. Three agents started at once place a scale-2
service once (never a third instance), and a fleet-wide SIGTERM stops every agent within the leave
timeout plus the stop grace, with no job started once stopping began."""

from __future__ import annotations

import asyncio
import contextlib
import re
import signal
import time
from pathlib import Path

import pytest

from drivers.containers.process import process_start_ticks
from nodeorch.agent import LEAVE_TIMEOUT

from .agents import AgentProcess, agent_trio, instance_pids

STOP_GRACE = 5.0
"""What an agent may take beyond the leave timeout to close its endpoint, discovery and node."""
TRIALS = 3
DESIRED = """\
revision = 1

[[service]]
name = "worker"
driver = "process"
command = ["sleep", "600"]
scale = 2
stop_grace = "1s"
"""


def running_instances(folder: Path, agents: list[AgentProcess]) -> list[str]:
    """service-slot@node of every instance process alive now."""
    return [f"{key}@{agent.name}" for agent in agents
            for key, pid in instance_pids(folder, agent.name).items() if process_start_ticks(pid) is not None]


def started_together(folder: Path) -> contextlib.AbstractAsyncContextManager[list[AgentProcess]]:
    return agent_trio(folder, DESIRED, ready=False, expect=3)


async def watch_instances(folder: Path, agents: list[AgentProcess], seconds: float) -> tuple[int, list[str]]:
    """The most instances seen running at once over `seconds`, and those running at the end."""
    most = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        most = max(most, len(running_instances(folder, agents)))
        await asyncio.sleep(0.05)
    return most, running_instances(folder, agents)


@pytest.mark.parametrize("trial", range(TRIALS))
async def test_agents_started_together_never_run_a_third_instance_of_a_scale_2_service(
    tmp_path: Path, trial: int
) -> None:
    async with started_together(tmp_path) as agents:
        most, final = await watch_instances(tmp_path, agents, 12)
        assert len(final) == 2, final
        assert most == 2, f"{most} instances of a scale-2 service ran at once"


@pytest.mark.parametrize("trial", range(TRIALS))
async def test_a_fleet_wide_sigterm_stops_every_agent_in_time_and_starts_no_job(tmp_path: Path, trial: int) -> None:
    async with started_together(tmp_path) as agents:
        for agent in agents:
            await agent.wait_ready()
        _, final = await watch_instances(tmp_path, agents, 8)
        assert len(final) == 2, final
        stopped = time.monotonic()
        for agent in agents:
            assert agent.proc is not None
            agent.proc.send_signal(signal.SIGTERM)
        for agent in agents:
            assert agent.proc is not None
            remaining = LEAVE_TIMEOUT + STOP_GRACE - (time.monotonic() - stopped)
            code = await asyncio.to_thread(agent.proc.wait, max(remaining, 0.1))
            assert code == 0, f"{agent.name} exited {code}"
        for agent in agents:
            log = agent.log.read_text()
            stopping = log.index("stopping: no new jobs")
            late = re.findall(r"job \d+ started: .*", log[stopping:])
            assert not late, f"{agent.name} started jobs while stopping: {late}"
        assert len(running_instances(tmp_path, agents)) == 2, "instances outlive their agents by design"
