"""The Docker driver: service instances as containers of the local Docker engine (docker SDK).

Containers are named nodeorch-<service>-<slot>-<node> and labelled io.nodeorch.service, .slot, .node and
.digest, so a restarted agent finds and adopts them. They use the host network, like the process
driver, so probes and peers reach them at the node's address. Images are not pulled: an image
missing on the node is a clear, permanent error for that instance. An unreachable engine is a
transient error for Docker instances only; everything else the agent runs is unaffected.

The docker SDK costs about 8 MB of memory once imported, so it is imported only when this node has
Docker work: a Docker instance to start, or containers of this node that the engine already holds
(asked over the engine's unix socket with aiohttp, at most every ENGINE_RECHECK seconds).
"""

from __future__ import annotations

import asyncio
import importlib
import json
import os
import time
from collections.abc import Callable
from types import ModuleType
from typing import Any

import aiohttp

from drivers.containers._types import DriverError, InstanceSpec, InstanceState, InstanceStatus, logical_slot

LABEL = "io.nodeorch"
DEFAULT_SOCKET = "/var/run/docker.sock"
ENGINE_RECHECK = 30.0
"""While this node has no Docker work, how often to ask the engine whether it holds containers of ours."""
UNREACHABLE_RETRY = 5.0
"""After the engine could not be reached, how long calls fail at once with that error before the
next attempt (building a client costs more than a services pass, which runs every second)."""
_STATES = {
    "running": InstanceState.RUNNING,
    "created": InstanceState.STARTING,
    "restarting": InstanceState.STARTING,
    "paused": InstanceState.RUNNING,
    "removing": InstanceState.STOPPING,
    "exited": InstanceState.EXITED,
    "dead": InstanceState.FAILED,
}


def _sdk() -> ModuleType:
    """The docker SDK, imported on first use."""
    importlib.import_module("docker.errors")
    return importlib.import_module("docker")


def _engine_socket() -> str | None:
    """The engine's unix socket as the SDK would find it, or None when DOCKER_HOST is not a unix socket."""
    host = os.environ.get("DOCKER_HOST", "")
    if not host:
        return DEFAULT_SOCKET
    return host.removeprefix("unix://") if host.startswith("unix://") else None


def container_name(service: str, slot: str, node: str) -> str:
    return f"nodeorch-{service}-{slot}-{node}"


