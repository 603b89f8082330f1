"""Events the library delivers to its user, each stamped with when this node observed it."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from gossip._members import Member


class EventKind(enum.Enum):
    JOIN = "join"
    """A new member, or one back after being dead or having left."""
    UPDATE = "update"
    """A member's metadata or address changed."""
    SUSPECT = "suspect"
    ALIVE = "alive"
    """A suspected member refuted and is alive again."""
    DEAD = "dead"
    LEFT = "left"
    REAP = "reap"
    """A dead or left member was removed from the table after its tombstone timeout."""
    CONFLICT = "conflict"
    """Another address claimed the name of a live member and was refused."""


@dataclass(frozen=True, slots=True)
class MemberEvent:
    kind: EventKind
    member: Member
    at: float
    """Unix time at which this node observed the event."""


@dataclass(frozen=True, slots=True)
class AppStateEvent:
    """A node's application state reached this node (or this node set its own)."""

    node: str
    version: int
    data: bytes
    at: float


@dataclass(frozen=True, slots=True)
class UserEvent:
    """An application's event, sent by `origin` to every member; delivered once per member."""

    origin: str
    ltime: int
    """The origin's Lamport time when it sent the event."""
    name: str
    payload: bytes
    at: float


Event = MemberEvent | AppStateEvent | UserEvent
