"""The typed sections of a node document: instance records, health verdicts, replica and engine
records, with their codec.

On the wire each record is a small msgpack table of scalars. Decoding is strict about types but
lenient about the future: a key this agent does not know is ignored, and a record whose state or
status this agent does not know is skipped (counted by the caller), so a cluster keeps working
while agents of two versions mix during an upgrade.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from drivers.containers import InstanceState
from nodeorch.errors import NodeorchError

Scalar = str | int | float | bool | None


class RecordError(NodeorchError, ValueError):
    """A record of a document is malformed."""


class UnknownValue(RecordError):
    """A record names a state or status this agent does not know (a newer agent's)."""


class InstancePhase(enum.Enum):
    """An instance's state as its node reports it: the driver's state, or restarting (exited and
    waiting out its restart backoff)."""

    STARTING = "starting"
    RUNNING = "running"
    RESTARTING = "restarting"
    STOPPING = "stopping"
    EXITED = "exited"
    FAILED = "failed"

    @classmethod
    def of(cls, state: InstanceState) -> InstancePhase:
        return cls(state.value)

    @property
    def holds_slot(self) -> bool:
        """Whether an instance in this phase keeps its slot where it is (a crash restarts in place)."""
        return self in (InstancePhase.STARTING, InstancePhase.RUNNING, InstancePhase.EXITED, InstancePhase.RESTARTING)


class HealthStatus(enum.Enum):
    UNKNOWN = "unknown"
    INITIALIZING = "initializing"
    HEALTHY = "healthy"
    UNHEALTHY = "unhealthy"


E = TypeVar("E", bound=enum.Enum)
T = TypeVar("T")


def _field(raw: Mapping[str, Any], key: str, kinds: tuple[type, ...], default: Any = ...) -> Any:
    if key not in raw:
        if default is ...:
            raise RecordError(f"{key}: missing")
        return default
    value = raw[key]
    if type(value) not in kinds:
        raise RecordError(f"{key}: expected {' or '.join(k.__name__ for k in kinds)}, got {type(value).__name__}")
    return value


def _enum(kind: type[E], raw: Mapping[str, Any], key: str, default: E | None = None) -> E:
    text = _field(raw, key, (str,), default.value if default is not None else ...)
    try:
        return kind(text)
    except ValueError:
        raise UnknownValue(f"{key}: {text!r} is not known to this agent") from None


def _number(raw: Mapping[str, Any], key: str) -> float:
    return float(_field(raw, key, (int, float), 0.0))


@dataclass(frozen=True, slots=True)
class InstanceRecord:
    service: str
    slot: str
    state: InstancePhase
    digest: str = ""
    ref: str = ""
    """The driver's handle (a pid, a container id): tells two incarnations of a slot apart."""
    since: float = 0.0
    exit_code: int | None = None
    restarts: int = 0
    next_restart: float | None = None
    health: HealthStatus = HealthStatus.UNKNOWN
    """The instance's health as its owner aggregates its observers' verdicts."""

    @property
    def key(self) -> str:
        return f"{self.service}/{self.slot}"

    def to_wire(self) -> dict[str, Scalar]:
        return {
            "service": self.service, "slot": self.slot, "state": self.state.value, "digest": self.digest,
            "ref": self.ref, "since": round(self.since, 3), "exit_code": self.exit_code, "restarts": self.restarts,
            "next_restart": None if self.next_restart is None else round(self.next_restart, 3),
            "health": self.health.value,
        }

    @classmethod
    def from_wire(cls, raw: Mapping[str, Any]) -> InstanceRecord:
        next_restart = _field(raw, "next_restart", (int, float, type(None)), None)
        return cls(
            service=_field(raw, "service", (str,)), slot=_field(raw, "slot", (str,)),
            state=_enum(InstancePhase, raw, "state"), digest=_field(raw, "digest", (str,), ""),
            ref=_field(raw, "ref", (str,), ""), since=_number(raw, "since"),
            exit_code=_field(raw, "exit_code", (int, type(None)), None), restarts=_field(raw, "restarts", (int,), 0),
            next_restart=None if next_restart is None else float(next_restart),
            health=_enum(HealthStatus, raw, "health", HealthStatus.UNKNOWN),
        )


@dataclass(frozen=True, slots=True)
class HealthVerdict:
    """One observer's verdict on one incarnation (ref) of an instance."""

    service: str
    slot: str
    node: str
    """The instance's owner."""
    ref: str
    status: HealthStatus
    since: float = 0.0
    failures: int = 0

    def to_wire(self) -> dict[str, Scalar]:
        return {"service": self.service, "slot": self.slot, "node": self.node, "ref": self.ref,
                "status": self.status.value, "since": round(self.since, 3), "failures": self.failures}

    @classmethod
    def from_wire(cls, raw: Mapping[str, Any]) -> HealthVerdict:
        return cls(
            service=_field(raw, "service", (str,)), slot=_field(raw, "slot", (str,)), node=_field(raw, "node", (str,)),
            ref=_field(raw, "ref", (str,), ""), status=_enum(HealthStatus, raw, "status"),
            since=_number(raw, "since"), failures=_field(raw, "failures", (int,), 0),
        )


class ReplicaMode(enum.Enum):
    """What a replica is to its volume, as its node reports it."""

    MEMBER = "member"
    """In the member set of the engine serving the volume (read-write)."""
    REBUILDING = "rebuilding"
    """Receiving writes and a copy (write-only) until it joins the set."""
    STALE = "stale"
    """Left out by the engine: behind, waiting for a rebuild."""
    DETACHED = "detached"
    """No engine serves the volume; `set_epoch`/`set_version` say which set it last belonged to."""


class EngineState(enum.Enum):
    STARTING = "starting"
    HEALTHY = "healthy"
    DEGRADED = "degraded"
    FAULTED = "faulted"


@dataclass(frozen=True, slots=True)
class ReplicaRecord:
    """One replica a node's replica server holds."""

    volume: str
    size: int
    mode: ReplicaMode
    epoch: int = 0
    set_epoch: int = 0
    set_version: int = 0
    seq: int = 0
    used: int = 0
    """Bytes allocated on disk (a sparse file holds only what was written)."""
    progress: float | None = None
    """0..1 while rebuilding."""
    volume_id: str = ""
    """Random per volume, the same in all its replicas: a new volume reusing a name has another."""

    @property
    def set_id(self) -> tuple[int, int]:
        return (self.set_epoch, self.set_version)

    def to_wire(self) -> dict[str, Scalar]:
        return {"volume": self.volume, "size": self.size, "mode": self.mode.value, "epoch": self.epoch,
                "set_epoch": self.set_epoch, "set_version": self.set_version, "seq": self.seq, "used": self.used,
                "progress": None if self.progress is None else round(self.progress, 4), "volume_id": self.volume_id}

    @classmethod
    def from_wire(cls, raw: Mapping[str, Any]) -> ReplicaRecord:
        progress = _field(raw, "progress", (int, float, type(None)), None)
        return cls(
            volume=_field(raw, "volume", (str,)), size=_field(raw, "size", (int,)),
            mode=_enum(ReplicaMode, raw, "mode"), epoch=_field(raw, "epoch", (int,), 0),
            set_epoch=_field(raw, "set_epoch", (int,), 0), set_version=_field(raw, "set_version", (int,), 0),
            seq=_field(raw, "seq", (int,), 0), used=_field(raw, "used", (int,), 0),
            progress=None if progress is None else float(progress), volume_id=_field(raw, "volume_id", (str,), ""),
        )


@dataclass(frozen=True, slots=True)
class VolumeDeletion:
    """An operator deleted a volume (`nodeorch volume delete`): every node drops its replicas of
    it. By volume id, so a volume created later under the same name is not touched."""

    volume: str
    volume_id: str
    at: float = 0.0
    """Unix time of the deletion."""

    def to_wire(self) -> dict[str, Scalar]:
        return {"volume": self.volume, "volume_id": self.volume_id, "at": round(self.at, 3)}

    @classmethod
    def from_wire(cls, raw: Mapping[str, Any]) -> VolumeDeletion:
        return cls(volume=_field(raw, "volume", (str,)), volume_id=_field(raw, "volume_id", (str,)),
                   at=float(_field(raw, "at", (int, float), 0.0)))


class UpdateAction(enum.Enum):
    PAUSED = "paused"
    """An instance of the new spec failed: no further batch starts."""
    ROLLBACK = "rollback"
    """An instance of the new spec failed: replaced instances go back to `previous`."""
    RESUMED = "resumed"
    """The operator resumed (`nodeorch service resume`): earlier marks no longer hold."""


@dataclass(frozen=True, slots=True)
class UpdateMark:
    """A node's word on the rolling update of `service` to the spec with `digest`. The latest
    mark (by `at`) of all nodes decides: paused or rolling back until a later resume."""

    service: str
    digest: str
    action: UpdateAction
    at: float
    reason: str = ""
    previous: str = ""
    """The digest the failed instance ran before the update: what a rollback goes back to."""

    def to_wire(self) -> dict[str, Scalar]:
        return {"service": self.service, "digest": self.digest, "action": self.action.value,
                "at": round(self.at, 3), "reason": self.reason, "previous": self.previous}

    @classmethod
    def from_wire(cls, raw: Mapping[str, Any]) -> UpdateMark:
        return cls(service=_field(raw, "service", (str,)), digest=_field(raw, "digest", (str,)),
                   action=_enum(UpdateAction, raw, "action"), at=_number(raw, "at"),
                   reason=_field(raw, "reason", (str,), ""), previous=_field(raw, "previous", (str,), ""))


@dataclass(frozen=True, slots=True)
class EngineRecord:
    """The engine a node runs for a volume."""

    volume: str
    state: EngineState
    epoch: int = 0
    members: tuple[str, ...] = ()
    """The nodes whose replicas are in its member set."""
    rebuilds: tuple[tuple[str, float], ...] = ()
    """(node, progress 0..1) of each replica it is rebuilding."""
    held: tuple[str, ...] = ()
    """Nodes whose rebuild waits for a free slot (max_concurrent_rebuilds)."""

    def to_wire(self) -> dict[str, Scalar]:
        return {"volume": self.volume, "state": self.state.value, "epoch": self.epoch,
                "members": ",".join(self.members),
                "rebuilds": ",".join(f"{node}={progress:.2f}" for node, progress in self.rebuilds),
                "held": ",".join(self.held)}

    @classmethod
    def from_wire(cls, raw: Mapping[str, Any]) -> EngineRecord:
        members = _field(raw, "members", (str,), "")
        return cls(volume=_field(raw, "volume", (str,)), state=_enum(EngineState, raw, "state"),
                   epoch=_field(raw, "epoch", (int,), 0), members=tuple(m for m in members.split(",") if m),
                   rebuilds=tuple((node, float(value)) for node, value in _pairs(raw, "rebuilds")),
                   held=tuple(n for n in _field(raw, "held", (str,), "").split(",") if n))


def _pairs(raw: Mapping[str, Any], key: str) -> list[tuple[str, str]]:
    """NAME=VALUE,NAME=VALUE; RecordError naming the key if malformed."""
    text = _field(raw, key, (str,), "")
    pairs = []
    for item in text.split(",") if text else ():
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise RecordError(f"{key}: expected NAME=VALUE items")
        try:
            float(value)
        except ValueError:
            raise RecordError(f"{key}: {value!r} is not a number") from None
        pairs.append((name, value))
    return pairs


def decode_records(raws: tuple[Mapping[str, Any], ...], decode: Callable[[Mapping[str, Any]], T],
                   what: str) -> tuple[tuple[T, ...], int]:
    """Every record decoded, and how many were skipped for a value this agent does not know;
    RecordError (naming the section and index) for a malformed one."""
    records: list[T] = []
    skipped = 0
    for index, raw in enumerate(raws):
        try:
            records.append(decode(raw))
        except UnknownValue:
            skipped += 1
        except RecordError as error:
            raise RecordError(f"{what}[{index}].{error}") from None
    return tuple(records), skipped
