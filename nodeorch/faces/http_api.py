"""The local HTTP status endpoint (aiohttp, embedded with AppRunner): read-only JSON, plus drain.

Shapes are documented in the README. Errors are JSON too: {"error": "..."} with the HTTP status.
It listens on loopback or a unix socket; a remote address must be allowed in the config.
"""

from __future__ import annotations

import asyncio
import fnmatch
import json
import logging
import os
import re
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from aiohttp import web

from drivers.containers import logical_slot
from gossip import parse_address
from nodeorch import __version__
from nodeorch.faces.agent_view import AgentView
from nodeorch.faces.metrics import render_metrics
from nodeorch.faces.request_policy import CUSTOM_HEADER, SAFE_METHODS, RequestPolicy
from nodeorch.faces.volume_status import volumes_json
from nodeorch.reconcile.service_runner import UpdateRequestError
from nodeorch.reconcile.volume_requests import VolumeRequestError
from nodeorch.spec.node_config import DEFAULT_API_PORT
from nodeorch.state.node_document import decode_labels

log = logging.getLogger(__name__)

MAX_REQUEST_BODY = 16 * 1024
EVENTS_KEEPALIVE = 15.0
AGENT: web.AppKey[AgentView] = web.AppKey("agent")
POLICY: web.AppKey[RequestPolicy] = web.AppKey("policy")
UNIX_SOCKET_MODE = 0o660


def _json(data: Any, status: int = 200) -> web.Response:
    return web.json_response(data, status=status, dumps=lambda d: json.dumps(d, separators=(",", ":")))


@web.middleware
async def _json_errors(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                       ) -> web.StreamResponse:
    try:
        return await handler(request)
    except web.HTTPException as error:
        if error.status < 400:
            raise
        return _json({"error": error.reason, "path": request.path}, status=error.status)


@web.middleware
async def _guard(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                 ) -> web.StreamResponse:
    """Refuse what a web page could make a browser send (see request_policy), before any handler."""
    changes_state = request.method not in SAFE_METHODS and request.match_info.http_exception is None
    refusal = request.app[POLICY].refusal(
        changes_state, request.headers.get("Host"), request.headers.get("Content-Type", ""),
        CUSTOM_HEADER in request.headers, request.headers.get("Authorization"),
    )
    if refusal is not None:
        log.warning("%s: refused %s %s from %s: %s", request.app[AGENT].name, request.method, request.path,
                    request.remote or "unix socket", refusal.reason)
        headers = {"WWW-Authenticate": "Bearer"} if refusal.status == 401 else None
        return web.json_response({"error": refusal.reason, "path": request.path}, status=refusal.status,
                                 headers=headers)
    return await handler(request)


def member_json(member: Any) -> dict[str, Any]:
    return {
        "name": member.name,
        "addr": member.addr[0],
        "port": member.addr[1],
        "state": member.state.label,
        "incarnation": member.incarnation,
        "labels": decode_labels(member.meta),
        "state_since": round(member.state_since, 3),
    }


def status_json(agent: AgentView) -> dict[str, Any]:
    counts = {"alive": 0, "suspect": 0, "dead": 0, "left": 0}
    for member in agent.members():
        counts[member.state.label] += 1
    desired = agent.desired.state
    return {
        "node": agent.name,
        "cluster": agent.config.cluster.name,
        "version": __version__,
        "uptime": round(time.time() - agent.started_at, 1),
        "draining": agent.draining,
        "members": counts,
        "desired": {
            "revision": desired.revision if desired else None,
            "digest": desired.digest if desired else None,
            "error": agent.desired.error or None,
        },
        "digest_differs": agent.differing_digests(),
        "jobs": agent.jobs.counts(),
    }


def services_json(agent: AgentView) -> list[dict[str, Any]]:
    """Every desired service with the instances the live nodes report for it."""
    reported: dict[str, list[dict[str, Any]]] = {}
    for name, document in sorted(agent.documents.items()):
        if agent.stale(name):
            continue
        for record in document.instances:
            reported.setdefault(record.service, []).append(
                {"slot": logical_slot(record.slot), "node": name, "state": record.state.value,
                 "health": record.health.value, "since": round(record.since, 3), "digest": record.digest,
                 "instance": record.slot})
    out: list[dict[str, Any]] = []
    for spec in agent.desired_services():
        desired = sum(1 for a in agent.placement() if a.service == spec.name)
        instances = sorted(reported.pop(spec.name, []), key=lambda i: (str(i["slot"]), i["node"]))
        entry: dict[str, Any] = {"name": spec.name, "desired": desired, "digest": spec.digest,
                                 "instances": instances}
        rollout = agent.rollouts().get(spec.name)
        if rollout is not None:
            entry["update"] = rollout.to_json()
        if spec.volumes and desired < spec.scale:
            names = ", ".join(sorted({m.volume for m in spec.volumes}))
            entry["waiting"] = (f"{spec.scale - desired} of {spec.scale} slots wait for volume {names}: its replicas "
                                "are being placed, or no eligible node can attach volumes")
        out.append(entry)
    for name, instances in sorted(reported.items()):  # still running, no longer desired
        out.append({"name": name, "desired": 0, "instances": instances})
    return out


