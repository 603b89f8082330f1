"""msgpack encoding of wire messages, and strict decoding of anything that arrives.

A message is a msgpack array [type id, fields...]; a UDP packet is an array of messages (a compound
packet); a TCP frame is one message. Decoding bounds every length before allocating (msgpack's own
limits), then checks every field's type and range, so the core only ever sees validated values.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Callable, Sequence
from typing import Any

import msgpack

from gossip._config import GossipConfig
from gossip._errors import DecodeError
from gossip._messages import (
    PACKET_MESSAGES,
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
    MessageType,
    Nack,
    Ping,
    PushPull,
    PushPullReply,
    Suspect,
    UserEventMessage,
)

MAX_UINT64 = 2**64 - 1
_MEMBER_STATES = {int(state): state for state in MemberState}
_VALID_MEMORY = 65536
"""Names and hosts remembered as checked before the memory starts over (bounds it)."""
_checked_names: dict[int, set[str]] = {}
"""Per name length limit, member names that passed check_name (shared by every codec of the
process: a simulation runs thousands)."""
_checked_hosts: set[str] = set()
MAX_PACKET_MESSAGES = 256
"""A 1400-byte packet cannot hold more real messages than this; more is an attack."""


def array_header(count: int) -> bytes:
    """The msgpack header of an array of `count` items; items follow as their own encodings."""
    if count < 16:
        return bytes((0x90 | count,))
    if count < 2**16:
        return b"\xdc" + struct.pack(">H", count)
    return b"\xdd" + struct.pack(">I", count)


def header_size(count: int) -> int:
    return 1 if count < 16 else 3 if count < 2**16 else 5


def _addr(addr: Address) -> list[Any]:
    return [addr[0], addr[1]]


def _member(record: MemberRecord) -> list[Any]:
    return [record.name, record.addr[0], record.addr[1], record.meta, record.incarnation, int(record.state)]


def _app(record: AppRecord) -> list[Any]:
    return [record.node, record.version, record.data]


def _fields(message: Message) -> list[Any]:
    match message:
        case Ping():
            return [MessageType.PING, message.seq, message.target, message.source, *_addr(message.source_addr)]
        case IndirectPing():
            return [
                MessageType.INDIRECT_PING,
                message.seq,
                message.target,
                *_addr(message.target_addr),
                message.want_nack,
                message.source,
                *_addr(message.source_addr),
            ]
        case Ack():
            return [MessageType.ACK, message.seq]
        case Nack():
            return [MessageType.NACK, message.seq]
        case Suspect():
            return [MessageType.SUSPECT, message.incarnation, message.node, message.sender]
        case Alive():
            return [MessageType.ALIVE, message.incarnation, message.node, *_addr(message.addr), message.meta]
        case Dead():
            return [MessageType.DEAD, message.incarnation, message.node, message.sender]
        case AppState():
            return [MessageType.APP_STATE, message.node, message.version, message.data]
        case PushPull():
            return [
                MessageType.PUSH_PULL,
                message.join,
                [_member(m) for m in message.members],
                [list(d) for d in message.app_digest],
            ]
        case PushPullReply():
            return [
                MessageType.PUSH_PULL_REPLY,
                [_member(m) for m in message.members],
                [list(d) for d in message.app_digest],
                [_app(r) for r in message.app_data],
            ]
        case AppPull():
            return [MessageType.APP_PULL, list(message.nodes)]
        case AppData():
            return [MessageType.APP_DATA, [_app(r) for r in message.records]]
        case UserEventMessage():
            return [MessageType.USER_EVENT, message.origin, message.ltime, message.name, message.payload]
    raise TypeError(f"not a wire message: {message!r}")


def encode(message: Message) -> bytes:
    """One message as msgpack bytes; also the body of a TCP frame."""
    packed: bytes = msgpack.packb(_fields(message), use_bin_type=True)
    return packed


def encode_packet(encoded_messages: Sequence[bytes]) -> bytes:
    """A compound packet from already-encoded messages (broadcasts are encoded once, sent many times)."""
    return array_header(len(encoded_messages)) + b"".join(encoded_messages)


class _Fields:
    """A cursor over one decoded message's fields, checking each as it is taken."""

    __slots__ = ("_codec", "_index", "_items")

    def __init__(self, codec: Codec, items: list[Any]) -> None:
        self._codec = codec
        self._items = items
        self._index = 1

    def _next(self) -> Any:
        if self._index >= len(self._items):
            raise DecodeError("truncated", f"message has {len(self._items)} fields")
        value = self._items[self._index]
        self._index += 1
        return value

    def uint(self) -> int:
        value = self._next()
        if type(value) is not int or not 0 <= value <= MAX_UINT64:
            raise DecodeError("bad_field", f"expected an unsigned integer, got {type(value).__name__}")
        return value

    def flag(self) -> bool:
        value = self._next()
        if type(value) is not bool:
            raise DecodeError("bad_field", f"expected a boolean, got {type(value).__name__}")
        return value

    def name(self) -> str:
        return self._codec.check_name(self._next())

    def event_name(self) -> str:
        return self._codec.check_event_name(self._next())

    def addr(self) -> Address:
        host = self._next()
        port = self._next()
        return self._codec.check_addr(host, port)

    def blob(self, limit: int, *, optional: bool = False) -> bytes | None:
        value = self._next()
        if value is None and optional:
            return None
        if type(value) is not bytes:
            raise DecodeError("bad_field", f"expected bytes, got {type(value).__name__}")
        if len(value) > limit:
            raise DecodeError("oversized", f"{len(value)} bytes > {limit}")
        return value

    def array(self) -> list[Any]:
        value = self._next()
        if type(value) is not list:
            raise DecodeError("bad_field", f"expected an array, got {type(value).__name__}")
        return value


