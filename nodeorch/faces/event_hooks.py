"""Event hooks: the `[[hook]]` commands of nodeorch.toml, run for the events of this agent's log
(Serf's event handlers are the model).

Each hook gets the events whose kind matches one of its patterns, coalesced over its window (the
first event opens it), as newline-delimited JSON on stdin and the last one in the environment
(NODEORCH_EVENT, NODEORCH_EVENT_JSON, and for a user event NODEORCH_EVENT_NAME and
NODEORCH_EVENT_PAYLOAD; NODEORCH_EVENT_COUNT, NODEORCH_HOOK, NODEORCH_NODE). A hook never runs
twice at once: what arrives while it runs waits for the next run. A run past its timeout has its
process group killed; a failure is logged, counted and logged as `hook.failed`, and never holds
the agent up. `hook.*` events run no hook, so a failing hook cannot feed itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import json
import logging
import os
import signal
from collections import Counter
from collections.abc import Sequence
from typing import Any

from nodeorch.spec.hook_spec import HookSpec
from nodeorch.state.event_log import Event, EventLog

log = logging.getLogger(__name__)

MAX_PENDING = 1000
"""Events held per hook while it runs or coalesces; beyond, the oldest are dropped (counted)."""
OUTPUT_KEPT = 2000
"""Characters of a failed run's output kept for the log and the hook.failed event."""


class _Hook:
    def __init__(self, spec: HookSpec) -> None:
        self.spec = spec
        self.pending: list[Event] = []
        self.wake = asyncio.Event()
        self.counts: Counter[str] = Counter()

    def wants(self, kind: str) -> bool:
        return not kind.startswith("hook.") and any(fnmatch.fnmatchcase(kind, p) for p in self.spec.events)

    def add(self, event: Event) -> None:
        self.pending.append(event)
        if len(self.pending) > MAX_PENDING:
            del self.pending[0]
            self.counts["dropped"] += 1
        self.wake.set()


class HookRunner:
    def __init__(self, node: str, hooks: Sequence[HookSpec], events: EventLog) -> None:
        self._node = node
        self._events = events
        self._hooks = [_Hook(spec) for spec in hooks]

    def stats(self) -> dict[str, dict[str, int]]:
        """Per hook: runs ok, failed, timed_out, and events dropped."""
        return {h.spec.name: {k: h.counts[k] for k in ("ok", "failed", "timed_out", "dropped")}
                for h in self._hooks}

    async def run(self) -> None:
        """Feed the hooks the events appended from now on, until cancelled."""
        if not self._hooks:
            return
        async with asyncio.TaskGroup() as tasks:
            for hook in self._hooks:
                tasks.create_task(self._serve(hook))
            seq = self._events.last_seq
            while True:
                for event in await self._events.wait_after(seq, 60.0):
                    seq = event["seq"]
                    for hook in self._hooks:
                        if hook.wants(event["kind"]):
                            hook.add(event)

    async def _serve(self, hook: _Hook) -> None:
        while True:
            await hook.wake.wait()
            await asyncio.sleep(hook.spec.coalesce)
            hook.wake.clear()
            batch, hook.pending = hook.pending, []
            if batch:
                await self._run_once(hook, batch)

    async def _run_once(self, hook: _Hook, batch: list[Event]) -> None:
        spec = hook.spec
        last = batch[-1]
        env = {**os.environ, "NODEORCH_NODE": self._node, "NODEORCH_HOOK": spec.name,
               "NODEORCH_EVENT": last["kind"], "NODEORCH_EVENT_COUNT": str(len(batch)),
               "NODEORCH_EVENT_JSON": json.dumps(last)}
        if last["kind"].startswith("user."):
            env["NODEORCH_EVENT_NAME"] = last["kind"].removeprefix("user.")
            env["NODEORCH_EVENT_PAYLOAD"] = str(last.get("payload", ""))
        stdin = "".join(json.dumps(event) + "\n" for event in batch).encode()
        try:
            proc = await asyncio.create_subprocess_exec(
                *spec.command, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT, env=env, start_new_session=True)
        except OSError as error:
            self._failed(hook, batch, f"cannot run {spec.command[0]!r}: {error.strerror}", None)
            return
        try:
            async with asyncio.timeout(spec.timeout):
                output, _ = await proc.communicate(stdin)
        except TimeoutError:
            _kill_group(proc.pid)
            output = b""
            await proc.wait()
            hook.counts["timed_out"] += 1
            self._failed(hook, batch, f"killed after its timeout of {spec.timeout:g} s", None, count=False)
            return
        finally:
            if proc.returncode is None:  # cancelled: the agent is stopping
                _kill_group(proc.pid)
                with contextlib.suppress(ProcessLookupError):
                    await asyncio.shield(proc.wait())
        text = output.decode(errors="replace")[-OUTPUT_KEPT:]
        if proc.returncode != 0:
            self._failed(hook, batch, f"exited with {proc.returncode}", text)
            return
        hook.counts["ok"] += 1
        log.debug("%s: hook %s ran for %d events", self._node, spec.name, len(batch))

    def _failed(self, hook: _Hook, batch: list[Event], problem: str, output: str | None,
                count: bool = True) -> None:
        if count:
            hook.counts["failed"] += 1
        log.warning("%s: hook %s failed for %d events (%s): %s%s", self._node, hook.spec.name, len(batch),
                    ", ".join(sorted({e["kind"] for e in batch})), problem, f"\n{output}" if output else "")
        fields: dict[str, Any] = {"hook": hook.spec.name, "problem": problem, "events": len(batch)}
        if output:
            fields["output"] = output
        self._events.append("hook.failed", **fields)


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)
