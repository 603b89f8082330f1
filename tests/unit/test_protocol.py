"""The sans-IO core, driven by hand with an explicit clock: what it sends and when."""

from __future__ import annotations

import random

from gossip import GossipCore, lan
from gossip._codec import Codec, encode, encode_packet
from gossip._messages import Ack, Address, Alive, IndirectPing, Message, Nack, Ping, Suspect
from gossip._protocol import Action, SendPacket, SendRequest

CONFIG = lan()
CODEC = Codec(CONFIG)
A: Address = ("127.0.0.1", 7001)
B: Address = ("127.0.0.2", 7001)
C: Address = ("127.0.0.3", 7001)


def core(name: str = "a", addr: Address = A, seed: int = 1) -> GossipCore:
    return GossipCore(CONFIG, name=name, addr=addr, now=0.0, rng=random.Random(seed))


def packet(*messages: Message) -> bytes:
    return encode_packet([encode(m) for m in messages])


def sent(actions: list[Action]) -> list[tuple[Address, list[Message]]]:
    return [(a.to, CODEC.decode_packet(a.payload)) for a in actions if isinstance(a, SendPacket)]


def test_compound_packets_never_exceed_the_payload_limit() -> None:
    a = core()
    for i in range(400):  # a burst of joins with large metadata, all queued as broadcasts
        a.on_packet(0.0, packet(Alive(1, f"member-{i:03}", ("127.0.1.1", 1000 + i), b"m" * 400)), B)
    actions: list[Action] = []
    now = 0.0
    while now < 5.0:
        now = a.next_deadline()
        actions += a.tick(now)
    packets = [x for x in actions if isinstance(x, SendPacket)]
    assert packets, "the queue was gossiped"
    assert max(len(p.payload) for p in packets) <= CONFIG.max_packet_size
    assert max(len(p.payload) for p in packets) > CONFIG.max_packet_size - 500, "packets are filled"


def test_a_ping_to_a_suspect_carries_the_suspicion_and_the_ack_carries_the_refutation() -> None:
    a, b = core("a", A), core("b", B, seed=2)
    a.on_packet(0.0, packet(Alive(1, "b", B, b"")), B)
    a.on_packet(0.0, packet(Suspect(1, "b", "c")), C)
    now = a.next_deadline()
    probes: list[tuple[Address, list[Message]]] = []
    while not probes:
        now = a.next_deadline()
        probes = [(to, m) for to, m in sent(a.tick(now)) if any(isinstance(x, Ping) for x in m)]
    to, messages = probes[0]
    assert to == B
    assert any(isinstance(x, Suspect) and x.node == "b" for x in messages), "buddy system"
    b.on_packet(now, packet(Alive(1, "b", B, b"")), A)  # b learns its own old incarnation
    replies = sent(b.on_packet(now, packet(*messages), A))
    ack_packet = next(m for t, m in replies if t == A and any(isinstance(x, Ack) for x in m))
    refutations = [x for x in ack_packet if isinstance(x, Alive) and x.node == "b"]
    assert refutations and refutations[0].incarnation == 2, "the refutation rides on the ack"
    assert b.stats["refutations"] == 1


def test_a_helper_relays_an_indirect_probe_and_answers_nack_on_silence() -> None:
    helper = core("h", C)
    request = IndirectPing(77, "b", B, True, "a", A)
    out = sent(helper.on_packet(0.0, packet(request), A))
    (to, messages), = out
    assert to == B and isinstance(messages[0], Ping) and messages[0].target == "b"
    replies: list[tuple[Address, list[Message]]] = []
    now = 0.0
    while now < CONFIG.probe_timeout:
        now = helper.next_deadline()
        replies += sent(helper.tick(now))
    assert replies == [(A, [Nack(77)])], "exactly one nack, to the requester, at the probe timeout"


def test_a_relayed_ack_reaches_the_requester_under_its_own_sequence() -> None:
    helper = core("h", C)
    (_to, messages), = sent(helper.on_packet(0.0, packet(IndirectPing(77, "b", B, True, "a", A)), A))
    relay_seq = messages[0].seq  # type: ignore[union-attr]
    forwarded = sent(helper.on_packet(0.1, packet(Ack(relay_seq)), B))
    assert forwarded == [(A, [Ack(77)])]


def test_missing_nacks_raise_our_own_awareness_score() -> None:
    a = core()
    for name, addr in (("b", B), ("c", C), ("d", ("127.0.0.4", 7001))):
        a.on_packet(0.0, packet(Alive(1, name, addr, b"")), addr)
    now, escalated = 0.0, False
    while now < 3.0 and a.awareness == 0:
        now = a.next_deadline()
        actions = a.tick(now)
        escalated = escalated or any(isinstance(x, SendRequest) for x in actions)
    assert escalated, "the missed ack went to helpers and to a TCP ping"
    assert a.awareness > 0, "helpers that did not even nack point at our own links"


def test_a_stall_abandons_the_probe_and_postpones_suspicions() -> None:
    a = core()
    a.on_packet(0.0, packet(Alive(1, "b", B, b""), Alive(1, "c", C, b"")), B)
    a.on_packet(0.0, packet(Suspect(1, "c", "b")), B)
    deadline = a.next_deadline()
    a.tick(deadline + 3.0)  # the process was stopped for three seconds
    assert a.stats["stalls"] == 1
    member = a.member("c")
    assert member is not None and member.state.label == "suspect", "no death declared from a stall"


def test_port_unreachable_from_the_probed_member_concludes_the_probe_at_once() -> None:
    a = core()
    a.on_packet(0.0, packet(Alive(1, "b", B, b"")), B)
    now = 0.0
    while a.stats["probes"] == 0:
        now = a.next_deadline()
        a.tick(now)
    a.on_unreachable(now + 0.001, ("127.0.0.9", 7001))  # someone else's port: ignored
    member = a.member("b")
    assert member is not None and member.state.label == "alive"
    a.on_unreachable(now + 0.001, B)
    member = a.member("b")
    assert member is not None and member.state.label == "suspect"
    assert a.awareness == 0, "the target's absence says nothing about our own health"
