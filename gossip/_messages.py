"""Wire types of the membership protocol.

Each message is a frozen value with a numeric type id. The ids are append-only: a new message gets
a new number, and a number is never reused, so mixed versions ignore what they do not know.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

Address = tuple[str, int]
"""(host, port): an IP literal and a port. UDP and TCP share the port."""


class MemberState(enum.IntEnum):
    """Member states; the numbers travel in push-pull and are append-only."""

    ALIVE = 0
    SUSPECT = 1
    DEAD = 2
    LEFT = 3

    @property
    def label(self) -> str:
        return self.name.lower()


class MessageType(enum.IntEnum):
    PING = 0
    INDIRECT_PING = 1
    ACK = 2
    NACK = 3
    SUSPECT = 4
    ALIVE = 5
    DEAD = 6
    APP_STATE = 7
    PUSH_PULL = 8
    PUSH_PULL_REPLY = 9
    APP_PULL = 10
    APP_DATA = 11
    USER_EVENT = 12


@dataclass(frozen=True, slots=True)
class Ping:
    seq: int
    target: str
    """The name the sender believes lives at this address; a mismatch is ignored."""
    source: str
    source_addr: Address


@dataclass(frozen=True, slots=True)
class IndirectPing:
    seq: int
    target: str
    target_addr: Address
    want_nack: bool
    source: str
    source_addr: Address


@dataclass(frozen=True, slots=True)
class Ack:
    seq: int


@dataclass(frozen=True, slots=True)
class Nack:
    seq: int


@dataclass(frozen=True, slots=True)
class Suspect:
    incarnation: int
    node: str
    sender: str


@dataclass(frozen=True, slots=True)
class Alive:
    incarnation: int
    node: str
    addr: Address
    meta: bytes


@dataclass(frozen=True, slots=True)
class Dead:
    """Declares a node dead; when sender == node it is a graceful leave."""

    incarnation: int
    node: str
    sender: str

    @property
    def is_leave(self) -> bool:
        return self.sender == self.node


@dataclass(frozen=True, slots=True)
class AppState:
    """A node's application state changed; data rides along when small, else it is pulled."""

    node: str
    version: int
    data: bytes | None


@dataclass(frozen=True, slots=True)
class UserEventMessage:
    """An application's event for every member (Serf's user events): `ltime` is the origin's
    Lamport time, which with `origin` and `name` identifies it for deduplication."""

    origin: str
    ltime: int
    name: str
    payload: bytes


@dataclass(frozen=True, slots=True)
class MemberRecord:
    """One member as pushed and pulled in anti-entropy."""

    name: str
    addr: Address
    meta: bytes
    incarnation: int
    state: MemberState


@dataclass(frozen=True, slots=True)
class AppRecord:
    node: str
    version: int
    data: bytes


@dataclass(frozen=True, slots=True)
class PushPull:
    """Anti-entropy request: all members, and a digest of app-state versions."""

    join: bool
    members: tuple[MemberRecord, ...]
    app_digest: tuple[tuple[str, int], ...]


@dataclass(frozen=True, slots=True)
class PushPullReply:
    """Anti-entropy answer: all members, the digest, and the app state newer than the asker's."""

    members: tuple[MemberRecord, ...]
    app_digest: tuple[tuple[str, int], ...]
    app_data: tuple[AppRecord, ...]


@dataclass(frozen=True, slots=True)
class AppPull:
    """Ask for the current app state of these nodes."""

    nodes: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class AppData:
    records: tuple[AppRecord, ...]


Message = (
    Ping
    | IndirectPing
    | Ack
    | Nack
    | Suspect
    | Alive
    | Dead
    | AppState
    | PushPull
    | PushPullReply
    | AppPull
    | AppData
    | UserEventMessage
)

PACKET_MESSAGES = (Ping, IndirectPing, Ack, Nack, Suspect, Alive, Dead, AppState, UserEventMessage)
"""Messages allowed in UDP packets; the rest travel only over TCP streams."""
