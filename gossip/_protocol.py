"""The sans-IO protocol core: SWIM with Lifeguard, as a pure state machine.

Every input is a method taking `now` (seconds on a monotonic clock); every output is a list of
actions for the driver: packets to send, TCP exchanges to make, events to deliver. The core owns no
socket, task or clock, so the asyncio driver, the in-memory network and the virtual-time simulation
all run the very same logic.
"""

from __future__ import annotations

import logging
import random
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from gossip._awareness import Awareness
from gossip._broadcasts import BroadcastQueue
from gossip._codec import MAX_PACKET_MESSAGES, Codec, encode, encode_packet, header_size
from gossip._config import GossipConfig
from gossip._errors import BadEventName, DecodeError, PayloadTooLarge
from gossip._events import AppStateEvent, Event, EventKind, MemberEvent, UserEvent
from gossip._members import Member, MemberTable, Outcome, _Entry
from gossip._messages import (
    Ack,
    Address,
    Alive,
    AppData,
    AppPull,
    AppRecord,
    AppState,
    Dead,
    IndirectPing,
    MemberRecord,
    MemberState,
    Message,
    Nack,
    Ping,
    PushPull,
    PushPullReply,
    Suspect,
    UserEventMessage,
)
from gossip._suspicion import SuspicionTimer
from gossip._user_events import UserEventClock

log = logging.getLogger(__name__)

REAP_INTERVAL = 15.0
"""How often dead and left members past their tombstone timeout are removed."""


# Actions ------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SendPacket:
    to: Address
    payload: bytes


@dataclass(frozen=True, slots=True)
class SendRequest:
    """A TCP exchange: send one frame, then hand the reply (or None) to on_response(token)."""

    to: Address
    payload: bytes
    token: int
    timeout: float


@dataclass(frozen=True, slots=True)
class EmitEvent:
    event: Event


Action = SendPacket | SendRequest | EmitEvent


# Pending work -------------------------------------------------------------------------------------


class _Probe:
    """The one probe in flight: a ping, then indirect pings and a TCP ping, then a verdict."""

    __slots__ = (
        "acked",
        "direct_deadline",
        "end_deadline",
        "escalated",
        "expected_nacks",
        "incarnation",
        "nacks",
        "seq",
        "target",
    )

    def __init__(self, target: str, incarnation: int, seq: int, direct: float, end: float) -> None:
        self.target = target
        self.incarnation = incarnation
        self.seq = seq
        self.direct_deadline = direct
        self.end_deadline = end
        self.acked = False
        self.escalated = False
        self.expected_nacks = 0
        self.nacks = 0


class _Relay:
    """An indirect probe we make for another member."""

    __slots__ = ("deadline", "requester", "seq", "want_nack")

    def __init__(self, requester: Address, seq: int, want_nack: bool, deadline: float) -> None:
        self.requester = requester
        self.seq = seq
        self.want_nack = want_nack
        self.deadline = deadline


@dataclass(frozen=True, slots=True)
class _Request:
    kind: str  # "push_pull" | "tcp_ping" | "app_pull" | "app_push"
    peer: Address
    seq: int = 0
    nodes: tuple[str, ...] = ()


# The core -----------------------------------------------------------------------------------------


