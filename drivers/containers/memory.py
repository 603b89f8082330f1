"""An in-memory container driver for unit tests of the reconcilers: instances are records that
a test can crash at will. It passes the same conformance suite as the real drivers."""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable

from drivers.containers._types import DriverError, InstanceSpec, InstanceState, InstanceStatus


class MemoryDriver:
    name = "memory"

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._instances: dict[str, InstanceStatus] = {}
        self._refs = itertools.count(1000)
        self.started: list[str] = []
        self.specs: dict[str, InstanceSpec] = {}
        """The spec each slot was last started with."""

    async def start(self, spec: InstanceSpec) -> InstanceStatus:
        if not spec.command:
            raise DriverError(f"{spec.key}: no command to run", transient=False)
        current = self._instances.get(spec.key)
        if current is not None and current.state is InstanceState.RUNNING:
            raise DriverError(f"{spec.key} already runs here (ref {current.ref})", transient=False)
        status = InstanceStatus(spec.service, spec.slot, spec.digest, InstanceState.RUNNING, str(next(self._refs)),
                                self._clock())
        self._instances[spec.key] = status
        self.started.append(spec.key)
        self.specs[spec.key] = spec
        return status

    async def stop(self, service: str, slot: str, grace: float) -> None:
        self._instances.pop(f"{service}/{slot}", None)

    async def instances(self) -> list[InstanceStatus]:
        return sorted(self._instances.values(), key=lambda s: s.key)

    def crash(self, service: str, slot: str, exit_code: int = 1) -> None:
        """The instance's process dies on its own."""
        old = self._instances[f"{service}/{slot}"]
        self._instances[old.key] = InstanceStatus(old.service, old.slot, old.digest, InstanceState.EXITED, old.ref,
                                                  old.started_at, exit_code)
