"""The container-driver seam: what an instance is, what state it is in, what a driver can do."""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol


class DriverError(Exception):
    """A driver could not do what was asked; `transient` when trying again later may work."""

    def __init__(self, message: str, *, transient: bool = True) -> None:
        super().__init__(message)
        self.transient = transient


_SUCCESSOR = re.compile(r"^(.+)_[0-9a-f]{8}$")


def logical_slot(slot: str) -> str:
    """The slot an instance fills. An instance started beside the one it replaces (a start-first
    update) cannot share its name, so it is named SLOT_XXXXXXXX (its spec digest's first 8 hex
    digits) and keeps that name; everything else is named after its slot."""
    match = _SUCCESSOR.match(slot)
    return match.group(1) if match else slot


def successor_slot(slot: str, digest: str) -> str:
    """The name of an instance of `digest` that starts beside the instance named `slot`."""
    name = f"{logical_slot(slot)}_{digest[:8]}"
    return name if name != slot else logical_slot(slot)


class InstanceState(enum.Enum):
    STARTING = "starting"
    RUNNING = "running"
    STOPPING = "stopping"
    EXITED = "exited"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class VolumeBinding:
    """An attached volume an instance uses: mounted at `source` on the host; a container sees it
    at `target`; `variable` names it in the instance's environment (and argv, as ${VARIABLE})."""

    variable: str
    source: str
    target: str


@dataclass(frozen=True, slots=True)
class InstanceSpec:
    service: str
    slot: str
    digest: str
    """Digest of the service's spec: a different digest means the instance must be replaced."""
    command: tuple[str, ...]
    env: Mapping[str, str] = field(default_factory=dict)
    image: str = ""
    ports: tuple[int, ...] = ()
    driver: str = "process"
    volumes: tuple[VolumeBinding, ...] = ()

    @property
    def key(self) -> str:
        return f"{self.service}/{self.slot}"

    @property
    def logical_key(self) -> str:
        return f"{self.service}/{logical_slot(self.slot)}"


@dataclass(frozen=True, slots=True)
class InstanceStatus:
    service: str
    slot: str
    digest: str
    state: InstanceState
    ref: str
    """The driver's handle: a pid, a container id."""
    started_at: float = 0.0
    exit_code: int | None = None
    error: str = ""

    @property
    def key(self) -> str:
        return f"{self.service}/{self.slot}"

    @property
    def logical_key(self) -> str:
        return f"{self.service}/{logical_slot(self.slot)}"


class ContainerDriver(Protocol):
    name: str

    async def start(self, spec: InstanceSpec) -> InstanceStatus:
        """Start one instance; DriverError if it cannot (or if that slot already runs here)."""

    async def stop(self, service: str, slot: str, grace: float) -> None:
        """Stop it (politely, then forcibly after `grace` seconds) and forget it; no error if absent."""

    async def instances(self) -> list[InstanceStatus]:
        """Every instance this driver holds for nodeorch on this node, running or exited,
        including those started before an agent restart (adoption)."""
