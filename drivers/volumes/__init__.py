"""Replicated block volumes, the data path (knows nothing of nodeorch).

A replica server (one per node) keeps replicas as sparse files with metadata; an engine (one per
attached volume) claims the volume on a majority of its replicas with a new epoch and serves it
over NBD, acknowledging a write only once a majority of the configured replicas holds it. Both
run as processes of their own: `python -m drivers.volumes replica|engine ...`.
"""

from drivers.volumes._engine import Engine, EngineStatus
from drivers.volumes._errors import Fenced, NoQuorum, ProtocolError, VolumeError
from drivers.volumes._quorum import StartPlan, majority, plan_start
from drivers.volumes._replica_server import ReplicaServer
from drivers.volumes._sizes import parse_seconds, parse_size
from drivers.volumes._store import Replica, ReplicaMeta, ReplicaStore
from drivers.volumes._wire import Secrets, load_keys

__all__ = [
    "Engine",
    "EngineStatus",
    "Fenced",
    "NoQuorum",
    "ProtocolError",
    "Replica",
    "ReplicaMeta",
    "ReplicaServer",
    "ReplicaStore",
    "Secrets",
    "StartPlan",
    "VolumeError",
    "load_keys",
    "majority",
    "parse_seconds",
    "parse_size",
    "plan_start",
]
