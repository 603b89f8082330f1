"""Protocol profiles: every timing and size the membership protocol uses, with its reason.

The three profiles follow memberlist's LAN, WAN and Local defaults, which years of Serf, Consul
and Nomad deployments have tuned. Where a value differs from memberlist, the comment says why.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from gossip._errors import ConfigError

# Wire overhead of the sealed envelope (header, nonce and tag): see _crypto.SEALED_OVERHEAD.
# A payload limit below this leaves no room for any message.
MIN_PACKET_SIZE = 512


@dataclass(frozen=True, slots=True)
class GossipConfig:
    """Timings in seconds, sizes in bytes. Build one with lan(), wan() or local()."""

    # Failure detection -------------------------------------------------------------------------
    probe_interval: float = 1.0
    """One member is probed per interval. Detection time scales with it; so does idle traffic."""
    probe_timeout: float = 0.5
    """Wait this long for a direct ack before asking others to probe (about the 99th percentile RTT)."""
    indirect_checks: int = 3
    """Members asked to probe on our behalf after a missed ack; more rules out our own bad links."""
    tcp_fallback_ping: bool = True
    """Also ping over TCP after a missed ack: it gets through where only UDP is filtered or lost."""
    awareness_max_multiplier: int = 8
    """Lifeguard: a struggling node stretches its probe timing by at most this factor."""
    suspicion_mult: int = 4
    """Minimum suspicion timeout = suspicion_mult * max(1, log10(N)) * probe_interval."""
    suspicion_max_timeout_mult: int = 6
    """Lifeguard: without confirmations a suspicion lasts this many times the minimum."""

    # Dissemination -----------------------------------------------------------------------------
    gossip_interval: float = 0.2
    """Every interval, pending updates go to gossip_nodes random members."""
    gossip_nodes: int = 3
    """Fanout of each gossip round."""
    retransmit_mult: int = 4
    """Each update is sent retransmit_mult * ceil(log10(N + 1)) times, enough to reach everyone w.h.p."""
    gossip_to_the_dead_time: float = 30.0
    """Keep gossiping to a member this long after its death, so a falsely dead one learns and refutes."""
    max_packet_size: int = 1400
    """UDP payload limit: fits an Ethernet MTU with IP and UDP headers, so packets never fragment."""
    max_queue_depth: int = 4096
    """Pending broadcasts beyond this are pruned, oldest and most-sent first; push-pull repairs the rest."""

    # Anti-entropy and membership lifetime --------------------------------------------------------
    push_pull_interval: float = 30.0
    """Full state exchange with one random member; scaled up with cluster size above 32 members."""
    rejoin_interval: float = 15.0
    """Try to reach a dead member or a seed this often, so partitions heal on their own."""
    reconnect_timeout: float = 24 * 3600.0
    """Stop trying to reach a failed member after this long."""
    dead_node_reclaim_time: float = 30.0
    """A dead member's name may be claimed from a new address after this long (memberlist: never).
    A host that reboots with a new DHCP address then rejoins under its own name."""
    tombstone_timeout: float = 24 * 3600.0
    """Dead and left members are kept this long, then reaped from the member table."""

    # Streams (TCP) -------------------------------------------------------------------------------
    tcp_timeout: float = 10.0
    """Deadline for one whole TCP exchange (connect, request, reply)."""
    max_stream_frame: int = 32 * 1024 * 1024
    """Largest TCP frame accepted; push-pull of thousands of members with their app state fits."""
    max_inbound_streams: int = 64
    """Concurrent inbound TCP exchanges; more wait, which bounds memory under a connection flood."""

    # Payload limits ------------------------------------------------------------------------------
    max_meta_size: int = 512
    """Node metadata travels in every alive message, so it must stay small."""
    max_app_state_size: int = 64 * 1024
    """Per-node application state (the daemon's node document) travels over TCP."""
    inline_app_state_size: int = 512
    """App state up to this size rides inside the broadcast itself; larger is fetched over TCP."""
    max_name_length: int = 128
    """Node names longer than this are refused on the wire."""
    max_user_event_size: int = 512
    """A user event's name and payload together (Serf's limit): it rides in gossip packets."""

    # Replay protection ---------------------------------------------------------------------------
    replay_window: int = 1024
    """Sequence numbers tracked per sender boot: a packet older than this many is refused."""
    replay_memory: float = 600.0
    """A sender boot unheard for this long is forgotten; older replays are stale by incarnation."""

    def __post_init__(self) -> None:
        checks: list[tuple[bool, str]] = [
            (self.probe_interval > 0, "probe_interval must be > 0"),
            (0 < self.probe_timeout <= self.probe_interval, "probe_timeout must be in (0, probe_interval]"),
            (self.indirect_checks >= 0, "indirect_checks must be >= 0"),
            (self.awareness_max_multiplier >= 1, "awareness_max_multiplier must be >= 1"),
            (self.suspicion_mult >= 1, "suspicion_mult must be >= 1"),
            (self.suspicion_max_timeout_mult >= 1, "suspicion_max_timeout_mult must be >= 1"),
            (self.gossip_interval > 0, "gossip_interval must be > 0"),
            (self.gossip_nodes >= 1, "gossip_nodes must be >= 1"),
            (self.retransmit_mult >= 1, "retransmit_mult must be >= 1"),
            (self.max_packet_size >= MIN_PACKET_SIZE, f"max_packet_size must be >= {MIN_PACKET_SIZE}"),
            (self.max_packet_size <= 65000, "max_packet_size must be <= 65000 (one UDP datagram)"),
            (self.max_queue_depth >= 16, "max_queue_depth must be >= 16"),
            (self.push_pull_interval > 0, "push_pull_interval must be > 0"),
            (self.rejoin_interval > 0, "rejoin_interval must be > 0"),
            (self.tcp_timeout > 0, "tcp_timeout must be > 0"),
            (self.max_stream_frame >= 64 * 1024, "max_stream_frame must be >= 65536"),
            (self.max_inbound_streams >= 1, "max_inbound_streams must be >= 1"),
            (0 <= self.max_meta_size <= 512, "max_meta_size must be in [0, 512]"),
            (self.max_app_state_size >= 0, "max_app_state_size must be >= 0"),
            (self.inline_app_state_size <= self.max_packet_size // 2, "inline_app_state_size too large"),
            (1 <= self.max_name_length <= 255, "max_name_length must be in [1, 255]"),
            (0 < self.max_user_event_size <= self.max_packet_size // 2, "max_user_event_size out of range"),
            (self.replay_window >= 64, "replay_window must be >= 64"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)

    def replace(self, **changes: object) -> GossipConfig:
        """A copy with some fields changed, validated again."""
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]

    # Derived values: pure functions of the profile and the cluster size. ------------------------

    def retransmit_limit(self, members: int) -> int:
        """How many times one broadcast is sent before it is dropped from the queue."""
        return self.retransmit_mult * math.ceil(math.log10(max(1, members) + 1))

    def suspicion_min_timeout(self, members: int) -> float:
        """The shortest a suspicion may last; the confirmed floor of Lifeguard's timeout."""
        scale = max(1.0, math.log10(max(1, members)))
        return self.suspicion_mult * scale * self.probe_interval

    def suspicion_max_timeout(self, members: int) -> float:
        return self.suspicion_max_timeout_mult * self.suspicion_min_timeout(members)

    def suspicion_confirmations(self, members: int) -> int:
        """Independent confirmations that shrink a suspicion to its minimum (Lifeguard's k)."""
        k = self.suspicion_mult - 2
        return 0 if members - 2 < k else k

    def push_pull_period(self, members: int) -> float:
        """memberlist's scaling: above 32 members, one more interval per doubling."""
        if members <= 32:
            return self.push_pull_interval
        return self.push_pull_interval * (math.ceil(math.log2(members) - math.log2(32)) + 1)


def lan() -> GossipConfig:
    """A local network: sub-millisecond RTTs, failures detected in seconds (memberlist LAN)."""
    return GossipConfig()


def wan() -> GossipConfig:
    """Hosts across the internet: RTTs up to hundreds of ms, more loss (memberlist WAN)."""
    return GossipConfig(
        tcp_timeout=30.0,
        suspicion_mult=6,
        push_pull_interval=60.0,
        probe_timeout=3.0,
        probe_interval=5.0,
        gossip_nodes=4,
        gossip_interval=0.5,
        gossip_to_the_dead_time=60.0,
        rejoin_interval=30.0,
        dead_node_reclaim_time=120.0,
    )


def local() -> GossipConfig:
    """One host or a loopback test bed: tight timings (memberlist Local)."""
    return GossipConfig(
        tcp_timeout=1.0,
        indirect_checks=1,
        retransmit_mult=2,
        suspicion_mult=3,
        push_pull_interval=15.0,
        probe_timeout=0.2,
        probe_interval=1.0,
        gossip_interval=0.1,
        gossip_to_the_dead_time=15.0,
        rejoin_interval=5.0,
        dead_node_reclaim_time=5.0,
    )


PROFILES = {"lan": lan, "wan": wan, "local": local}


def profile(name: str) -> GossipConfig:
    try:
        return PROFILES[name]()
    except KeyError:
        raise ConfigError(f"unknown gossip profile {name!r}: expected one of {', '.join(PROFILES)}") from None
