"""The status endpoint against what a web page could make a browser send, a missing token, and
the mode of its unix socket: a real agent, real HTTP."""

from __future__ import annotations

import os
import stat
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from .agents import AgentProcess, cli

TOKEN = "a-long-enough-secret-token-0123456789"


@pytest.fixture
async def guarded(tmp_path: Path) -> AsyncIterator[AgentProcess]:
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    token_file.chmod(0o600)
    agent = AgentProcess(tmp_path, "guarded", "127.0.0.2", [], allowed_hosts=("agent.test",),
                         token_file=token_file, env={"NODEORCH_TOKEN": TOKEN})
    agent.start()
    try:
        await agent.wait_ready()
        yield agent
    finally:
        agent.kill()


async def request(agent: AgentProcess, method: str, path: str, headers: dict[str, str],
                  data: bytes | None = None) -> tuple[int, str]:
    async with aiohttp.ClientSession() as session, session.request(
        method, f"http://{agent.api}{path}", headers=headers, data=data
    ) as response:
        return response.status, await response.text()


async def test_without_the_token_nothing_is_answered(guarded: AgentProcess) -> None:
    status, body = await request(guarded, "GET", "/v1/status", {})
    assert status == 401 and "bearer token" in body
    status, _ = await request(guarded, "GET", "/v1/status", {"Authorization": "Bearer wrong-token"})
    assert status == 401
    status, _ = await request(guarded, "GET", "/v1/status", {"Authorization": f"Bearer {TOKEN}"})
    assert status == 200


async def test_a_foreign_host_header_is_refused_and_an_allowed_name_answered(guarded: AgentProcess) -> None:
    auth = {"Authorization": f"Bearer {TOKEN}"}
    status, body = await request(guarded, "GET", "/v1/status", {**auth, "Host": "rebound.attacker.example"})
    assert status == 403 and "allowed_hosts" in body
    for host in ("agent.test", f"localhost:{guarded.api_port}", guarded.api):
        status, _ = await request(guarded, "GET", "/v1/status", {**auth, "Host": host})
        assert status == 200, host


async def test_a_browser_form_post_does_not_drain_the_node(guarded: AgentProcess) -> None:
    auth = {"Authorization": f"Bearer {TOKEN}"}
    for form in ("application/x-www-form-urlencoded", "text/plain", "multipart/form-data; boundary=b"):
        status, body = await request(guarded, "POST", "/v1/drain", {**auth, "Content-Type": form}, b"a=1")
        assert status == 415 and "application/json" in body, form
    assert guarded.cli_json("status")["draining"] is False
    assert guarded.cli_json("drain")["draining"] is True, "the CLI sends JSON and the token"


def test_the_cli_finds_the_token_in_the_environment_or_the_config(guarded: AgentProcess) -> None:
    without = cli("status", "--api", guarded.api, env={"NODEORCH_TOKEN": ""})
    assert without.returncode == 1 and "401" in without.stderr
    from_env = cli("status", "--api", guarded.api, env={"NODEORCH_TOKEN": TOKEN})
    assert from_env.returncode == 0, from_env.stderr
    from_config = cli("status", "--config", str(guarded.config), env={"NODEORCH_TOKEN": ""})
    assert from_config.returncode == 0, from_config.stderr


async def test_the_unix_socket_is_mode_0660_and_serves_the_cli(tmp_path: Path) -> None:
    agent = AgentProcess(tmp_path, "local", "127.0.0.2", [])
    socket_path = tmp_path / "run" / "api.sock"
    text = agent.config.read_text()
    agent.config.write_text(text.replace(f'listen = "{agent.api}"', f'listen = "unix:{socket_path}"'))
    agent.api = f"unix:{socket_path}"
    agent.start()
    try:
        await agent.wait_ready()
        assert stat.S_IMODE(os.stat(socket_path).st_mode) == 0o660
        assert agent.cli_json("drain")["draining"] is True
    finally:
        agent.kill()
