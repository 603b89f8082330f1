"""What the engine simulations share: a virtual-time loop to run a scenario on, and replicas on
simulated nodes behind in-memory links."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from drivers.volumes._client import ReplicaLink
from drivers.volumes._simulation import MemoryLink, SimReplica, VirtualTimeLoop


def run(scenario: Coroutine[Any, Any, Any]) -> Any:
    loop = VirtualTimeLoop()
    try:
        return loop.run_until_complete(scenario)
    finally:
        loop.close()


def sim_replicas(count: int) -> tuple[dict[str, SimReplica], Callable[[str, Any], ReplicaLink]]:
    """Replicas r0:1, r1:1 ... and the link factory an engine reaches them with."""
    replicas = {f"r{i}:1": SimReplica(f"r{i}:1") for i in range(count)}

    def link(address: str, on_lost: Any) -> ReplicaLink:
        return MemoryLink(replicas[address], on_lost)

    return replicas, link
