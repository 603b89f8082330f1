"""Node documents: what each node reports about itself, carried on the gossip app-state hooks.

Each node is the only author of its own document, so documents never conflict: a higher version
from the owner replaces the lower one. A document is small (at most MAX_DOCUMENT_SIZE bytes) and is
checked on both ends: the owner refuses to publish an oversized one, and receivers refuse to store one.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import msgpack

from nodeorch.errors import NodeorchError
from nodeorch.state.records import (
    EngineRecord,
    HealthVerdict,
    InstanceRecord,
    RecordError,
    ReplicaRecord,
    UpdateMark,
    VolumeDeletion,
    decode_records,
)

MAX_DOCUMENT_SIZE = 32 * 1024
"""Bytes of one encoded document; several kilobytes is the expected size, this is the ceiling."""

Scalar = str | int | float | bool | None
Record = Mapping[str, Scalar]


class DocumentError(NodeorchError, ValueError):
    """A document is malformed or too large."""


@dataclass(frozen=True, slots=True)
class NodeDocument:
    name: str
    version: int
    """Only grows: a newer document from the same owner always has a higher version."""
    boot_id: str
    """Random per agent start: tells a restart from a long silence."""
    agent_version: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)
    draining: bool = False
    desired_revision: int | None = None
    desired_digest: str = ""
    desired_error: str = ""
    """Why this node refused its desired-state file, if it did (it keeps the last good one)."""
    api: str = ""
    replica_addr: str = ""
    """HOST:PORT of this node's replica server, for the engines of other nodes."""
    max_rebuilds: int = 2
    """This node's max_concurrent_rebuilds: rebuilds it may take part in at once, as source or target."""
    attach_error: str = ""
    """Why this node cannot attach volumes (not root, a tool missing), or "" when it can: the
    instances of volume services are placed only on nodes that can."""
    updated_at: float = 0.0
    """Unix time the owner wrote this version."""
    instances: tuple[InstanceRecord, ...] = ()
    replicas: tuple[ReplicaRecord, ...] = ()
    engines: tuple[EngineRecord, ...] = ()
    health: tuple[HealthVerdict, ...] = ()
    deletions: tuple[VolumeDeletion, ...] = ()
    """Volumes deleted through this node, which every node drops its replicas of."""
    updates: tuple[UpdateMark, ...] = ()
    """This node's marks on rolling updates (paused, rolling back, resumed), one per service."""
    skipped_records: int = field(default=0, compare=False)
    """Records of this document a receiver skipped for a state it does not know (not on the wire)."""

    def replace(self, **changes: Any) -> NodeDocument:
        return dataclasses.replace(self, **changes)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "boot_id": self.boot_id,
            "agent_version": self.agent_version,
            "labels": dict(self.labels),
            "draining": self.draining,
            "desired": {"revision": self.desired_revision, "digest": self.desired_digest,
                        "error": self.desired_error},
            "api": self.api,
            "replica_addr": self.replica_addr,
            "attach_error": self.attach_error,
            "max_rebuilds": self.max_rebuilds,
            "updated_at": self.updated_at,
            "instances": [r.to_wire() for r in self.instances],
            "replicas": [r.to_wire() for r in self.replicas],
            "engines": [e.to_wire() for e in self.engines],
            "health": [v.to_wire() for v in self.health],
            "deletions": [d.to_wire() for d in self.deletions],
            "updates": [m.to_wire() for m in self.updates],
        }


_FIELDS = {
    "n": "name", "v": "version", "b": "boot_id", "av": "agent_version", "l": "labels", "d": "draining",
    "dr": "desired_revision", "dd": "desired_digest", "de": "desired_error", "api": "api", "ra": "replica_addr",
    "ae": "attach_error", "u": "updated_at", "i": "instances", "r": "replicas", "e": "engines", "h": "health",
    "x": "deletions", "mr": "max_rebuilds", "up": "updates",
}
_KEYS = {v: k for k, v in _FIELDS.items()}


def encode_document(document: NodeDocument) -> bytes:
    """The document's wire form; DocumentError if it exceeds MAX_DOCUMENT_SIZE."""
    payload = {
        _KEYS[f.name]: _plain(getattr(document, f.name)) for f in dataclasses.fields(document) if f.name in _KEYS
    }
    data: bytes = msgpack.packb(payload, use_bin_type=True)
    if len(data) > MAX_DOCUMENT_SIZE:
        raise DocumentError(f"document of {document.name} is {len(data)} bytes; the limit is {MAX_DOCUMENT_SIZE}")
    return data


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return dict(value)
    if isinstance(value, tuple):
        return [r.to_wire() for r in value]
    return value


def _check(ok: bool, problem: str) -> None:
    if not ok:
        raise DocumentError(problem)


