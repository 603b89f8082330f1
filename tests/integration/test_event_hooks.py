"""Event hooks running real commands, and user events across three real agents."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gossip._process import wait_until
from nodeorch.faces.event_hooks import HookRunner
from nodeorch.spec.hook_spec import HookSpec
from nodeorch.state.event_log import EventLog

from .agents import AgentProcess, agent_trio, cli

RECORDER = """
import json, os, sys, time
folder = sys.argv[1]
started = time.time()
lines = sys.stdin.read().splitlines()
time.sleep(float(os.environ.get("HOOK_SLEEP", "0")))
run = {"node": os.environ["NODEORCH_NODE"], "event": os.environ["NODEORCH_EVENT"],
       "count": int(os.environ["NODEORCH_EVENT_COUNT"]), "name": os.environ.get("NODEORCH_EVENT_NAME"),
       "payload": os.environ.get("NODEORCH_EVENT_PAYLOAD"), "events": [json.loads(l) for l in lines],
       "started": started, "ended": time.time()}
with open(os.path.join(folder, f"{run['node']}-{time.time_ns()}.json"), "w") as out:
    json.dump(run, out)
sys.exit(int(os.environ.get("HOOK_EXIT", "0")))
"""


def runs(folder: Path) -> list[dict[str, object]]:
    found = [json.loads(p.read_text()) for p in folder.glob("*.json")]
    return sorted(found, key=lambda run: float(str(run["started"])))


@contextlib.asynccontextmanager
async def hooks_running(*specs: HookSpec) -> AsyncIterator[tuple[EventLog, HookRunner]]:
    events = EventLog()
    runner = HookRunner("node-x", specs, events)
    task = asyncio.create_task(runner.run())
    await asyncio.sleep(0)
    try:
        yield events, runner
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@pytest.fixture
def recorder(tmp_path: Path) -> tuple[Path, Path]:
    script = tmp_path / "recorder.py"
    script.write_text(RECORDER)
    out = tmp_path / "runs"
    out.mkdir()
    return script, out


async def test_matching_events_within_the_window_go_to_one_run_on_stdin_and_in_the_environment(
    recorder: tuple[Path, Path]
) -> None:
    script, out = recorder
    spec = HookSpec("rec", ("member.*", "user.deploy"), (sys.executable, str(script), str(out)), coalesce=0.3)
    async with hooks_running(spec) as (events, runner):
        events.append("member.join", node="b")
        events.append("document.updated", node="b")  # not wanted
        events.append("member.dead", node="c")
        events.append("user.deploy", origin="b", payload="v7")
        await wait_until(lambda: runs(out), 10)
        await asyncio.sleep(0.5)
    (run,) = runs(out)
    assert [e["kind"] for e in run["events"]] == ["member.join", "member.dead", "user.deploy"]  # type: ignore
    assert (run["event"], run["count"], run["name"], run["payload"]) == ("user.deploy", 3, "deploy", "v7")
    assert runner.stats()["rec"]["ok"] == 1


async def test_a_hook_never_runs_twice_at_once_and_what_came_meanwhile_runs_next(
    recorder: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    script, out = recorder
    monkeypatch.setenv("HOOK_SLEEP", "1.0")
    spec = HookSpec("slow", ("user.*",), (sys.executable, str(script), str(out)), coalesce=0.0)
    async with hooks_running(spec) as (events, _):
        events.append("user.a")
        await wait_until(lambda: _running(script), 10)
        for name in ("b", "c", "d"):
            events.append(f"user.{name}")
        await wait_until(lambda: len(runs(out)) == 2, 15)
    first, second = runs(out)
    assert [e["kind"] for e in first["events"]] == ["user.a"]  # type: ignore
    assert [e["kind"] for e in second["events"]] == ["user.b", "user.c", "user.d"]  # type: ignore
    assert float(str(second["started"])) >= float(str(first["ended"])), "one run at a time"


def _running(script: Path) -> bool:
    for cmdline in Path("/proc").glob("*/cmdline"):
        with contextlib.suppress(OSError):
            if str(script).encode() in cmdline.read_bytes():
                return True
    return False


async def test_a_failing_hook_is_counted_and_said_and_feeds_no_hook(
    recorder: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    script, out = recorder
    monkeypatch.setenv("HOOK_EXIT", "4")
    spec = HookSpec("broken", ("*",), (sys.executable, str(script), str(out)), coalesce=0.0)
    missing = HookSpec("missing", ("user.*",), ("/nonexistent/hook",), coalesce=0.0)
    async with hooks_running(spec, missing) as (events, runner):
        events.append("user.go")
        await wait_until(lambda: runner.stats()["broken"]["failed"] == 1 and runner.stats()["missing"]["failed"], 10)
        await asyncio.sleep(0.5)
        failures = [e for e in events.since(0) if e["kind"] == "hook.failed"]
    assert sorted(f["hook"] for f in failures) == ["broken", "missing"]
    assert any("exited with 4" in f["problem"] for f in failures)
    assert any("cannot run '/nonexistent/hook'" in f["problem"] for f in failures)
    assert len(runs(out)) == 1, "hook.failed runs no hook, not even one matching *"


async def test_a_hook_past_its_timeout_is_killed_with_its_children(tmp_path: Path) -> None:
    pid_file = tmp_path / "child.pid"
    script = (f"import subprocess, time; p = subprocess.Popen(['sleep', '60']); "
              f"open('{pid_file}', 'w').write(str(p.pid)); time.sleep(60)")
    spec = HookSpec("stuck", ("user.*",), (sys.executable, "-c", script), timeout=1.0, coalesce=0.0)
    async with hooks_running(spec) as (events, runner):
        events.append("user.go")
        started = time.monotonic()
        await wait_until(lambda: runner.stats()["stuck"]["timed_out"] == 1, 10)
        assert time.monotonic() - started < 5
    child = int(pid_file.read_text())
    await wait_until(lambda: not Path(f"/proc/{child}").exists() or "Z" in _state(child), 5)
    assert any(e["kind"] == "hook.failed" and "timeout" in e["problem"] for e in events.since(0))


def _state(pid: int) -> str:
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    return ""


async def test_a_user_event_reaches_every_agent_once_and_runs_their_hooks(
    tmp_path: Path, recorder: tuple[Path, Path]
) -> None:
    script, out = recorder
    hook = f"""
