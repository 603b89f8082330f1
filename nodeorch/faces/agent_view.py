"""What the status endpoint and /metrics read of an agent: a narrow view, so the faces never import
the agent itself (and can be tested against a small stand-in)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from gossip import Member
from nodeorch.core.placement import Assignment
from nodeorch.core.replica_placement import ReplicaPlan
from nodeorch.reconcile.job_table import JobTable
from nodeorch.reconcile.rolling_update import Rollout
from nodeorch.spec.desired import DesiredStatus
from nodeorch.spec.node_config import NodeConfig
from nodeorch.spec.service_spec import ServiceSpec
from nodeorch.state.document_store import DocumentStore
from nodeorch.state.event_log import EventLog


class AgentView(Protocol):
    name: str
    config: NodeConfig
    started_at: float
    draining: bool
    events: EventLog
    jobs: JobTable
    documents: DocumentStore

    @property
    def desired(self) -> DesiredStatus: ...

    def members(self) -> list[Member]: ...

    def gossip_stats(self) -> Mapping[str, int]: ...

    def stale(self, name: str) -> bool: ...

    def differing_digests(self) -> list[str]: ...

    def placement(self) -> list[Assignment]: ...

    def volume_plans(self) -> list[ReplicaPlan]: ...

    def desired_services(self) -> tuple[ServiceSpec, ...]: ...

    async def set_draining(self, draining: bool) -> None: ...

    def engine_io(self) -> dict[str, dict[str, int]]:
        """volume -> the I/O counters of its engine, for the engines running on this node."""

    async def delete_volume(self, volume: str) -> dict[str, Any]:
        """VolumeRequestError (with an HTTP status) when it cannot be done."""

    async def salvage_volume(self, volume: str, trusted: str) -> dict[str, Any]: ...

    async def send_event(self, name: str, payload: bytes) -> None:
        """A user event to every node; UserEventError when its name or size is refused."""

    def hook_stats(self) -> dict[str, dict[str, int]]:
        """Per [[hook]]: runs ok, failed, timed_out, and events dropped."""

    def rollouts(self) -> Mapping[str, Rollout]:
        """Where each service's rolling update stands, as this node computes it."""

    async def resume_update(self, service: str) -> dict[str, Any]:
        """UpdateRequestError when there is no such service or nothing to resume."""
