"""The lifeline of `nodeorch dev`: `python -m nodeorch.faces.dev_lifeline FOLDER`.

It reads lines from the pipe that `nodeorch dev` holds open: `agent PID` for each agent started,
`done` after a clean stop. When the pipe closes without `done` (the command was killed, even with
kill -9), it stops the agents itself (SIGTERM, then SIGKILL after a timeout) and then their
instances, so nothing of the dev cluster outlives the command.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
from pathlib import Path

from drivers.containers.process import process_start_ticks
from nodeorch.faces.dev import AGENT_STOP_TIMEOUT, stop_instances


def read_pipe() -> tuple[dict[int, int | None], bool]:
    """Agents announced (pid -> start ticks, to never signal a recycled pid), and whether the
    command stopped cleanly."""
    agents: dict[int, int | None] = {}
    for raw in sys.stdin:
        line = raw.strip()
        if line == "done":
            return agents, True
        if line.startswith("agent ") and line[6:].isdigit():
            pid = int(line[6:])
            agents[pid] = process_start_ticks(pid)
    return agents, False


def running(agents: dict[int, int | None]) -> list[int]:
    return [pid for pid, ticks in agents.items() if ticks is not None and process_start_ticks(pid) == ticks]


def stop_agents(agents: dict[int, int | None]) -> None:
    for pid in running(agents):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + AGENT_STOP_TIMEOUT
    while running(agents) and time.monotonic() < deadline:
        time.sleep(0.1)  # not our children: nothing to wait on but their /proc entries
    for pid in running(agents):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def main(folder: Path) -> int:
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    agents, clean = read_pipe()
    if clean:
        return 0
    print(f"nodeorch dev ended without stopping its agents; stopping {len(running(agents))} agents", flush=True)
    stop_agents(agents)
    asyncio.run(stop_instances(folder))
    print("stopped", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(Path(sys.argv[1])))
