"""Many protocol cores on the in-memory network, in virtual time.

A discrete-event loop: every packet, TCP exchange and timer is an event on one heap, processed in
time order; the clock jumps from one event to the next, so ten simulated minutes of a 200-node
cluster take seconds. Nodes can be killed, restarted, paused (their processing is delayed, as
under SIGSTOP) and partitioned through the MemoryNetwork. Deterministic for a given seed.
"""

from __future__ import annotations

import heapq
import itertools
import random
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from gossip._config import GossipConfig
from gossip._events import Event
from gossip._members import Member, MemberTable
from gossip._memnet import MemoryNetwork
from gossip._messages import Address, Alive, MemberState
from gossip._protocol import Action, EmitEvent, GossipCore, SendPacket, SendRequest


@dataclass(slots=True)
class SimNode:
    name: str
    addr: Address
    core: GossipCore
    running: bool = True
    paused_until: float = 0.0
    timer_generation: int = 0
    armed_at: float = -1.0
    packets_sent: int = 0
    bytes_sent: int = 0
    events: list[Event] = field(default_factory=list)


def sim_address(index: int) -> Address:
    """A distinct loopback address per simulated node (nothing is ever sent to it for real)."""
    return (f"127.{1 + index // 65536}.{index // 256 % 256}.{index % 256}", 7946)


