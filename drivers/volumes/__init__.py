"""Replicated block volumes, the data path (knows nothing of nodeorch).

A replica server (one per node) keeps replicas as sparse files with metadata; an engine (one per
attached volume) claims the volume on a majority of its replicas with a new epoch and serves it
over NBD, acknowledging a write only once a majority of the configured replicas holds it. Both
run as processes of their own: `python -m drivers.volumes replica|engine ...`.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "Engine": "_engine", "EngineStatus": "_engine",
    "Fenced": "_errors", "NoQuorum": "_errors", "ProtocolError": "_errors", "VolumeError": "_errors",
    "StartPlan": "_quorum", "majority": "_quorum", "plan_start": "_quorum",
    "ReplicaServer": "_replica_server",
    "parse_seconds": "_sizes", "parse_size": "_sizes",
    "Replica": "_store", "ReplicaMeta": "_store", "ReplicaStore": "_store",
    "Secrets": "_wire", "load_keys": "_wire",
}
"""Loaded on first use: the agent reads sizes and status files without loading the engine."""

__all__ = ["Engine", "EngineStatus", "Fenced", "NoQuorum", "ProtocolError", "Replica", "ReplicaMeta",
           "ReplicaServer", "ReplicaStore", "Secrets", "StartPlan", "VolumeError", "load_keys", "majority",
           "parse_seconds", "parse_size", "plan_start"]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'drivers.volumes' has no attribute {name!r}")
    return getattr(importlib.import_module(f"drivers.volumes.{module}"), name)
