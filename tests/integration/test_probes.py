"""The probes against real servers on loopback."""

from __future__ import annotations

import asyncio
import sys

from aiohttp import web

from drivers.health import ExecProbe, HttpProbe, TcpProbe

from .conftest import free_port


async def test_http_probe_passes_below_400_and_fails_otherwise() -> None:
    async def ok(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def sick(request: web.Request) -> web.Response:
        return web.Response(status=503)

    app = web.Application()
    app.router.add_get("/ok", ok)
    app.router.add_get("/sick", sick)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        assert (await HttpProbe(port, "/ok").check("127.0.0.1", 2, source="127.0.0.5")).ok
        result = await HttpProbe(port, "/sick").check("127.0.0.1", 2)
        assert not result.ok and "503" in result.detail
    finally:
        await runner.cleanup()
    assert not (await HttpProbe(port).check("127.0.0.1", 2)).ok, "nothing listens any more"


async def test_tcp_probe_and_its_timeout() -> None:
    server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    assert (await TcpProbe(port).check("127.0.0.1", 2)).ok
    server.close()
    await server.wait_closed()
    assert not (await TcpProbe(port).check("127.0.0.1", 2)).ok


async def test_exec_probe_uses_the_exit_code_and_kills_on_timeout() -> None:
    assert (await ExecProbe((sys.executable, "-c", "pass")).check("127.0.0.1", 5)).ok
    failed = await ExecProbe((sys.executable, "-c", "raise SystemExit(2)")).check("127.0.0.1", 5)
    assert not failed.ok and failed.detail == "exit 2"
    slow = await ExecProbe((sys.executable, "-c", "import time; time.sleep(30)")).check("127.0.0.1", 0.3)
    assert not slow.ok and "timed out" in slow.detail
    missing = await ExecProbe(("/nonexistent/probe",)).check("127.0.0.1", 1)
    assert not missing.ok and "cannot run" in missing.detail
