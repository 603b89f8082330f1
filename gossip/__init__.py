"""gossip: cluster membership and failure detection (SWIM with the Lifeguard extensions).

Knows nothing of nodeorch; it could be published on its own. Start with `GossipNode`.
"""

from gossip._config import GossipConfig, lan, local, profile, wan
from gossip._crypto import Keyring, Sealer, generate_key, key_id, parse_key
from gossip._errors import (
    BadEventName,
    ClosedError,
    ConfigError,
    DecodeError,
    GossipError,
    JoinError,
    KeyringError,
    PayloadTooLarge,
    PeerRefused,
    TransportError,
)
from gossip._events import AppStateEvent, Event, EventKind, MemberEvent, UserEvent
from gossip._members import Member
from gossip._memnet import Link, MemoryNetwork, MemoryTransport
from gossip._messages import Address, MemberState
from gossip._node import DEFAULT_PORT, EventStream, GossipNode, parse_address, resolve
from gossip._protocol import GossipCore
from gossip._transport import Transport, UdpTcpTransport

__all__ = [
    "DEFAULT_PORT",
    "Address",
    "AppStateEvent",
    "BadEventName",
    "ClosedError",
    "ConfigError",
    "DecodeError",
    "Event",
    "EventKind",
    "EventStream",
    "GossipConfig",
    "GossipCore",
    "GossipError",
    "GossipNode",
    "JoinError",
    "Keyring",
    "KeyringError",
    "Link",
    "Member",
    "MemberEvent",
    "MemberState",
    "MemoryNetwork",
    "MemoryTransport",
    "PayloadTooLarge",
    "PeerRefused",
    "Sealer",
    "Transport",
    "TransportError",
    "UdpTcpTransport",
    "UserEvent",
    "generate_key",
    "key_id",
    "lan",
    "local",
    "parse_address",
    "parse_key",
    "profile",
    "resolve",
    "wan",
]
