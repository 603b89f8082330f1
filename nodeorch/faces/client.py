"""The HTTP client of the status endpoint, shared by the CLI, `nodeorch dev` and the benchmarks.

Requests that change something carry a JSON content type and the X-Nodeorch header (the endpoint
refuses them otherwise, so a web page cannot forge them); a token, when given, goes as a bearer token.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp

from nodeorch.errors import NodeorchError
from nodeorch.faces.request_policy import CUSTOM_HEADER, SAFE_METHODS


class Unreachable(NodeorchError):
    """No agent answered at that address."""


class AgentProblem(NodeorchError):
    """The agent answered with an error."""


@asynccontextmanager
async def agent_session(api: str, token: str = "", read_timeout: float = 30.0
                        ) -> AsyncIterator[tuple[aiohttp.ClientSession, str]]:
    """A session to the agent at `api` (HOST:PORT, http://..., or unix:/path) and the base URL."""
    timeout = aiohttp.ClientTimeout(total=None, connect=3, sock_read=read_timeout)
    headers = {CUSTOM_HEADER: "cli"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    if api.startswith("unix:"):
        connector = aiohttp.UnixConnector(path=api[5:])
        async with aiohttp.ClientSession(connector=connector, timeout=timeout, headers=headers) as session:
            yield session, "http://localhost"
        return
    async with aiohttp.ClientSession(timeout=timeout, headers=headers) as session:
        yield session, api if api.startswith("http") else f"http://{api}"


async def call(api: str, method: str, path: str, token: str = "", payload: Any = None,
               read_timeout: float = 30.0) -> Any:
    """One request (with `payload` as its JSON body); the decoded JSON answer. Unreachable or
    AgentProblem otherwise. `read_timeout`: how long the agent may work on it."""
    body = None if method.upper() in SAFE_METHODS else json.dumps(payload or {}).encode()
    content = {"Content-Type": "application/json"} if body is not None else {}
    async with agent_session(api, token, read_timeout) as (session, base):
        try:
            async with session.request(method, base + path, data=body, headers=content) as response:
                raw = await response.read()
        except (aiohttp.ClientConnectionError, TimeoutError, OSError) as error:
            raise Unreachable(str(error) or type(error).__name__) from None
    try:
        data = json.loads(raw) if raw else None
    except ValueError:
        data = raw.decode(errors="replace")
    if response.status >= 400:
        message = data.get("error") if isinstance(data, dict) else data
        raise AgentProblem(f"HTTP {response.status}: {message}")
    return data