async def services(request: web.Request) -> web.Response:
    return _json(services_json(request.app[AGENT]))


async def volumes(request: web.Request) -> web.Response:
    return _json(volumes_json(request.app[AGENT]))


async def volume(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    for entry in volumes_json(request.app[AGENT]):
        if entry["name"] == name:
            return _json(entry)
    return _json({"error": f"no volume {name!r}: not desired and no node holds a replica of it"}, status=404)


async def delete_volume(request: web.Request) -> web.Response:
    await request.read()  # takes no body
    try:
        return _json(await request.app[AGENT].delete_volume(request.match_info["name"]))
    except VolumeRequestError as error:
        return _json({"error": str(error)}, status=error.status)


async def salvage_volume(request: web.Request) -> web.Response:
    try:
        body = json.loads(await request.read() or b"{}")
    except ValueError:
        return _json({"error": 'expected a JSON body: {"from": "NODE"}'}, status=400)
    trusted = body.get("from") if isinstance(body, dict) else None
    if not isinstance(trusted, str) or not trusted:
        return _json({"error": '"from": the node whose replica to trust, is required'}, status=400)
    try:
        return _json(await request.app[AGENT].salvage_volume(request.match_info["name"], trusted))
    except VolumeRequestError as error:
        return _json({"error": str(error)}, status=error.status)


class UserEventError(ValueError):
    """A user event is refused: a bad name, or too large."""


_EVENT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$")


async def send_event(request: web.Request) -> web.Response:
    try:
        body = json.loads(await request.read() or b"{}")
    except ValueError:
        return _json({"error": 'expected a JSON body: {"name": "NAME", "payload": "TEXT"}'}, status=400)
    name = body.get("name") if isinstance(body, dict) else None
    payload = body.get("payload", "") if isinstance(body, dict) else None
    if not isinstance(name, str) or not _EVENT_NAME.match(name):
        return _json({"error": "name: 1 to 64 letters, digits, '_', '.', ':', '-', starting with a letter or digit"},
                     status=400)
    if not isinstance(payload, str):
        return _json({"error": "payload: expected a string"}, status=400)
    try:
        await request.app[AGENT].send_event(name, payload.encode())
    except UserEventError as error:
        return _json({"error": str(error)}, status=413)
    return _json({"name": name, "size": len(name.encode()) + len(payload.encode())})


async def resume_update(request: web.Request) -> web.Response:
    await request.read()  # takes no body
    try:
        return _json(await request.app[AGENT].resume_update(request.match_info["name"]))
    except UpdateRequestError as error:
        return _json({"error": str(error)}, status=error.status)


async def jobs(request: web.Request) -> web.Response:
    return _json([job.to_json() for job in request.app[AGENT].jobs.jobs()])


async def health(request: web.Request) -> web.Response:
    return _json({"status": "ok"})


async def status(request: web.Request) -> web.Response:
    return _json(status_json(request.app[AGENT]))


async def members(request: web.Request) -> web.Response:
    return _json([member_json(m) for m in request.app[AGENT].members()])


async def nodes(request: web.Request) -> web.Response:
    agent = request.app[AGENT]
    return _json([
        {"name": d.name, "version": d.version, "stale": agent.stale(d.name), "draining": d.draining,
         "desired_revision": d.desired_revision, "desired_digest": d.desired_digest,
         "updated_at": d.updated_at}
        for d in sorted(agent.documents.values(), key=lambda d: d.name)
    ])


async def node(request: web.Request) -> web.Response:
    agent = request.app[AGENT]
    name = request.match_info["name"]
    document = agent.documents.get(name)
    if document is None:
        raise web.HTTPNotFound(reason=f"no document from node {name!r}")
    return _json({**document.to_json(), "stale": agent.stale(name)})


async def events(request: web.Request) -> web.StreamResponse:
    agent = request.app[AGENT]
    try:
        since = int(request.query.get("since", "0"))
        if since < 0:
            raise ValueError
    except ValueError:
        raise web.HTTPBadRequest(reason="since must be a non-negative integer (an event seq)") from None
    follow = request.query.get("follow", "1") not in ("0", "false", "no")
    kinds = [k for k in request.query.get("kind", "").split(",") if k]
    response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
    await response.prepare(request)
    seq = min(since, agent.events.last_seq)  # beyond the end means "from now on"
    while True:
        batch = agent.events.since(seq) if not follow else await agent.events.wait_after(seq, EVENTS_KEEPALIVE)
        for event in batch:
            seq = event["seq"]
            if kinds and not any(fnmatch.fnmatchcase(event["kind"], k) for k in kinds):
                continue
            await response.write(json.dumps(event, separators=(",", ":")).encode() + b"\n")
        if not follow:
            break
        if not batch:
            await response.write(b"\n")  # keep-alive: a blank line, skipped by readers
    await response.write_eof()
    return response


async def metrics(request: web.Request) -> web.Response:
    return web.Response(text=render_metrics(request.app[AGENT]), content_type="text/plain",
                        charset="utf-8", headers={"X-Content-Type-Options": "nosniff"})


async def drain(request: web.Request) -> web.Response:
    agent = request.app[AGENT]
    await request.read()  # takes no body; an oversized one is refused (413) rather than ignored
    await agent.set_draining(True)
    return _json({"node": agent.name, "draining": True})


async def undrain(request: web.Request) -> web.Response:
    agent = request.app[AGENT]
    await request.read()
    await agent.set_draining(False)
    return _json({"node": agent.name, "draining": False})


def build_app(agent: AgentView, policy: RequestPolicy) -> web.Application:
    app = web.Application(middlewares=[_json_errors, _guard], client_max_size=MAX_REQUEST_BODY)
    app[AGENT] = agent
    app[POLICY] = policy
    app.router.add_get("/v1/health", health)
    app.router.add_get("/v1/status", status)
    app.router.add_get("/v1/members", members)
    app.router.add_get("/v1/nodes", nodes)
    app.router.add_get("/v1/nodes/{name}", node)
    app.router.add_get("/v1/services", services)
    app.router.add_get("/v1/volumes", volumes)
    app.router.add_get("/v1/volumes/{name}", volume)
    app.router.add_get("/v1/jobs", jobs)
    app.router.add_get("/v1/events", events)
    app.router.add_get("/metrics", metrics)
    app.router.add_post("/v1/drain", drain)
    app.router.add_post("/v1/undrain", undrain)
    app.router.add_post("/v1/volumes/{name}/delete", delete_volume)
    app.router.add_post("/v1/volumes/{name}/salvage", salvage_volume)
    app.router.add_post("/v1/services/{name}/resume", resume_update)
    app.router.add_post("/v1/events", send_event)
    return app


def _prepare_unix_socket(path: Path) -> str:
    """Create the socket's folder, and remove a stale socket left by an earlier run."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_socket():
        path.unlink()
    return str(path)


class ApiServer:
    """`async with ApiServer(agent, "127.0.0.1:7947")` serves until exit; also "unix:/path"
    (mode 0660: root and the socket's group)."""

    def __init__(self, agent: AgentView, listen: str, *, allowed_hosts: tuple[str, ...] = (), token: str = "") -> None:
        self._agent = agent
        self._listen = listen
        self._policy = RequestPolicy.for_listen(listen, allowed_hosts, token)
        self._runner: web.AppRunner | None = None
        self.where = listen

    async def __aenter__(self) -> Self:
        self._runner = web.AppRunner(build_app(self._agent, self._policy), access_log=None, handle_signals=False,
                                     shutdown_timeout=1.0)
        await self._runner.setup()
        try:
            site: web.BaseSite
            if self._listen.startswith("unix:"):
                path = _prepare_unix_socket(Path(self._listen[5:]))
                site = web.UnixSite(self._runner, path)
                await site.start()
                os.chmod(path, UNIX_SOCKET_MODE)
            else:
                host, port = parse_address(self._listen, DEFAULT_API_PORT)
                site = web.TCPSite(self._runner, host, port, reuse_address=True)
                await site.start()
        except OSError as error:
            await self._runner.cleanup()
            raise OSError(f"status endpoint cannot listen on {self._listen}: {error.strerror or error}") from None
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._runner is not None:
            await asyncio.shield(self._runner.cleanup())