def _records(value: Any, what: str) -> tuple[Record, ...]:
    _check(type(value) is list and len(value) <= 4096, f"{what} must be a list")
    records = []
    for item in value:
        _check(type(item) is dict and len(item) <= 64, f"{what} entries must be small tables")
        for key, scalar in item.items():
            _check(type(key) is str and len(key) <= 64, f"{what}: bad key")
            _check(scalar is None or type(scalar) in (str, int, float, bool), f"{what}.{key}: not a scalar")
            _check(not isinstance(scalar, str) or len(scalar) <= 4096, f"{what}.{key}: string too long")
        records.append(dict(item))
    return tuple(records)


_SECTIONS: dict[str, Callable[[Mapping[str, Any]], Any]] = {
    "instances": InstanceRecord.from_wire, "replicas": ReplicaRecord.from_wire,
    "engines": EngineRecord.from_wire, "health": HealthVerdict.from_wire, "deletions": VolumeDeletion.from_wire,
    "updates": UpdateMark.from_wire,
}


def decode_document(data: bytes) -> NodeDocument:
    """A validated document from its wire form; DocumentError for anything else."""
    _check(len(data) <= MAX_DOCUMENT_SIZE, f"{len(data)} bytes; the limit is {MAX_DOCUMENT_SIZE}")
    try:
        raw = msgpack.unpackb(data, raw=False, strict_map_key=True, max_ext_len=0, max_array_len=len(data),
                              max_map_len=len(data), max_str_len=len(data), max_bin_len=0)
    except Exception as error:  # msgpack raises many types for bad input
        raise DocumentError(f"not a document: {type(error).__name__}") from None
    _check(type(raw) is dict, "not a document: expected a table")
    # Fields added by newer agents are ignored, not refused, so versions can mix during an upgrade.
    values: dict[str, Any] = {_FIELDS[k]: v for k, v in raw.items() if k in _FIELDS}
    _check(type(values.get("name")) is str and 0 < len(values["name"]) <= 128, "name: missing or invalid")
    _check(type(values.get("version")) is int and values["version"] >= 0, "version: missing or invalid")
    _check(type(values.get("boot_id")) is str, "boot_id: missing")
    for key in ("agent_version", "desired_digest", "desired_error", "api", "replica_addr", "attach_error"):
        _check(type(values.get(key, "")) is str, f"{key}: expected a string")
    labels = values.get("labels", {})
    _check(type(labels) is dict and all(type(k) is str and type(v) is str for k, v in labels.items()),
           "labels: expected a table of strings")
    _check(type(values.get("draining", False)) is bool, "draining: expected a boolean")
    _check(type(values.get("max_rebuilds", 2)) is int and values.get("max_rebuilds", 2) >= 1,
           "max_rebuilds: expected a positive integer")
    revision = values.get("desired_revision")
    _check(revision is None or type(revision) is int, "desired_revision: expected an integer")
    updated = values.get("updated_at", 0.0)
    _check(type(updated) in (int, float), "updated_at: expected a number")
    values["updated_at"] = float(updated)
    skipped = 0
    try:
        for key, decode in _SECTIONS.items():
            values[key], skipped_here = decode_records(_records(values.get(key, []), key), decode, key)
            skipped += skipped_here
    except RecordError as error:
        raise DocumentError(str(error)) from None
    return NodeDocument(**values, skipped_records=skipped)


BOOT_KEY = "@boot"
"""The agent's boot id in its gossip metadata (no label key can start with '@')."""


def encode_labels(labels: Mapping[str, str], boot_id: str = "") -> bytes:
    """Node labels as gossip metadata, so every member table carries them, with the agent's boot
    id: a member that restarted is then known as such before its new document arrives."""
    meta = {**labels, BOOT_KEY: boot_id} if boot_id else dict(labels)
    return json.dumps(meta, separators=(",", ":"), sort_keys=True).encode()


@functools.lru_cache(maxsize=4096)
def _meta(meta: bytes) -> tuple[tuple[str, object], ...]:
    """A member's gossip metadata as (key, value) pairs, decoded once per distinct value: every
    services pass reads every member's labels, and they rarely change."""
    try:
        decoded = json.loads(meta) if meta else {}
    except ValueError:
        return ()
    if not isinstance(decoded, dict):
        return ()
    return tuple((str(k), v) for k, v in decoded.items())


def decode_labels(meta: bytes) -> dict[str, str]:
    """Labels from a member's gossip metadata; anything else (another agent's format) is no labels."""
    return {k: str(v) for k, v in _meta(meta) if not k.startswith("@")}


def boot_of(meta: bytes) -> str:
    """The boot id in a member's gossip metadata, or "" (an agent that does not say)."""
    boot = next((v for k, v in _meta(meta) if k == BOOT_KEY), "")
    return boot if isinstance(boot, str) else ""


def of_current_life(meta: bytes, document: NodeDocument) -> bool:
    """Whether `document` was written by the agent run whose gossip metadata is `meta` (a
    restarted agent's previous document says what ran before it went down)."""
    boot = boot_of(meta)
    return boot in ("", document.boot_id)

