"""The process driver: service instances as supervised local processes (needs nothing installed).

Each instance runs its argv in its own process group and session, with its env plus
NODEORCH_SERVICE, NODEORCH_SLOT, NODEORCH_NODE, NODEORCH_NODE_ADDR and NODEORCH_VOLUME_<NAME> for
each attached volume (argv may refer to any of
them as ${NAME}, e.g. to bind the node's address), output appended to
data_dir/logs/<service>-<slot>.log. A pid file (data_dir/run/<service>-<slot>.json) records the
pid and the process start time from /proc, so a restarted agent adopts the running process instead
of starting a duplicate, and never mistakes a recycled pid for it. Stop is SIGTERM to the group,
then SIGKILL after the grace period.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import signal
import string
import subprocess
import time
from pathlib import Path
from typing import Any

from drivers.containers._types import DriverError, InstanceSpec, InstanceState, InstanceStatus, logical_slot

_SAFE_ENV = ("PATH", "LANG", "LC_ALL", "TZ", "HOME")


def process_start_ticks(pid: int) -> int | None:
    """The process start time in clock ticks since boot (field 22 of /proc/PID/stat), or None."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    if fields[0] == "Z":
        return None  # a zombie has finished running
    return int(fields[19])


class ProcessDriver:
    name = "process"

    def __init__(self, data_dir: Path, node: str, node_addr: str) -> None:
        self._run = data_dir / "run"
        self._logs = data_dir / "logs"
        self._node = node
        self._node_addr = node_addr
        self._children: dict[str, subprocess.Popen[bytes]] = {}
        self._exit_codes: dict[str, int] = {}

    def _pid_file(self, service: str, slot: str) -> Path:
        return self._run / f"{service}-{slot}.json"

    def _spawn(self, spec: InstanceSpec) -> subprocess.Popen[bytes]:
        self._run.mkdir(parents=True, exist_ok=True)
        self._logs.mkdir(parents=True, exist_ok=True)
        env = {k: os.environ[k] for k in _SAFE_ENV if k in os.environ}
        env.update(spec.env)
        env.update(NODEORCH_SERVICE=spec.service, NODEORCH_SLOT=logical_slot(spec.slot), NODEORCH_NODE=self._node,
                   NODEORCH_NODE_ADDR=self._node_addr)
        env.update({volume.variable: volume.source for volume in spec.volumes})
        with (self._logs / f"{spec.service}-{spec.slot}.log").open("ab") as log:
            log.write(f"--- {time.strftime('%Y-%m-%dT%H:%M:%S')} starting {spec.key}: {list(spec.command)}\n".encode())
            log.flush()
            argv = [string.Template(arg).safe_substitute(env) for arg in spec.command]
            try:
                return subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=log,
                                        stderr=subprocess.STDOUT, start_new_session=True, close_fds=True)
            except OSError as error:
                raise DriverError(f"{spec.key}: cannot run {spec.command[0]!r}: {error.strerror}",
                                  transient=False) from None

    def _write_pid_file(self, spec: InstanceSpec, pid: int) -> None:
        record = {"pid": pid, "start_ticks": process_start_ticks(pid), "service": spec.service, "slot": spec.slot,
                  "digest": spec.digest, "started_at": time.time()}
        path = self._pid_file(spec.service, spec.slot)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(record))
        tmp.replace(path)

    async def start(self, spec: InstanceSpec) -> InstanceStatus:
        if not spec.command:
            raise DriverError(f"{spec.key}: no command to run", transient=False)
        current = self._read(self._pid_file(spec.service, spec.slot))
        if current is not None and current.state is InstanceState.RUNNING:
            raise DriverError(f"{spec.key} already runs here (pid {current.ref})", transient=False)
        proc = self._spawn(spec)
        self._children[spec.key] = proc
        self._exit_codes.pop(spec.key, None)
        self._write_pid_file(spec, proc.pid)
        status = self._read(self._pid_file(spec.service, spec.slot))
        assert status is not None
        return status

    def _read(self, path: Path) -> InstanceStatus | None:
        try:
            record: dict[str, Any] = json.loads(path.read_text())
            pid, service, slot = int(record["pid"]), str(record["service"]), str(record["slot"])
        except (OSError, ValueError, KeyError, TypeError):
            return None
        key = f"{service}/{slot}"
        child = self._children.get(key)
        if child is not None and child.pid == pid:
            code = child.poll()
            if code is not None:
                self._exit_codes[key] = code
                del self._children[key]
        running = key not in self._exit_codes and process_start_ticks(pid) == record.get("start_ticks")
        return InstanceStatus(
            service, slot, str(record.get("digest", "")),
            InstanceState.RUNNING if running else InstanceState.EXITED,
            str(pid), float(record.get("started_at", 0.0)),
            None if running else self._exit_codes.get(key),
        )

    async def instances(self) -> list[InstanceStatus]:
        if not self._run.is_dir():
            return []
        found = [self._read(path) for path in sorted(self._run.glob("*.json"))]
        return [s for s in found if s is not None]

    async def stop(self, service: str, slot: str, grace: float) -> None:
        key = f"{service}/{slot}"
        path = self._pid_file(service, slot)
        status = self._read(path)
        groups = set()
        if status is not None and status.state is InstanceState.RUNNING:
            groups.add(int(status.ref))
        child = self._children.get(key)
        if child is not None and child.poll() is None:
            groups.add(child.pid)
        self._signal(groups, signal.SIGTERM)
        if not await self._gone(key, groups, grace):
            self._signal(groups, signal.SIGKILL)
            await self._gone(key, groups, None)
        child = self._children.pop(key, None)
        if child is not None:
            child.wait()  # already dead: reaps it
        self._exit_codes.pop(key, None)
        path.unlink(missing_ok=True)

    async def _gone(self, key: str, groups: set[int], timeout: float | None) -> bool:
        """Poll until every process is gone (adopted processes are not our children: no event
        tells their end); False if the timeout came first."""
        deadline = None if timeout is None else time.monotonic() + timeout
        for _ in itertools.count():
            if not any(self._alive(key, pid) for pid in groups):
                return True
            if deadline is not None and time.monotonic() >= deadline:
                break
            await asyncio.sleep(0.05)
        return False

    @staticmethod
    def _signal(groups: set[int], signum: int) -> None:
        for pid in groups:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signum)

    def _alive(self, key: str, pid: int) -> bool:
        child = self._children.get(key)
        if child is not None and child.pid == pid:
            return child.poll() is None
        return process_start_ticks(pid) is not None