[[hook]]
name = "record"
events = ["user.deploy"]
command = [{json.dumps(sys.executable)}, {json.dumps(str(script))}, {json.dumps(str(out))}]
coalesce = "200ms"
"""
    async with agent_trio(tmp_path, "revision = 1\n", extra=hook) as trio:
        await wait_until(lambda: all(len(a.cli_json("members")) == 3 for a in trio), 30)
        sent = cli("event", "deploy", "v7", "--api", trio[1].api)
        assert sent.returncode == 0 and "user event deploy" in sent.stdout, sent.stderr

        async def seen_everywhere() -> bool:
            return {str(run["node"]) for run in runs(out)} == {"node-1", "node-2", "node-3"}

        await wait_until(seen_everywhere, 20)
        await asyncio.sleep(3)  # every retransmission is over
        assert sorted(str(run["node"]) for run in runs(out)) == ["node-1", "node-2", "node-3"], "once per node"
        for agent in trio:
            delivered = [e for e in _events(agent) if e["kind"] == "user.deploy"]
            assert [(e["origin"], e["payload"]) for e in delivered] == [("node-2", "v7")], agent.name
        only_user = cli("events", "--json", "--kind", "user.*", "--api", trio[0].api)
        assert [json.loads(line)["kind"] for line in only_user.stdout.splitlines() if line.strip()] == ["user.deploy"]
        too_big = cli("event", "deploy", "x" * 600, "--api", trio[0].api)
        assert too_big.returncode == 1 and "limit is 512" in too_big.stderr
        bad = cli("event", "no spaces", "--api", trio[0].api)
        assert bad.returncode == 1 and "name:" in bad.stderr


def _events(agent: AgentProcess) -> list[dict[str, object]]:
    result = cli("events", "--json", "--api", agent.api, timeout=20)
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines() if line.strip()]