class DockerDriver:
    name = "docker"

    def __init__(self, node: str, node_addr: str, client_factory: Callable[[], Any] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._node = node
        self._node_addr = node_addr
        self._factory = client_factory or (lambda: _sdk().from_env(timeout=20))
        self._client: Any = None
        self._has_work = client_factory is not None  # a caller's own client: no shortcut
        self._clock = clock
        self._next_check = 0.0
        self._unreachable = ""
        self._retry_at = 0.0

    def _docker(self) -> Any:
        if self._client is None:
            try:
                self._client = self._factory()
                self._client.ping()
            except _sdk().errors.DockerException as error:
                self._client = None
                self._unreachable = f"the Docker engine is unreachable: {error}"
                self._retry_at = self._clock() + UNREACHABLE_RETRY
                raise DriverError(self._unreachable) from None
            self._unreachable = ""
        return self._client

    async def _call(self, function: Callable[[], Any]) -> Any:
        if self._client is None and self._unreachable and self._clock() < self._retry_at:
            raise DriverError(self._unreachable)
        try:
            return await asyncio.to_thread(function)
        except DriverError:
            raise
        except Exception as error:
            raise self._driver_error(error) from None

    def _driver_error(self, error: Exception) -> DriverError:
        errors = _sdk().errors
        if isinstance(error, errors.ImageNotFound):
            return DriverError(f"image not present on this node ({error.explanation}); load or pull it first",
                               transient=False)
        if isinstance(error, errors.APIError):
            return DriverError(f"Docker refused: {error.explanation or error}")
        if isinstance(error, errors.DockerException | OSError):
            self._client = None
            return DriverError(f"the Docker engine is unreachable: {error}")
        raise error

    async def _engine_holds_ours(self) -> bool:
        """Whether the engine holds containers of this node, asked without the SDK. True when it
        cannot tell (the SDK then reports the problem); False when no engine socket exists;
        DriverError when nothing answers on the socket (a stopped engine: what it held is
        unknown, and loading the SDK to learn that costs every agent 16 MB)."""
        path = _engine_socket()
        if path is None:
            return True
        if not os.path.exists(path):  # noqa: ASYNC240 (one stat, no engine on this host)
            return False
        filters = json.dumps({"label": [f"{LABEL}.node={self._node}"]})
        try:
            async with aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=path),
                                             timeout=aiohttp.ClientTimeout(total=5)) as session, \
                    session.get("http://docker/containers/json", params={"all": "1", "filters": filters}) as answer:
                return answer.status != 200 or bool(await answer.json())
        except aiohttp.ClientConnectorError as error:
            raise DriverError(f"the Docker engine is unreachable: {error.os_error}") from None
        except (aiohttp.ClientError, OSError, TimeoutError, ValueError):
            return True

    def _status(self, attrs: dict[str, Any]) -> InstanceStatus | None:
        """An instance from a container's inspect data."""
        labels = (attrs.get("Config") or {}).get("Labels") or {}
        service, slot = labels.get(f"{LABEL}.service"), labels.get(f"{LABEL}.slot")
        if not service or slot is None:
            return None
        state = attrs.get("State", {})
        status = _STATES.get(state.get("Status", ""), InstanceState.FAILED)
        exit_code = state.get("ExitCode") if status in (InstanceState.EXITED, InstanceState.FAILED) else None
        return InstanceStatus(service, slot, labels.get(f"{LABEL}.digest", ""), status, str(attrs.get("Id", ""))[:12],
                              float(labels.get(f"{LABEL}.started", "0") or 0), exit_code,
                              state.get("Error", "") or "")

    async def instances(self) -> list[InstanceStatus]:
        if not self._has_work:
            if self._clock() >= self._next_check:
                self._next_check = self._clock() + ENGINE_RECHECK
                try:
                    self._has_work = await self._engine_holds_ours()
                    self._unreachable = ""
                except DriverError as error:
                    self._unreachable = str(error)
                    self._next_check = self._clock() + UNREACHABLE_RETRY
            if self._unreachable:
                raise DriverError(self._unreachable)  # what it holds is unknown, not nothing
            if not self._has_work:
                return []

        def listing() -> list[dict[str, Any]]:
            api = self._docker().api
            details = []
            for summary in api.containers(all=True, filters={"label": f"{LABEL}.node={self._node}"}):
                try:
                    details.append(api.inspect_container(summary["Id"]))
                except _sdk().errors.NotFound:
                    continue  # removed between the listing and the inspection
            return details

        found = [self._status(attrs) for attrs in await self._call(listing)]
        return sorted((s for s in found if s is not None), key=lambda s: s.key)

    async def start(self, spec: InstanceSpec) -> InstanceStatus:
        if not spec.image:
            raise DriverError(f"{spec.key}: no image to run", transient=False)
        name = container_name(spec.service, spec.slot, self._node)
        self._has_work = True

        def run() -> Any:
            client = self._docker()
            try:
                old = client.containers.get(name)
            except _sdk().errors.NotFound:
                old = None
            if old is not None:
                if old.status == "running":
                    raise DriverError(f"{spec.key} already runs here (container {old.id[:12]})", transient=False)
                old.remove(force=True)
            env = {**spec.env, "NODEORCH_SERVICE": spec.service, "NODEORCH_SLOT": logical_slot(spec.slot),
                   "NODEORCH_NODE": self._node, "NODEORCH_NODE_ADDR": self._node_addr,
                   **{volume.variable: volume.target for volume in spec.volumes}}
            binds = {volume.source: {"bind": volume.target, "mode": "rw"} for volume in spec.volumes}
            labels = {f"{LABEL}.service": spec.service, f"{LABEL}.slot": spec.slot, f"{LABEL}.node": self._node,
                      f"{LABEL}.digest": spec.digest, f"{LABEL}.started": f"{time.time():.3f}"}
            client.images.get(spec.image)  # never pulled: an absent image is an error here
            container = client.containers.create(spec.image, list(spec.command) or None, name=name, labels=labels,
                                                 environment=env, network_mode="host", volumes=binds)
            container.start()
            container.reload()
            return container.attrs

        status = self._status(await self._call(run))
        assert status is not None
        return status

    async def stop(self, service: str, slot: str, grace: float) -> None:
        name = container_name(service, slot, self._node)

        def stop_and_remove() -> None:
            try:
                container = self._docker().containers.get(name)
            except _sdk().errors.NotFound:
                return
            if container.status == "running":
                container.stop(timeout=max(1, int(grace)))
            container.remove(force=True)

        await self._call(stop_and_remove)