class Simulation:
    def __init__(
        self,
        config: GossipConfig,
        *,
        seed: int = 0,
        network: MemoryNetwork | None = None,
        record_events: bool = True,
    ) -> None:
        self.config = config
        self.now = 0.0
        self.rng = random.Random(seed)
        self.network = network or MemoryNetwork(random.Random(seed + 1))
        self.nodes: dict[str, SimNode] = {}
        self._by_addr: dict[Address, SimNode] = {}
        self._heap: list[tuple[float, int, Callable[[], None]]] = []
        self._order = itertools.count()
        self._record_events = record_events
        self.on_event: Callable[[SimNode, Event], None] | None = None
        self.processed = 0

    # Building ------------------------------------------------------------------------------------

    def add_node(self, name: str | None = None, *, meta: bytes = b"") -> SimNode:
        index = len(self.nodes)
        name = name or f"node-{index}"
        addr = sim_address(index)
        core = GossipCore(
            self.config,
            name=name,
            addr=addr,
            meta=meta,
            now=self.now,
            rng=random.Random(self.rng.getrandbits(64)),
        )
        node = SimNode(name, addr, core)
        self.nodes[name] = node
        self._by_addr[addr] = node
        self._rearm(node)
        return node

    def converged_cluster(self, count: int) -> list[SimNode]:
        """`count` nodes that already know each other, as after a completed join, with nothing queued.

        Building a large cluster through real joins costs minutes of simulated join traffic; to
        measure one failure or one update in isolation, each table starts from one shared, joined
        view instead (copied entry by entry as a member's view changes), so memory grows with the
        members and their changes, not with members squared."""
        nodes = [self.add_node() for _ in range(count)]
        joined = MemberTable("", ("0.0.0.0", 0), b"", self.now, self.config.dead_node_reclaim_time)
        for n in nodes:
            joined.apply_alive(Alive(0, n.name, n.addr, b""), self.now)
        base = {entry.name: entry for entry in joined.entries() if entry.name}
        for node in nodes:
            node.core._table.share(base)
        return nodes

    def join(self, name: str, seeds: Iterable[str]) -> None:
        node = self.nodes[name]
        addrs = [self.nodes[s].addr for s in seeds]
        self._apply(node, node.core.join(addrs))

    # Faults --------------------------------------------------------------------------------------

    def kill(self, name: str) -> None:
        """Like kill -9: the node stops at once, says nothing, and answers nothing."""
        self.nodes[name].running = False

    def restart(self, name: str) -> SimNode:
        """A new life of a killed node: same name and address, fresh state, joining through seeds."""
        old = self.nodes[name]
        core = GossipCore(
            self.config, name=name, addr=old.addr, now=self.now, rng=random.Random(self.rng.getrandbits(64))
        )
        node = SimNode(name, old.addr, core, timer_generation=old.timer_generation + 1)
        self.nodes[name] = node
        self._by_addr[old.addr] = node
        self._rearm(node)
        return node

    def pause(self, name: str, duration: float) -> None:
        """Like SIGSTOP then SIGCONT: the node's processing waits `duration`, its inputs queue up."""
        node = self.nodes[name]
        node.paused_until = max(node.paused_until, self.now + duration)

    def leave(self, name: str) -> None:
        node = self.nodes[name]
        self._apply(node, node.core.leave(self.now))

    # Running -------------------------------------------------------------------------------------

    def run_until(self, until: float, stop: Callable[[], bool] | None = None, check_every: float = 0.0) -> bool:
        """Process events up to `until`; returns True early if `stop()` became true. With
        `check_every`, stop() is asked at most once per that much virtual time (for costly checks)."""
        next_check = self.now
        while self._heap and self._heap[0][0] <= until:
            at, _, callback = heapq.heappop(self._heap)
            self.now = at
            callback()
            self.processed += 1
            if stop is not None and self.now >= next_check:
                if stop():
                    return True
                next_check = self.now + check_every
        self.now = max(self.now, until)
        return stop is not None and stop()

    def run_for(self, duration: float, stop: Callable[[], bool] | None = None, check_every: float = 0.0) -> bool:
        return self.run_until(self.now + duration, stop, check_every)

    def _at(self, at: float, callback: Callable[[], None]) -> None:
        heapq.heappush(self._heap, (at, next(self._order), callback))

    def _deliverable(self, node: SimNode, retry: Callable[[], None]) -> bool:
        """Whether the node can process an input now; a paused node gets it when it resumes."""
        if not node.running:
            return False
        if node.paused_until > self.now:
            self._at(node.paused_until, retry)
            return False
        return True

    def _rearm(self, node: SimNode) -> None:
        deadline = max(node.core.next_deadline(), self.now)
        if deadline == node.armed_at:
            return
        node.armed_at = deadline
        node.timer_generation += 1
        generation = node.timer_generation

        def fire() -> None:
            if node.timer_generation != generation or self.nodes.get(node.name) is not node:
                return
            node.armed_at = -1.0
            if self._deliverable(node, fire):
                self._apply(node, node.core.tick(self.now))

        self._at(deadline, fire)

    def _apply(self, node: SimNode, actions: list[Action]) -> None:
        for action in actions:
            if isinstance(action, SendPacket):
                self._send_packet(node, action)
            elif isinstance(action, SendRequest):
                self._send_request(node, action)
            elif isinstance(action, EmitEvent):
                if self._record_events:
                    node.events.append(action.event)
                if self.on_event is not None:
                    self.on_event(node, action.event)
        self._rearm(node)

    def _send_packet(self, node: SimNode, action: SendPacket) -> None:
        node.packets_sent += 1
        node.bytes_sent += len(action.payload)
        delay = self.network.route(node.addr, action.to)
        if delay is None:
            return
        src = node.addr

        def deliver() -> None:
            target = self._by_addr.get(action.to)
            if target is not None and not target.running:
                # A killed process on a live host: the host answers "port unreachable".
                self._at(self.now + delay, lambda: self._unreachable(node, action.to))
            elif target is not None and self._deliverable(target, deliver):
                self._apply(target, target.core.on_packet(self.now, action.payload, src))

        self._at(self.now + delay, deliver)

    def _unreachable(self, node: SimNode, addr: Address) -> None:
        if node.running and self.nodes.get(node.name) is node and node.paused_until <= self.now:
            self._apply(node, node.core.on_unreachable(self.now, addr))

    def _send_request(self, node: SimNode, action: SendRequest) -> None:
        sent = self.now
        expires = sent + action.timeout
        node.bytes_sent += len(action.payload)

        def respond(payload: bytes | None, refused: bool = False) -> None:
            if self.nodes.get(node.name) is not node or not node.running:
                return
            if payload is not None and self.now > expires:
                payload = None
            if node.paused_until > self.now:
                self._at(node.paused_until, lambda: respond(payload, refused))
                return
            _, actions = node.core.on_response(self.now, action.token, payload, refused=refused)
            self._apply(node, actions)

        there = self.network.route(node.addr, action.to)
        if there is None:
            self._at(expires, lambda: respond(None))
            return

        def arrive() -> None:
            target = self._by_addr.get(action.to)
            if target is None or not target.running:
                self._at(self.now + there, lambda: respond(None, refused=True))
                return
            if not self._deliverable(target, arrive):
                return
            reply, actions = target.core.on_request(self.now, action.payload, node.addr)
            self._apply(target, actions)
            target.bytes_sent += len(reply or b"")
            back = self.network.route(action.to, node.addr)
            if back is None:
                self._at(expires, lambda: respond(None))
            else:
                self._at(self.now + back, lambda: respond(reply or b""))

        self._at(sent + there, arrive)

    # Observing -----------------------------------------------------------------------------------

    def view(self, observer: str, subject: str) -> Member | None:
        return self.nodes[observer].core.member(subject)

    def running(self) -> list[SimNode]:
        return [n for n in self.nodes.values() if n.running]

    def all_see(self, subject: str, state: MemberState, among: Iterable[SimNode] | None = None) -> bool:
        for node in among if among is not None else self.running():
            if node.name == subject:
                continue
            member = node.core.member(subject)
            if member is None or member.state is not state:
                return False
        return True

    def converged(self) -> bool:
        """Every running node sees every running node alive."""
        names = {n.name for n in self.running()}
        return all(names <= node.core.names_in_state(MemberState.ALIVE) for node in self.running())

    def stats(self) -> Counter[str]:
        total: Counter[str] = Counter()
        for node in self.nodes.values():
            total.update(node.core.stats)
        return total
