"""Codec round-trips, size limits, and hostile bytes that must never raise anything but DecodeError."""

from __future__ import annotations

import contextlib
import random

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gossip import BadEventName, DecodeError, PayloadTooLarge, lan
from gossip._codec import Codec, encode, encode_packet
from gossip._messages import (
    Ack,
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
from gossip._protocol import GossipCore

CODEC = Codec(lan())
uint = st.integers(0, 2**64 - 1)
names = st.text(st.characters(min_codepoint=33, max_codepoint=0x2FFF), min_size=1, max_size=40).filter(
    str.isprintable
)
hosts = st.one_of(st.ip_addresses(v=4).map(str), st.ip_addresses(v=6).map(str))
addrs = st.tuples(hosts, st.integers(1, 65535))
meta = st.binary(max_size=512)
app = st.binary(max_size=2048)
records = st.builds(MemberRecord, names, addrs, meta, uint, st.sampled_from(MemberState))
app_records = st.builds(AppRecord, names, uint, app)
digest = st.lists(st.tuples(names, uint), max_size=5).map(tuple)

packet_messages = st.one_of(
    st.builds(Ping, uint, names, names, addrs),
    st.builds(IndirectPing, uint, names, addrs, st.booleans(), names, addrs),
    st.builds(Ack, uint),
    st.builds(Nack, uint),
    st.builds(Suspect, uint, names, names),
    st.builds(Alive, uint, names, addrs, meta),
    st.builds(Dead, uint, names, names),
    st.builds(AppState, names, uint, st.one_of(st.none(), st.binary(max_size=512))),
    st.builds(UserEventMessage, names, uint, names, st.binary(max_size=256)),
)
stream_messages = st.one_of(
    packet_messages,
    st.builds(PushPull, st.booleans(), st.lists(records, max_size=5).map(tuple), digest),
    st.builds(
        PushPullReply,
        st.lists(records, max_size=5).map(tuple),
        digest,
        st.lists(app_records, max_size=3).map(tuple),
    ),
    st.builds(AppPull, st.lists(names, max_size=5).map(tuple)),
    st.builds(AppData, st.lists(app_records, max_size=3).map(tuple)),
)


@given(stream_messages)
def test_every_message_round_trips_as_a_frame(message: Message) -> None:
    assert CODEC.decode_frame(encode(message)) == message


@given(st.lists(packet_messages, min_size=1, max_size=6))
def test_compound_packets_round_trip(messages: list[Message]) -> None:
    payload = encode_packet([encode(m) for m in messages])
    if len(payload) <= lan().max_packet_size:
        assert CODEC.decode_packet(payload) == messages


def test_stream_only_messages_are_refused_in_packets() -> None:
    payload = encode_packet([encode(PushPull(True, (), ()))])
    with pytest.raises(DecodeError, match="stream-only"):
        CODEC.decode_packet(payload)


def test_oversized_packet_is_refused_before_decoding() -> None:
    with pytest.raises(DecodeError, match="oversized"):
        CODEC.decode_packet(b"\x91" + b"\x00" * 2000)


def test_metadata_over_512_bytes_is_refused() -> None:
    frame = encode(Alive(1, "n", ("127.0.0.1", 1), b"m" * 513))
    with pytest.raises(DecodeError, match="oversized"):
        CODEC.decode_frame(frame)


@pytest.mark.parametrize(
    "fields",
    [
        [0, True, "a", "b", "127.0.0.1", 1],  # bool is not an integer
        [0, -1, "a", "b", "127.0.0.1", 1],  # negative sequence
        [0, 1, "a", "b", "not-an-ip", 1],
        [0, 1, "a", "b", "127.0.0.1", 0],  # port 0
        [0, 1, "a", "b", "127.0.0.1", 70000],
        [0, 1, "", "b", "127.0.0.1", 1],  # empty name
        [0, 1, "a\n", "b", "127.0.0.1", 1],  # control character in a name
        [0, 1, "a"],  # truncated
        [5, 1, "n", "127.0.0.1", 1, "meta as str"],
        [99, 1],  # unknown type
        [8, True, [["n", "127.0.0.1", 1, b"", 1, 9]], []],  # unknown member state
        [8, True, [["n", "127.0.0.1", 1, b"", 1, 0]], {}],  # a map where an array belongs
    ],
)
def test_wrongly_typed_fields_are_refused(fields: list[object]) -> None:
    with pytest.raises(DecodeError):
        CODEC.decode_frame(msgpack.packb(fields, use_bin_type=True))


@pytest.mark.parametrize(
    ("record", "reason"),
    [
        (["n\n", "127.0.0.1", 1, b"", 1, 0], "bad_name"),
        (["n", "127.0.0.999", 1, b"", 1, 0], "bad_addr"),
        (["n", "127.0.0.1", 0, b"", 1, 0], "bad_addr"),
        (["n", "127.0.0.1", 1, "meta", 1, 0], "bad_field"),
        (["n", "127.0.0.1", 1, b"m" * 513, 1, 0], "oversized"),
        (["n", "127.0.0.1", 1, b"", -1, 0], "bad_field"),
        (["n", "127.0.0.1", 1, b"", 1, True], "bad_field"),
        (["n", "127.0.0.1", 1, b""], "truncated"),
    ],
)
def test_a_push_pull_record_is_checked_even_after_its_name_and_host_were_seen_valid(
    record: list[object], reason: str
) -> None:
    valid = ["n", "127.0.0.1", 1, b"", 1, 0]
    CODEC.decode_frame(msgpack.packb([8, True, [valid], []], use_bin_type=True))
    with pytest.raises(DecodeError) as refused:
        CODEC.decode_frame(msgpack.packb([8, True, [valid, record], []], use_bin_type=True))
    assert refused.value.reason == reason


def test_a_push_pull_record_with_fields_from_a_newer_member_is_read() -> None:
    newer = ["n", "127.0.0.1", 7946, b"meta", 3, 1, "a field this version does not know"]
    message = CODEC.decode_frame(msgpack.packb([8, False, [newer], []], use_bin_type=True))
    assert isinstance(message, PushPull)
    assert message.members == (MemberRecord("n", ("127.0.0.1", 7946), b"meta", 3, MemberState.SUSPECT),)


def test_a_huge_claimed_array_does_not_allocate() -> None:
    # An array header claiming four billion elements in a five-byte frame.
    with pytest.raises(DecodeError):
        CODEC.decode_frame(b"\xdd\xff\xff\xff\xff")


def test_deep_nesting_is_refused() -> None:
    with pytest.raises(DecodeError):
        CODEC.decode_frame(b"\x91" * 100_000)


@settings(max_examples=500)
@given(st.binary(max_size=1500))
def test_random_bytes_never_raise_anything_but_decode_error(data: bytes) -> None:
    with contextlib.suppress(DecodeError):
        CODEC.decode_packet(data)
    with contextlib.suppress(DecodeError):
        CODEC.decode_frame(data)


@settings(max_examples=500)
@given(st.lists(packet_messages, min_size=1, max_size=4), st.data())
def test_mutated_valid_packets_never_raise_anything_but_decode_error(
    messages: list[Message], data: st.DataObject
) -> None:
    payload = bytearray(encode_packet([encode(m) for m in messages]))
    for _ in range(data.draw(st.integers(1, 8))):
        position = data.draw(st.integers(0, len(payload) - 1))
        payload[position] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(payload)))
    for candidate in (bytes(payload), bytes(payload[:cut])):
        try:
            decoded = CODEC.decode_packet(candidate)
        except DecodeError:
            continue
        assert all(type(m).__name__ in {t.__name__ for t in (Ping, IndirectPing, Ack, Nack, Suspect,
                   Alive, Dead, AppState, UserEventMessage)} for m in decoded)


def test_a_user_event_round_trips_and_an_oversized_or_badly_named_one_is_refused() -> None:
    codec = Codec(lan())
    event = UserEventMessage("node-1", 1_700_000_000_000, "deploy", b'{"v": 2}')
    assert codec.decode_packet(encode_packet([encode(event)])) == [event]
    too_big = UserEventMessage("node-1", 1, "deploy", b"x" * 510)
    with pytest.raises(DecodeError, match="oversized"):
        codec.decode_packet(encode_packet([encode(too_big)]))
    unnamed = UserEventMessage("node-1", 1, "", b"")
    with pytest.raises(DecodeError, match="bad_event"):
        codec.decode_packet(encode_packet([encode(unnamed)]))


def test_sending_a_user_event_beyond_the_limit_or_with_a_bad_name_is_refused_before_it_leaves() -> None:
    core = GossipCore(lan(), name="a", addr=("127.0.0.1", 7946), meta=b"", now=0.0, rng=random.Random(1))
    with pytest.raises(PayloadTooLarge):
        core.send_user_event(0.0, "deploy", b"x" * 600)
    with pytest.raises(BadEventName):
        core.send_user_event(0.0, "bad\nname", b"")
