"""The Docker driver: service instances as containers of the local Docker engine (docker SDK).

Containers are named nodeorch-<service>-<slot>-<node> and labelled io.nodeorch.service, .slot, .node and
.digest, so a restarted agent finds and adopts them. They use the host network, like the process
driver, so probes and peers reach them at the node's address. Images are not pulled: an image
missing on the node is a clear, permanent error for that instance. An unreachable engine is a
transient error for Docker instances only; everything else the agent runs is unaffected.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import docker
import docker.errors

from drivers.containers._types import DriverError, InstanceSpec, InstanceState, InstanceStatus

LABEL = "io.nodeorch"
_STATES = {
    "running": InstanceState.RUNNING,
    "created": InstanceState.STARTING,
    "restarting": InstanceState.STARTING,
    "paused": InstanceState.RUNNING,
    "removing": InstanceState.STOPPING,
    "exited": InstanceState.EXITED,
    "dead": InstanceState.FAILED,
}


def container_name(service: str, slot: str, node: str) -> str:
    return f"nodeorch-{service}-{slot}-{node}"


class DockerDriver:
    name = "docker"

    def __init__(self, node: str, node_addr: str,
                 client_factory: Callable[[], Any] = lambda: docker.from_env(timeout=20)) -> None:
        self._node = node
        self._node_addr = node_addr
        self._factory = client_factory
        self._client: Any = None

    def _docker(self) -> Any:
        if self._client is None:
            try:
                self._client = self._factory()
                self._client.ping()
            except docker.errors.DockerException as error:
                self._client = None
                raise DriverError(f"the Docker engine is unreachable: {error}") from None
        return self._client

    async def _call(self, function: Callable[[], Any]) -> Any:
        try:
            return await asyncio.to_thread(function)
        except docker.errors.ImageNotFound as error:
            raise DriverError(f"image not present on this node ({error.explanation}); load or pull it first",
                              transient=False) from None
        except docker.errors.APIError as error:
            raise DriverError(f"Docker refused: {error.explanation or error}") from None
        except docker.errors.DockerException as error:
            self._client = None
            raise DriverError(f"the Docker engine is unreachable: {error}") from None
        except OSError as error:
            self._client = None
            raise DriverError(f"the Docker engine is unreachable: {error}") from None

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
        def listing() -> list[dict[str, Any]]:
            api = self._docker().api
            details = []
            for summary in api.containers(all=True, filters={"label": f"{LABEL}.node={self._node}"}):
                try:
                    details.append(api.inspect_container(summary["Id"]))
                except docker.errors.NotFound:
                    continue  # removed between the listing and the inspection
            return details

        found = [self._status(attrs) for attrs in await self._call(listing)]
        return sorted((s for s in found if s is not None), key=lambda s: s.key)

    async def start(self, spec: InstanceSpec) -> InstanceStatus:
        if not spec.image:
            raise DriverError(f"{spec.key}: no image to run", transient=False)
        name = container_name(spec.service, spec.slot, self._node)

        def run() -> Any:
            client = self._docker()
            try:
                old = client.containers.get(name)
            except docker.errors.NotFound:
                old = None
            if old is not None:
                if old.status == "running":
                    raise DriverError(f"{spec.key} already runs here (container {old.id[:12]})", transient=False)
                old.remove(force=True)
            env = {**spec.env, "NODEORCH_SERVICE": spec.service, "NODEORCH_SLOT": spec.slot,
                   "NODEORCH_NODE": self._node, "NODEORCH_NODE_ADDR": self._node_addr}
            labels = {f"{LABEL}.service": spec.service, f"{LABEL}.slot": spec.slot, f"{LABEL}.node": self._node,
                      f"{LABEL}.digest": spec.digest, f"{LABEL}.started": f"{time.time():.3f}"}
            client.images.get(spec.image)  # never pulled: an absent image is an error here
            container = client.containers.create(spec.image, list(spec.command) or None, name=name, labels=labels,
                                                 environment=env, network_mode="host")
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
            except docker.errors.NotFound:
                return
            if container.status == "running":
                container.stop(timeout=max(1, int(grace)))
            container.remove(force=True)

        await self._call(stop_and_remove)