class Codec:
    """Decoding bounded by one profile's limits (name length, metadata and app-state sizes)."""

    def __init__(self, config: GossipConfig) -> None:
        self.config = config
        self._max_name = config.max_name_length
        self._max_meta = config.max_meta_size
        self._max_app = config.max_app_state_size
        self._valid_names = _checked_names.setdefault(self._max_name, set())
        self._valid_hosts = _checked_hosts
        self._decoders: dict[int, Callable[[_Fields], Message]] = {
            MessageType.PING: self._ping,
            MessageType.INDIRECT_PING: self._indirect_ping,
            MessageType.ACK: lambda f: Ack(f.uint()),
            MessageType.NACK: lambda f: Nack(f.uint()),
            MessageType.SUSPECT: lambda f: Suspect(f.uint(), f.name(), f.name()),
            MessageType.ALIVE: self._alive,
            MessageType.DEAD: lambda f: Dead(f.uint(), f.name(), f.name()),
            MessageType.APP_STATE: self._app_state,
            MessageType.PUSH_PULL: self._push_pull,
            MessageType.PUSH_PULL_REPLY: self._push_pull_reply,
            MessageType.APP_PULL: self._app_pull,
            MessageType.APP_DATA: lambda f: AppData(self._app_records(f.array())),
            MessageType.USER_EVENT: self._user_event,
        }

    # Field checks --------------------------------------------------------------------------------

    def check_name(self, value: Any) -> str:
        if type(value) is not str:
            raise DecodeError("bad_field", f"expected a name, got {type(value).__name__}")
        if not 0 < len(value) <= self._max_name or not value.isprintable():
            raise DecodeError("bad_name", f"{value[:40]!r}")
        return value

    def check_addr(self, host: Any, port: Any) -> Address:
        if type(host) is not str or len(host) > 64:
            raise DecodeError("bad_addr", "host is not an IP literal")
        if type(port) is not int or not 0 < port < 65536:
            raise DecodeError("bad_addr", f"port {port!r}")
        try:
            socket.inet_pton(socket.AF_INET6 if ":" in host else socket.AF_INET, host)
        except (OSError, ValueError):
            raise DecodeError("bad_addr", f"host {host[:64]!r}") from None
        return (host, port)

    # Messages ------------------------------------------------------------------------------------

    def _ping(self, f: _Fields) -> Ping:
        return Ping(f.uint(), f.name(), f.name(), f.addr())

    def _indirect_ping(self, f: _Fields) -> IndirectPing:
        return IndirectPing(f.uint(), f.name(), f.addr(), f.flag(), f.name(), f.addr())

    def _alive(self, f: _Fields) -> Alive:
        incarnation, node, addr = f.uint(), f.name(), f.addr()
        meta = f.blob(self._max_meta)
        assert meta is not None
        return Alive(incarnation, node, addr, meta)

    def _app_state(self, f: _Fields) -> AppState:
        return AppState(f.name(), f.uint(), f.blob(self._max_app, optional=True))

    def check_event_name(self, value: Any) -> str:
        if type(value) is not str or not 0 < len(value) <= 128 or not value.isprintable():
            raise DecodeError("bad_event", "event name: 1 to 128 printable characters")
        return value

    def _user_event(self, f: _Fields) -> UserEventMessage:
        origin, ltime, name = f.name(), f.uint(), f.event_name()
        payload = f.blob(self.config.max_user_event_size)
        assert payload is not None
        if len(name.encode()) + len(payload) > self.config.max_user_event_size:
            raise DecodeError("oversized", f"user event of {len(name.encode()) + len(payload)} bytes")
        return UserEventMessage(origin, ltime, name, payload)

    def _member_records(self, items: list[Any]) -> tuple[MemberRecord, ...]:
        """A push-pull's member list: every record is checked like any message, but a name or
        address seen valid before is not parsed again (a push-pull repeats the whole cluster)."""
        records = []
        names, hosts = self._valid_names, self._valid_hosts
        for item in items:
            if type(item) is not list:
                raise DecodeError("bad_field", "member record is not an array")
            if len(item) < 6:
                raise DecodeError("truncated", f"member record has {len(item)} fields")
            name, host, port, meta, incarnation, state = item[:6]  # a newer member may add fields
            if type(name) is not str or name not in names:
                names.add(self.check_name(name))
            if type(host) is not str or host not in hosts or type(port) is not int or not 0 < port < 65536:
                hosts.add(self.check_addr(host, port)[0])
            if type(meta) is not bytes:
                raise DecodeError("bad_field", f"expected bytes, got {type(meta).__name__}")
            if len(meta) > self._max_meta:
                raise DecodeError("oversized", f"{len(meta)} bytes > {self._max_meta}")
            if type(incarnation) is not int or not 0 <= incarnation <= MAX_UINT64:
                raise DecodeError("bad_field", f"incarnation {incarnation!r}")
            if type(state) is not int or state not in _MEMBER_STATES:
                raise DecodeError("bad_field", f"member state {state!r}")
            records.append(MemberRecord(name, (host, port), meta, incarnation, _MEMBER_STATES[state]))
        if len(names) > _VALID_MEMORY or len(hosts) > _VALID_MEMORY:
            names.clear()
            hosts.clear()
        return tuple(records)

    def _digest(self, items: list[Any]) -> tuple[tuple[str, int], ...]:
        digest = []
        for item in items:
            if type(item) is not list:
                raise DecodeError("bad_field", "digest entry is not an array")
            f = _Fields(self, [None, *item])
            digest.append((f.name(), f.uint()))
        return tuple(digest)

    def _app_records(self, items: list[Any]) -> tuple[AppRecord, ...]:
        records = []
        for item in items:
            if type(item) is not list:
                raise DecodeError("bad_field", "app record is not an array")
            f = _Fields(self, [None, *item])
            node, version = f.name(), f.uint()
            data = f.blob(self._max_app)
            assert data is not None
            records.append(AppRecord(node, version, data))
        return tuple(records)

    def _push_pull(self, f: _Fields) -> PushPull:
        join = f.flag()
        return PushPull(join, self._member_records(f.array()), self._digest(f.array()))

    def _push_pull_reply(self, f: _Fields) -> PushPullReply:
        members = self._member_records(f.array())
        return PushPullReply(members, self._digest(f.array()), self._app_records(f.array()))

    def _app_pull(self, f: _Fields) -> AppPull:
        return AppPull(tuple(self.check_name(n) for n in f.array()))

    # Entry points ----------------------------------------------------------------------------------

    def _unpack(self, data: bytes, limit: int) -> Any:
        if len(data) > limit:
            raise DecodeError("oversized", f"{len(data)} bytes > {limit}")
        try:
            return msgpack.unpackb(
                data,
                raw=False,
                use_list=True,
                strict_map_key=True,
                max_str_len=max(self._max_name, 64),
                max_bin_len=max(self._max_app, self._max_meta),
                # Every element takes at least one byte, so a longer claimed length is a lie
                # that would otherwise preallocate a huge list.
                max_array_len=len(data),
                max_map_len=0,
                max_ext_len=0,
            )
        except Exception as error:  # msgpack raises many types for bad input; all mean "malformed"
            raise DecodeError("malformed", type(error).__name__) from None

    def _message(self, item: Any) -> Message:
        if type(item) is not list or not item:
            raise DecodeError("bad_message", "message is not a non-empty array")
        type_id = item[0]
        decoder = self._decoders.get(type_id) if type(type_id) is int else None
        if decoder is None:
            raise DecodeError("unknown_type", repr(type_id)[:20])
        # Extra trailing fields are allowed: a newer version may append fields to a message.
        return decoder(_Fields(self, item))

    def decode_packet(self, data: bytes) -> list[Message]:
        """A UDP packet's messages; a single bad message rejects the whole packet."""
        items = self._unpack(data, self.config.max_packet_size)
        if type(items) is not list or not items:
            raise DecodeError("bad_packet", "packet is not a non-empty array")
        if len(items) > MAX_PACKET_MESSAGES:
            raise DecodeError("bad_packet", f"{len(items)} messages")
        messages = [self._message(item) for item in items]
        for message in messages:
            if not isinstance(message, PACKET_MESSAGES):
                raise DecodeError("bad_packet", f"{type(message).__name__} is stream-only")
        return messages

    def decode_frame(self, data: bytes) -> Message:
        """One TCP frame's message."""
        return self._message(self._unpack(data, self.config.max_stream_frame))