class GossipCore:
    def __init__(
        self,
        config: GossipConfig,
        *,
        name: str,
        addr: Address,
        meta: bytes = b"",
        now: float,
        rng: random.Random,
        packet_overhead: int = 0,
        clock_offset: float = 0.0,
    ) -> None:
        if len(meta) > config.max_meta_size:
            raise PayloadTooLarge(f"metadata is {len(meta)} bytes; the limit is {config.max_meta_size}")
        self.config = config
        self.name = name
        self._rng = rng
        self._clock_offset = clock_offset
        self.codec = Codec(config)
        self.stats: Counter[str] = Counter()
        self._table = MemberTable(name, addr, meta, now, config.dead_node_reclaim_time)
        self._queue = BroadcastQueue(config.max_queue_depth)
        self._awareness = Awareness(config.awareness_max_multiplier)
        self._suspicions: dict[str, SuspicionTimer] = {}
        self._returned: dict[str, float] = {}
        """Members that came back alive (from suspect, dead or left) lately, and when: their
        verdicts of death may come from timers started while they were cut off from us."""
        self._budget = config.max_packet_size - packet_overhead - header_size(MAX_PACKET_MESSAGES)
        self._seq = rng.randrange(1 << 31)
        self._tokens = 0

        self._probe_order: list[str] = []
        self._probe_index = 0
        self._suspect_turn = False
        self._probe: _Probe | None = None
        self._relays: dict[int, _Relay] = {}
        self._requests: dict[int, _Request] = {}
        self._strangers: dict[Address, float] = {}

        self._app: dict[str, tuple[int, bytes]] = {}
        self._app_floor = 0
        self._fetching: set[str] = set()
        self._user_events = UserEventClock()

        def jitter(period: float) -> float:
            return now + period * rng.random()

        self._next_probe = jitter(config.probe_interval)
        self._next_gossip = jitter(config.gossip_interval)
        self._next_push_pull = now + config.push_pull_interval * (0.5 + rng.random())
        self._next_reconnect = jitter(config.rejoin_interval)
        self._next_reap = now + REAP_INTERVAL
        self._announced = now

    # Reading -------------------------------------------------------------------------------------

    @property
    def local(self) -> Member:
        return self._table.me.snapshot(self._clock_offset)

    def members(self) -> list[Member]:
        return [e.snapshot(self._clock_offset) for e in self._table.entries()]

    def names_in_state(self, state: MemberState) -> set[str]:
        return {e.name for e in self._table.entries() if e.state is state}

    def member(self, name: str) -> Member | None:
        entry = self._table.get(name)
        return None if entry is None else entry.snapshot(self._clock_offset)

    def app_state(self, name: str) -> tuple[int, bytes] | None:
        return self._app.get(name)

    @property
    def awareness(self) -> int:
        return self._awareness.score

    @property
    def queued_broadcasts(self) -> int:
        return len(self._queue)

    def alive_peers(self) -> list[Member]:
        return [
            e.snapshot(self._clock_offset)
            for e in self._table.entries()
            if e.name != self.name and e.state in (MemberState.ALIVE, MemberState.SUSPECT)
        ]

    def leave_sent(self) -> bool:
        """Whether our leave broadcast has been sent its full count (or there is nobody to tell)."""
        return not self._queue.pending(("m", self.name)) or not self.alive_peers()

    # Timers --------------------------------------------------------------------------------------

    def next_deadline(self) -> float:
        """When tick() next has work to do; the driver sleeps until then or until input arrives.

        Idle wake-ups are the idle cost: the gossip timer counts only while updates wait to go out,
        an acked probe has no deadline left worth waking for, and the periodic chores (push-pull,
        reconnecting to the dead, reaping) ride on the probe tick at or after their time: a wake-up
        of their own, several times a minute, would bring them at most one probe interval sooner.
        Stall detection measures lateness against the other deadlines only: the gossip one may lie
        in the past when an update arrives after a quiet spell, which is no sign that this node
        was stopped.
        """
        deadline = self._next_probe  # push-pull, reconnection and reaping wait for the probe tick they fall in
        if self._probe is not None and not self._probe.acked:
            deadline = min(
                deadline,
                self._probe.end_deadline if self._probe.escalated else self._probe.direct_deadline,
            )
        for relay in self._relays.values():
            deadline = min(deadline, relay.deadline)
        for timer in self._suspicions.values():
            deadline = min(deadline, timer.deadline)
        self._announced = deadline
        return min(deadline, self._next_gossip) if self._queue else deadline

    def tick(self, now: float) -> list[Action]:
        out: list[Action] = []
        stalled = now - self._announced
        if stalled > self.config.probe_timeout / 2:
            self._on_stall(stalled)
        probe = self._probe
        if probe is not None and not probe.escalated and now >= probe.direct_deadline:
            self._escalate(now, probe, out)
        if probe is not None and probe.escalated and now >= probe.end_deadline:
            self._conclude(now, probe, out)
        for seq in [s for s, r in self._relays.items() if now >= r.deadline]:
            relay = self._relays.pop(seq)
            if relay.want_nack:
                out.append(self._packet(relay.requester, [encode(Nack(relay.seq))]))
        for name in [n for n, t in self._suspicions.items() if now >= t.deadline]:
            self._suspicion_expired(now, name, out)
        if now >= self._next_probe:
            self._start_probe(now, out)
        if self._queue and now >= self._next_gossip:
            self._next_gossip = now + self.config.gossip_interval
            self._gossip(now, out)
        if now >= self._next_push_pull:
            self._next_push_pull = now + self.config.push_pull_period(len(self._table))
            self._push_pull_random(out)
        if now >= self._next_reconnect:
            self._next_reconnect = now + self.config.rejoin_interval
            self._reconnect(now, out)
        if now >= self._next_reap:
            self._next_reap = now + REAP_INTERVAL
            self._reap(now, out)
        return out

    def _on_stall(self, stalled: float) -> None:
        """This node could not run for a while: it may have missed acks and refutations.

        Lifeguard's reasoning applied to our own scheduler: a slow node must not accuse others, so
        the probe in flight is abandoned and every suspicion we time is pushed out by the stall.
        """
        self.stats["stalls"] += 1
        self._awareness.apply(1)
        if self._probe is not None and not self._probe.acked:
            self._probe = None
        for timer in self._suspicions.values():
            timer.postpone(stalled)
        log.debug("%s: stalled %.3fs; probe abandoned, suspicions postponed", self.name, stalled)

    # Probing -------------------------------------------------------------------------------------

    def _next_seq(self) -> int:
        self._seq = (self._seq + 1) & 0xFFFFFFFF
        return self._seq

    def _probe_target(self) -> str | None:
        for _ in range(2):
            while self._probe_index < len(self._probe_order):
                name = self._probe_order[self._probe_index]
                self._probe_index += 1
                entry = self._table.get(name)
                if entry is not None and entry.state in (MemberState.ALIVE, MemberState.SUSPECT):
                    return name
            # Wrapped around: a fresh shuffle of whoever is probeable now.
            self._probe_order = [
                e.name
                for e in self._table.entries()
                if e.name != self.name and e.state in (MemberState.ALIVE, MemberState.SUSPECT)
            ]
            self._rng.shuffle(self._probe_order)
            self._probe_index = 0
        return None

    def _suspect_to_probe(self, now: float) -> str | None:
        """Every other probe goes to a member we suspect, least recently probed first.

        Beyond the round-robin, this gives a suspect more chances to hear of the suspicion (the
        buddy system) and to refute in its ack when its refutation missed us, and it brings the
        independent confirmations of a truly dead member sooner."""
        self._suspect_turn = not self._suspect_turn
        if not self._suspect_turn or not self._suspicions:
            return None
        name = min(self._suspicions, key=lambda n: self._suspicions[n].last_probed)
        self._suspicions[name].last_probed = now
        return name

    def _start_probe(self, now: float, out: list[Action]) -> None:
        self._next_probe = now + self._awareness.scale(self.config.probe_interval)
        if self._table.leaving:
            return
        if self._probe is not None:
            # The previous probe has not concluded (its deadlines were stretched); let it finish.
            return
        name = self._suspect_to_probe(now) or self._probe_target()
        if name is None:
            return
        entry = self._table.get(name)
        assert entry is not None
        seq = self._next_seq()
        self._probe = _Probe(
            name,
            entry.incarnation,
            seq,
            now + self._awareness.scale(self.config.probe_timeout),
            now + self._awareness.scale(self.config.probe_interval),
        )
        self.stats["probes"] += 1
        log.debug("%s: probing %s (%s)", self.name, name, entry.state.label)
        primaries = [encode(Ping(seq, name, self.name, self._table.me.addr))]
        if entry.state is MemberState.SUSPECT:
            # Buddy system: tell the suspect in the probe itself, so it can refute at once.
            primaries.append(encode(Suspect(entry.incarnation, name, self.name)))
        out.append(self._packet(entry.addr, primaries))

    def _escalate(self, now: float, probe: _Probe, out: list[Action]) -> None:
        probe.escalated = True
        if probe.acked:
            return
        target = self._table.get(probe.target)
        if target is None:
            self._probe = None
            return
        candidates = [
            e
            for e in self._table.entries()
            if e.name not in (self.name, probe.target) and e.state is MemberState.ALIVE
        ]
        helpers = self._rng.sample(candidates, min(self.config.indirect_checks, len(candidates)))
        for helper in helpers:
            request = IndirectPing(probe.seq, probe.target, target.addr, True, self.name, self._table.me.addr)
            out.append(self._packet(helper.addr, [encode(request)]))
            self.stats["indirect_probes"] += 1
        probe.expected_nacks = len(helpers)
        if self.config.tcp_fallback_ping:
            token = self._request_token(_Request("tcp_ping", target.addr, seq=probe.seq))
            ping = encode(Ping(probe.seq, probe.target, self.name, self._table.me.addr))
            out.append(SendRequest(target.addr, ping, token, max(probe.end_deadline - now, 0.01)))
            self.stats["tcp_pings"] += 1

    def _conclude(self, now: float, probe: _Probe, out: list[Action], target_refused: bool = False) -> None:
        self._probe = None
        if probe.acked:
            return
        self.stats["probe_failures"] += 1
        if not target_refused:  # a refusal is evidence about the target, not about our own health
            # Helpers that did not even answer with a nack point at our own links, not the target's;
            # with no helpers to ask, the failure counts against us once.
            missing = probe.expected_nacks - probe.nacks if probe.expected_nacks else 1
            if missing > 0:
                self._awareness.apply(missing)
        entry = self._table.get(probe.target)
        if entry is None or entry.incarnation != probe.incarnation:
            return  # it refuted or changed while we probed
        if entry.state is MemberState.ALIVE:
            log.info("%s: no ack from %s; suspecting it", self.name, probe.target)
        self._apply_suspect(now, Suspect(probe.incarnation, probe.target, self.name), out)

    def on_unreachable(self, now: float, addr: Address) -> list[Action]:
        """The host at `addr` answered that nothing listens on its gossip port (ICMP port
        unreachable): if that is the member we are probing, the probe has failed already."""
        out: list[Action] = []
        probe = self._probe
        if probe is not None and not probe.acked:
            target = self._table.get(probe.target)
            if target is not None and target.addr == addr:
                self.stats["probes_unreachable"] += 1
                self._conclude(now, probe, out, target_refused=True)
        return out

    def _acked(self, seq: int) -> None:
        probe = self._probe
        if probe is not None and probe.seq == seq and not probe.acked:
            probe.acked = True
            self.stats["probes_acked"] += 1
            self._awareness.apply(-1)

    # Receiving packets ---------------------------------------------------------------------------

    def on_packet(self, now: float, payload: bytes, src: Address) -> list[Action]:
        """A UDP payload (already opened by the envelope layer) from `src`."""
        try:
            messages = self.codec.decode_packet(payload)
        except DecodeError as error:
            self.stats[f"drop_{error.reason}"] += 1
            log.debug("%s: dropped packet from %s:%s: %s", self.name, src[0], src[1], error)
            return []
        out: list[Action] = []
        replies: list[tuple[Address, bytes]] = []
        for message in messages:
            self._handle(now, message, src, out, replies)
        # Replies go last so they carry any refutation the same packet caused (buddy system).
        for to, reply in replies:
            out.append(self._packet(to, [reply]))
        return out

    def _handle(
        self, now: float, message: Message, src: Address, out: list[Action], replies: list[tuple[Address, bytes]]
    ) -> None:
        match message:
            case Ping():
                if message.target != self.name:
                    self.stats["drop_wrong_target"] += 1
                    return
                replies.append((src, encode(Ack(message.seq))))
                self._sync_with_stranger(now, message.source, message.source_addr, out)
            case IndirectPing():
                seq = self._next_seq()
                deadline = now + self.config.probe_timeout
                self._relays[seq] = _Relay(src, message.seq, message.want_nack, deadline)
                ping = Ping(seq, message.target, self.name, self._table.me.addr)
                out.append(self._packet(message.target_addr, [encode(ping)]))
            case Ack():
                relay = self._relays.pop(message.seq, None)
                if relay is not None:
                    replies.append((relay.requester, encode(Ack(relay.seq))))
                else:
                    self._acked(message.seq)
            case Nack():
                if self._probe is not None and self._probe.seq == message.seq:
                    self._probe.nacks += 1
            case Suspect():
                self._apply_suspect(now, message, out)
            case Alive():
                self._apply_alive(now, message, out)
            case Dead() if self._from_returned_member(now, message):
                self.stats["deaths_doubted"] += 1
                self._apply_suspect(now, Suspect(message.incarnation, message.node, message.sender), out)
            case Dead():
                self._apply_dead(now, message, out)
            case AppState():
                self._apply_app_announce(now, message, src, out)
            case UserEventMessage():
                self._apply_user_event(now, message, out)
            case _:
                self.stats["drop_unexpected"] += 1

    def _sync_with_stranger(self, now: float, source: str, addr: Address, out: list[Action]) -> None:
        """A member we do not know probes us: we restarted (without seeds) while it kept us in its
        table. One push-pull with it teaches us the whole cluster at once."""
        if source in self._table or source == self.name or self._table.leaving:
            return
        if self._strangers.get(addr, 0.0) > now:
            return
        self._strangers = {a: t for a, t in self._strangers.items() if t > now}
        self._strangers[addr] = now + self.config.probe_interval * 5
        self.stats["stranger_syncs"] += 1
        out.append(self._push_pull_request(addr, True))

    # Applying membership messages ------------------------------------------------------------------

    def _apply_alive(self, now: float, message: Alive, out: list[Action]) -> None:
        known = self._table.get(message.node)
        away = known is not None and known.state is not MemberState.ALIVE
        outcomes = self._table.apply_alive(message, now)
        if away and outcomes & {Outcome.ALIVE_AGAIN, Outcome.JOINED}:
            self._returned[message.node] = now
        if Outcome.REFUTE in outcomes:
            self._refute(message.incarnation, out)
            return
        if Outcome.CONFLICT in outcomes:
            entry = self._table.get(message.node)
            assert entry is not None
            self.stats["name_conflicts"] += 1
            log.warning(
                "%s: %s claimed from %s:%s but alive at %s:%s; refused",
                self.name, message.node, message.addr[0], message.addr[1], entry.addr[0], entry.addr[1],
            )
            self._emit(now, EventKind.CONFLICT, message.node, out)
            return
        if outcomes == {Outcome.IGNORED}:
            return
        self._suspicions.pop(message.node, None)
        self._queue.queue(("m", message.node), encode(message))
        if Outcome.JOINED in outcomes:
            self._add_to_probe_order(message.node)
            self._emit(now, EventKind.JOIN, message.node, out)
        if Outcome.ALIVE_AGAIN in outcomes:
            self._emit(now, EventKind.ALIVE, message.node, out)
        if Outcome.UPDATED in outcomes:
            self._emit(now, EventKind.UPDATE, message.node, out)

    def _apply_suspect(self, now: float, message: Suspect, out: list[Action]) -> None:
        outcome = self._table.apply_suspect(message, now)
        if outcome is Outcome.IGNORED and message.node == self.name:
            self._reannounce()
        elif outcome is Outcome.REFUTE:
            self._refute(message.incarnation, out)
        elif outcome is Outcome.CONFIRMED:
            timer = self._suspicions.get(message.node)
            if timer is not None and timer.confirm(message.sender):
                self._queue.queue(("m", message.node), encode(message))
        elif outcome is Outcome.SUSPECTED:
            # Only live members can confirm: dead and left ones must not stretch the timeout.
            n = self._table.count(MemberState.ALIVE) + self._table.count(MemberState.SUSPECT)
            self._suspicions[message.node] = SuspicionTimer(
                incarnation=message.incarnation,
                accuser=message.sender,
                start=now,
                k=self.config.suspicion_confirmations(n),
                min_timeout=self.config.suspicion_min_timeout(n),
                max_timeout=self.config.suspicion_max_timeout(n),
            )
            self.stats["suspicions"] += 1
            self._queue.queue(("m", message.node), encode(message))
            self._emit(now, EventKind.SUSPECT, message.node, out)

    def _apply_dead(self, now: float, message: Dead, out: list[Action]) -> None:
        outcome = self._table.apply_dead(message, now)
        if outcome is Outcome.IGNORED and message.node == self.name:
            self._reannounce()
        elif outcome is Outcome.REFUTE:
            self._refute(message.incarnation, out)
        elif outcome in (Outcome.DIED, Outcome.LEFT):
            self._suspicions.pop(message.node, None)
            self._queue.queue(("m", message.node), encode(message))
            self._emit(now, EventKind.LEFT if outcome is Outcome.LEFT else EventKind.DEAD, message.node, out)

    def _from_returned_member(self, now: float, message: Dead) -> bool:
        """Whether a verdict of death comes from a member we did not see alive all along: one we
        hold as suspect, dead or left, or that came back less than the longest suspicion ago.
        Cut off from us (a partition, a stall), it suspected members it could not reach, and its
        timers can expire after it is back, just before their refutations reach it. Such a
        verdict is taken as a suspicion: the accused refutes it, and a member that did die is
        declared dead by our own timer."""
        if message.is_leave or message.node == self.name:
            return False
        declarer = self._table.get(message.sender)
        if declarer is None or message.sender == self.name:
            return False
        if declarer.state is not MemberState.ALIVE:
            return True
        returned = self._returned.get(message.sender)
        return returned is not None and now - returned < self._longest_suspicion()

    def _longest_suspicion(self) -> float:
        live = self._table.count(MemberState.ALIVE) + self._table.count(MemberState.SUSPECT)
        return self.config.suspicion_max_timeout(live)

    def _suspicion_expired(self, now: float, name: str, out: list[Action]) -> None:
        timer = self._suspicions[name]
        if self._awareness.worst and timer.hold(now, self.config.probe_interval):
            # Our own health is at its worst (what we ask goes unanswered, helpers send no
            # nacks): we are likely the one cut off, and the confirmations came from members cut
            # off with us. The verdict waits for our health to recover, up to the unconfirmed
            # timeout, so a partition's small side does not declare the rest dead meanwhile.
            self.stats["verdicts_held"] += 1
            return
        del self._suspicions[name]
        entry = self._table.get(name)
        if entry is None or entry.state is not MemberState.SUSPECT or entry.incarnation != timer.incarnation:
            return
        log.info("%s: suspicion of %s expired after %.1fs; declaring it dead", self.name, name, now - timer.start)
        self.stats["deaths_declared"] += 1
        self._apply_dead(now, Dead(timer.incarnation, name, self.name), out)

    def _refute(self, accused: int, out: list[Action]) -> None:
        incarnation = self._table.refute(accused)
        self.stats["refutations"] += 1
        self._awareness.apply(1)
        log.info("%s: refuting an accusation; incarnation now %d", self.name, incarnation)
        self._queue.queue(("m", self.name), encode(self._table.alive_message()))

    def _reannounce(self) -> None:
        """A stale accusation of us arrived: its sender missed our refutation, so send it again."""
        key = ("m", self.name)
        if not self._table.leaving and not self._queue.pending(key):
            self.stats["reannouncements"] += 1
            self._queue.queue(key, encode(self._table.alive_message()))

    def _emit(self, now: float, kind: EventKind, name: str, out: list[Action]) -> None:
        entry = self._table.get(name)
        if entry is None:
            return
        out.append(EmitEvent(MemberEvent(kind, entry.snapshot(self._clock_offset), now + self._clock_offset)))

    def _add_to_probe_order(self, name: str) -> None:
        # A random position keeps probing fair without waiting for the next shuffle.
        self._probe_order.insert(self._rng.randint(self._probe_index, len(self._probe_order)), name)

    # Dissemination -------------------------------------------------------------------------------

    def _packet(self, to: Address, primaries: Sequence[bytes]) -> SendPacket:
        """A compound packet: the primary messages, then as many broadcasts as fit."""
        budget = self._budget - sum(len(p) for p in primaries)
        limit = self.config.retransmit_limit(len(self._table))
        extra = self._queue.take(budget, limit) if budget > 0 else []
        return SendPacket(to, encode_packet([*primaries, *extra]))

    def _gossip(self, now: float, out: list[Action]) -> None:
        if not self._queue:
            return
        targets = self._gossip_targets(now)
        limit = self.config.retransmit_limit(len(self._table))
        for target in targets:
            messages = self._queue.take(self._budget, limit)
            if not messages:
                return
            out.append(SendPacket(target.addr, encode_packet(messages)))

    def _gossip_targets(self, now: float) -> list[_Entry]:
        """`gossip_nodes` members drawn at random among the live ones and those dead for less than
        `gossip_to_the_dead_time`. Drawn by rejection from the whole table, so a tick costs no
        pass over thousands of members; the full pass only when the draws found too few."""
        horizon = now - self.config.gossip_to_the_dead_time

        def eligible(e: _Entry) -> bool:
            return e.name != self.name and (
                e.state in (MemberState.ALIVE, MemberState.SUSPECT)
                or (e.state is MemberState.DEAD and e.state_since >= horizon))

        entries, wanted = self._table.entries(), self.config.gossip_nodes
        drawn: dict[str, _Entry] = {}
        for _ in range(4 * wanted if len(entries) > 4 * wanted else 0):
            entry = entries[self._rng.randrange(len(entries))]
            if entry.name not in drawn and eligible(entry):
                drawn[entry.name] = entry
                if len(drawn) == wanted:
                    return list(drawn.values())
        candidates = [e for e in entries if eligible(e)]
        return self._rng.sample(candidates, min(wanted, len(candidates)))

    # Anti-entropy --------------------------------------------------------------------------------

    def _request_token(self, request: _Request) -> int:
        self._tokens += 1
        self._requests[self._tokens] = request
        return self._tokens

    def _push_pull_request(self, peer: Address, join: bool) -> SendRequest:
        message = PushPull(join, tuple(self._table.records()), self._digest())
        token = self._request_token(_Request("push_pull", peer))
        self.stats["push_pulls"] += 1
        return SendRequest(peer, encode(message), token, self.config.tcp_timeout)

    def join(self, addrs: Iterable[Address]) -> list[Action]:
        """Push-pull with each address; on_response tells which answered."""
        return [self._push_pull_request(addr, True) for addr in addrs]

    def _push_pull_random(self, out: list[Action]) -> None:
        peers = [e for e in self._table.entries() if e.name != self.name and e.state is MemberState.ALIVE]
        if peers and not self._table.leaving:
            out.append(self._push_pull_request(self._rng.choice(peers).addr, False))

    def _reconnect(self, now: float, out: list[Action]) -> None:
        """Reach out to a failed member: if a partition ended, the exchange heals it."""
        horizon = now - self.config.reconnect_timeout
        failed = [
            e
            for e in self._table.entries()
            if e.state is MemberState.DEAD and e.state_since >= horizon and e.name != self.name
        ]
        if failed and not self._table.leaving:
            out.append(self._push_pull_request(self._rng.choice(failed).addr, False))

    def _merge_members(self, now: float, records: Iterable[MemberRecord], out: list[Action]) -> None:
        for record in records:
            if record.state is MemberState.ALIVE:
                if self._table.holds(record):
                    continue
                self._apply_alive(now, Alive(record.incarnation, record.name, record.addr, record.meta), out)
            elif record.state is MemberState.LEFT:
                self._apply_dead(now, Dead(record.incarnation, record.name, record.name), out)
            else:
                # A remote verdict of death is only a suspicion here: if the member is alive
                # on our side of a healed partition, it gets its chance to refute.
                self._apply_suspect(now, Suspect(record.incarnation, record.name, self.name), out)

    def on_request(self, now: float, payload: bytes, src: Address) -> tuple[bytes | None, list[Action]]:
        """A TCP frame from `src`; returns the reply frame (or None) and actions."""
        try:
            message = self.codec.decode_frame(payload)
        except DecodeError as error:
            self.stats[f"drop_{error.reason}"] += 1
            log.debug("%s: dropped stream from %s:%s: %s", self.name, src[0], src[1], error)
            return None, []
        out: list[Action] = []
        match message:
            case PushPull():
                reply = PushPullReply(
                    tuple(self._table.records()),
                    self._digest(),
                    self._newer_than(message.app_digest),
                )
                self._merge_members(now, message.members, out)
                self._pull_newer(message.app_digest, src, out)
                return encode(reply), out
            case Ping():
                if message.target != self.name:
                    self.stats["drop_wrong_target"] += 1
                    return None, out
                return encode(Ack(message.seq)), out
            case AppPull():
                return encode(AppData(self._records(message.nodes))), out
            case AppData():
                for record in message.records:
                    self._merge_app(now, record.node, record.version, record.data, out)
                return None, out
            case _:
                self.stats["drop_unexpected"] += 1
                return None, out

    def on_response(
        self, now: float, token: int, payload: bytes | None, *, refused: bool = False
    ) -> tuple[bool, list[Action]]:
        """The reply to a SendRequest (None if the exchange failed, with `refused` when the peer's
        host said nothing listens there); True if it succeeded."""
        request = self._requests.pop(token, None)
        if request is None:
            return False, []
        out: list[Action] = []
        message: Message | None = None
        if payload:
            try:
                message = self.codec.decode_frame(payload)
            except DecodeError as error:
                self.stats[f"drop_{error.reason}"] += 1
        match request.kind, message:
            case "push_pull", PushPullReply():
                self._merge_members(now, message.members, out)
                for record in message.app_data:
                    self._merge_app(now, record.node, record.version, record.data, out)
                self._pull_newer(message.app_digest, request.peer, out)
                self._push_newer(message.app_digest, request.peer, out)
                return True, out
            case "tcp_ping", Ack() if message.seq == request.seq:
                self._acked(request.seq)
                return True, out
            case "app_pull", AppData():
                for node in request.nodes:
                    self._fetching.discard(node)
                for record in message.records:
                    self._merge_app(now, record.node, record.version, record.data, out)
                return True, out
            case "app_push", None if payload == b"":
                return True, out
        if request.kind == "app_pull":
            for node in request.nodes:
                self._fetching.discard(node)
            self._fetch_from_owners(request, out)
        probe = self._probe
        if refused and request.kind == "tcp_ping" and probe is not None and probe.seq == request.seq:
            # No ack by the direct timeout, and the host answers that nothing listens: the process
            # is gone. Waiting for the rest of the probe interval would only delay the suspicion.
            self._conclude(now, probe, out, target_refused=True)
        return False, out

    # App state -------------------------------------------------------------------------------------

    def set_meta(self, now: float, meta: bytes) -> list[Action]:
        if len(meta) > self.config.max_meta_size:
            raise PayloadTooLarge(f"metadata is {len(meta)} bytes; the limit is {self.config.max_meta_size}")
        self._table.set_local_meta(meta)
        self._queue.queue(("m", self.name), encode(self._table.alive_message()))
        out: list[Action] = []
        self._emit(now, EventKind.UPDATE, self.name, out)
        return out

    def set_app_state(self, now: float, data: bytes) -> list[Action]:
        """Publish this node's application state; it reaches every member within seconds."""
        if len(data) > self.config.max_app_state_size:
            raise PayloadTooLarge(
                f"app state is {len(data)} bytes; the limit is {self.config.max_app_state_size}"
            )
        current = self._app.get(self.name, (0, b""))[0]
        # Versions start from the wall clock in milliseconds, so a restarted node overtakes what
        # its earlier life published; _check_own_version covers a clock that went backwards.
        version = max(current + 1, self._app_floor, int((now + self._clock_offset) * 1000))
        out: list[Action] = []
        self._store_app(now, self.name, version, data, out)
        return out

    def _digest(self) -> tuple[tuple[str, int], ...]:
        return tuple((name, version) for name, (version, _) in self._app.items())

    def _records(self, names: Iterable[str]) -> tuple[AppRecord, ...]:
        budget = self.config.max_stream_frame // 2
        records = []
        for name in names:
            held = self._app.get(name)
            if held is None:
                continue
            budget -= len(held[1]) + 64
            if budget < 0:
                break
            records.append(AppRecord(name, held[0], held[1]))
        return tuple(records)

    def _newer_than(self, digest: Iterable[tuple[str, int]]) -> tuple[AppRecord, ...]:
        theirs = dict(digest)
        return self._records(name for name, (version, _) in self._app.items() if version > theirs.get(name, 0))

    def _pull_newer(self, digest: Iterable[tuple[str, int]], peer: Address, out: list[Action]) -> None:
        wanted = tuple(
            name
            for name, version in digest
            if version > self._app.get(name, (0, b""))[0]
            and name in self._table
            and name not in self._fetching
            and name != self.name
        )
        if wanted:
            self._fetch(wanted, peer, out)
        mine = dict(digest).get(self.name)
        if mine is not None:
            self._check_own_version(mine, out)

    def _push_newer(self, digest: Iterable[tuple[str, int]], peer: Address, out: list[Action]) -> None:
        records = self._newer_than(digest)
        if records:
            token = self._request_token(_Request("app_push", peer))
            out.append(SendRequest(peer, encode(AppData(records)), token, self.config.tcp_timeout))

    def _fetch(self, nodes: tuple[str, ...], peer: Address, out: list[Action]) -> None:
        self._fetching.update(nodes)
        token = self._request_token(_Request("app_pull", peer, nodes=nodes))
        self.stats["app_pulls"] += 1
        out.append(SendRequest(peer, encode(AppPull(nodes)), token, self.config.tcp_timeout))

    def _fetch_from_owners(self, failed: _Request, out: list[Action]) -> None:
        """A pull from a relay failed: ask each node for its own state instead (once)."""
        for node in failed.nodes:
            owner = self._table.get(node)
            if owner is None or owner.addr == failed.peer or owner.state is not MemberState.ALIVE:
                continue
            if node not in self._fetching:
                self._fetch((node,), owner.addr, out)

    def _check_own_version(self, seen: int, out: list[Action]) -> None:
        """Others hold a version of our state from an earlier life; ours must overtake it."""
        current = self._app.get(self.name)
        if current is None:
            self._app_floor = max(self._app_floor, seen + 1)
        elif seen > current[0]:
            self._app[self.name] = (seen + 1, current[1])
            self._announce_app(self.name, seen + 1, current[1])

    def _apply_app_announce(self, now: float, message: AppState, src: Address, out: list[Action]) -> None:
        if message.node == self.name:
            self._check_own_version(message.version, out)
            return
        if message.version <= self._app.get(message.node, (0, b""))[0] or message.node not in self._table:
            return
        if message.data is not None:
            self._merge_app(now, message.node, message.version, message.data, out)
        elif message.node not in self._fetching:
            # Pull from whoever told us: it already holds that version, and the load spreads.
            self._fetch((message.node,), src, out)

    def _merge_app(self, now: float, node: str, version: int, data: bytes, out: list[Action]) -> None:
        if node == self.name:
            self._check_own_version(version, out)
            return
        if node not in self._table:
            self.stats["drop_app_unknown_member"] += 1
            return
        if version > self._app.get(node, (0, b""))[0]:
            self._store_app(now, node, version, data, out)

    def _store_app(self, now: float, node: str, version: int, data: bytes, out: list[Action]) -> None:
        self._app[node] = (version, data)
        self._announce_app(node, version, data)
        out.append(EmitEvent(AppStateEvent(node, version, data, now + self._clock_offset)))

    def _announce_app(self, node: str, version: int, data: bytes) -> None:
        inline = data if len(data) <= self.config.inline_app_state_size else None
        self._queue.queue(("a", node), encode(AppState(node, version, inline)))

    # User events -------------------------------------------------------------------------------------

    def send_user_event(self, now: float, name: str, payload: bytes) -> list[Action]:
        """Send an event to every member (this one included); PayloadTooLarge beyond the limit."""
        size = len(name.encode()) + len(payload)
        if size > self.config.max_user_event_size:
            raise PayloadTooLarge(f"user event is {size} bytes; the limit is {self.config.max_user_event_size}")
        if not 0 < len(name) <= 128 or not name.isprintable():
            raise BadEventName(f"event name {name[:40]!r}: 1 to 128 printable characters")
        out: list[Action] = []
        stamp = self._user_events.stamp(now + self._clock_offset)
        self._apply_user_event(now, UserEventMessage(self.name, stamp, name, payload), out)
        return out

    def _apply_user_event(self, now: float, message: UserEventMessage, out: list[Action]) -> None:
        if not self._user_events.accept(message.origin, message.ltime, message.name, now + self._clock_offset):
            self.stats["user_events_duplicate"] += 1
            return
        self.stats["user_events"] += 1
        self._queue.queue(("u", message.origin, message.ltime, message.name), encode(message))
        out.append(EmitEvent(UserEvent(message.origin, message.ltime, message.name, message.payload,
                                       now + self._clock_offset)))

    # Lifetime --------------------------------------------------------------------------------------

    def leave(self, now: float) -> list[Action]:
        """Announce a graceful leave; the driver then waits for leave_sent() or a timeout."""
        me = self._table.me
        self._table.mark_local_left(now)
        self._queue.queue(("m", self.name), encode(Dead(me.incarnation, self.name, self.name)))
        out: list[Action] = []
        self._gossip(now, out)
        return out

    def _reap(self, now: float, out: list[Action]) -> None:
        horizon = now - self._longest_suspicion()
        for name in [n for n, at in self._returned.items() if at < horizon]:
            del self._returned[name]
        for entry in self._table.reap(now, self.config.tombstone_timeout):
            self._app.pop(entry.name, None)
            self._suspicions.pop(entry.name, None)
            snapshot = entry.snapshot(self._clock_offset)
            out.append(EmitEvent(MemberEvent(EventKind.REAP, snapshot, now + self._clock_offset)))
