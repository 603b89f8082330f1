"""The NBD protocol, server side, without I/O: what to answer during the handshake, how requests
parse and are checked, and how replies are encoded (fixed newstyle, simple replies).

Supported: NBD_OPT_EXPORT_NAME, ABORT, LIST, INFO and GO (with NBD_INFO_EXPORT and
NBD_INFO_BLOCK_SIZE); unknown options get NBD_REP_ERR_UNSUP without losing sync. Transmission:
READ, WRITE (with FUA), DISC, FLUSH, TRIM, WRITE_ZEROES. Every offset and length is checked; a bad
request gets an errno in its reply, never a crash.
"""

from __future__ import annotations

import enum
import errno
import struct
from collections.abc import Mapping
from dataclasses import dataclass

NBDMAGIC = 0x4E42444D41474943
IHAVEOPT = 0x49484156454F5054
REPLY_MAGIC = 0x3E889045565A9
REQUEST_MAGIC = 0x25609513
SIMPLE_REPLY_MAGIC = 0x67446698

FLAG_FIXED_NEWSTYLE = 1 << 0
FLAG_NO_ZEROES = 1 << 1
CLIENT_FIXED_NEWSTYLE = 1 << 0
CLIENT_NO_ZEROES = 1 << 1

OPT_EXPORT_NAME, OPT_ABORT, OPT_LIST, OPT_INFO, OPT_GO = 1, 2, 3, 6, 7
REP_ACK, REP_SERVER, REP_INFO = 1, 2, 3
REP_ERR_UNSUP = (1 << 31) | 1
REP_ERR_INVALID = (1 << 31) | 3
REP_ERR_UNKNOWN = (1 << 31) | 6
INFO_EXPORT, INFO_BLOCK_SIZE = 0, 3

TF_HAS_FLAGS = 1 << 0
TF_SEND_FLUSH = 1 << 2
TF_SEND_FUA = 1 << 3
TF_SEND_TRIM = 1 << 5
TF_SEND_WRITE_ZEROES = 1 << 6
TF_CAN_MULTI_CONN = 1 << 8
TRANSMISSION_FLAGS = (TF_HAS_FLAGS | TF_SEND_FLUSH | TF_SEND_FUA | TF_SEND_TRIM | TF_SEND_WRITE_ZEROES
                      | TF_CAN_MULTI_CONN)

CMD_FLAG_FUA = 1 << 0
CMD_FLAG_NO_HOLE = 1 << 1

MIN_BLOCK = 1
PREFERRED_BLOCK = 4096
MAX_PAYLOAD = 32 * 1024 * 1024
MAX_OPTION_DATA = 4096

GREETING = struct.pack(">QQH", NBDMAGIC, IHAVEOPT, FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES)
OPTION_HEADER = struct.Struct(">QII")
REQUEST = struct.Struct(">IHHQQI")
SIMPLE_REPLY = struct.Struct(">IIQ")


class Command(enum.IntEnum):
    READ = 0
    WRITE = 1
    DISC = 2
    FLUSH = 3
    TRIM = 4
    WRITE_ZEROES = 6


@dataclass(frozen=True, slots=True)
class Request:
    flags: int
    command: int
    cookie: int
    offset: int
    length: int

    @property
    def fua(self) -> bool:
        return bool(self.flags & CMD_FLAG_FUA)


def option_reply(option: int, reply: int, data: bytes = b"") -> bytes:
    return struct.pack(">QIII", REPLY_MAGIC, option, reply, len(data)) + data


def _info_export(size: int) -> bytes:
    return struct.pack(">HQH", INFO_EXPORT, size, TRANSMISSION_FLAGS)


def _info_block_size() -> bytes:
    return struct.pack(">HIII", INFO_BLOCK_SIZE, MIN_BLOCK, PREFERRED_BLOCK, MAX_PAYLOAD)


@dataclass(frozen=True, slots=True)
class OptionOutcome:
    reply: bytes
    """What to send back (possibly nothing)."""
    export: str | None = None
    """The export chosen: transmission starts after the reply."""
    close: bool = False
    """The client aborted or broke the protocol: close after the reply."""


def _export_name(name: str, exports: Mapping[str, int]) -> str | None:
    """The export a client asked for; "" is the default export (the first one)."""
    if name in exports:
        return name
    if name == "" and exports:
        return next(iter(exports))
    return None


def handle_option(option: int, data: bytes, exports: Mapping[str, int], no_zeroes: bool) -> OptionOutcome:
    """The answer to one option during the handshake; `exports` maps names to sizes."""
    if option == OPT_EXPORT_NAME:
        export = _export_name(data.decode(errors="replace"), exports)
        if export is None:
            return OptionOutcome(b"", close=True)  # the protocol allows only a disconnect here
        reply = struct.pack(">QH", exports[export], TRANSMISSION_FLAGS) + (b"" if no_zeroes else bytes(124))
        return OptionOutcome(reply, export=export)
    if option == OPT_ABORT:
        return OptionOutcome(option_reply(option, REP_ACK), close=True)
    if option == OPT_LIST:
        if data:
            return OptionOutcome(option_reply(option, REP_ERR_INVALID, b"LIST takes no data"))
        listed = b"".join(option_reply(option, REP_SERVER, struct.pack(">I", len(n.encode())) + n.encode())
                          for n in exports)
        return OptionOutcome(listed + option_reply(option, REP_ACK))
    if option in (OPT_INFO, OPT_GO):
        if len(data) < 6:
            return OptionOutcome(option_reply(option, REP_ERR_INVALID, b"truncated"))
        (name_length,) = struct.unpack_from(">I", data)
        if 4 + name_length + 2 > len(data):
            return OptionOutcome(option_reply(option, REP_ERR_INVALID, b"bad name length"))
        name = data[4:4 + name_length].decode(errors="replace")
        (requests,) = struct.unpack_from(">H", data, 4 + name_length)
        if 4 + name_length + 2 + 2 * requests != len(data):
            return OptionOutcome(option_reply(option, REP_ERR_INVALID, b"bad information requests"))
        export = _export_name(name, exports)
        if export is None:
            return OptionOutcome(option_reply(option, REP_ERR_UNKNOWN, f"no export {name!r}".encode()))
        reply = option_reply(option, REP_INFO, _info_export(exports[export]))
        reply += option_reply(option, REP_INFO, _info_block_size())
        reply += option_reply(option, REP_ACK)
        return OptionOutcome(reply, export=export if option == OPT_GO else None)
    return OptionOutcome(option_reply(option, REP_ERR_UNSUP, b"option not supported"))


def parse_request(header: bytes | bytearray, at: int = 0) -> Request:
    """A request header (28 bytes, at `at`); ValueError when the magic is wrong (the stream is lost)."""
    magic, flags, command, cookie, offset, length = REQUEST.unpack_from(header, at)
    if magic != REQUEST_MAGIC:
        raise ValueError(f"bad request magic {magic:#x}")
    return Request(flags, command, cookie, offset, length)


class OversizedWrite(ValueError):
    """A write's payload is over MAX_PAYLOAD: it cannot be skipped safely, the stream is lost."""


class RequestSplitter:
    """Requests (with a write's payload) out of the transmission phase's byte stream, as many as
    each chunk completes. ValueError when the stream is lost (bad magic, oversized write)."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, chunk: bytes) -> list[tuple[Request, bytes]]:
        buffer = self._buffer
        buffer += chunk
        requests = []
        start = 0
        while len(buffer) - start >= REQUEST.size:
            request = parse_request(buffer, start)
            payload = request.length if request.command == Command.WRITE else 0
            if payload > MAX_PAYLOAD:
                raise OversizedWrite(f"a write of {payload} bytes is over the {MAX_PAYLOAD} bytes allowed")
            end = start + REQUEST.size + payload
            if len(buffer) < end:
                break
            with memoryview(buffer) as view:  # one copy out of the buffer, not two
                requests.append((request, bytes(view[start + REQUEST.size:end])))
            start = end
        if start:
            del buffer[:start]
        return requests


_COMMANDS = frozenset(Command)


def check_request(request: Request, size: int) -> int:
    """0 if the request may be served, else the errno to answer with."""
    if request.command == Command.DISC:
        return 0
    if request.command not in _COMMANDS:
        return errno.EINVAL
    if request.command == Command.FLUSH:
        return 0 if request.offset == 0 and request.length == 0 else errno.EINVAL
    if request.flags & ~(CMD_FLAG_FUA | CMD_FLAG_NO_HOLE):
        return errno.EINVAL
    if request.command in (Command.READ, Command.WRITE) and request.length > MAX_PAYLOAD:
        return errno.EOVERFLOW if request.command == Command.READ else errno.EINVAL
    if request.offset + request.length > size:
        return errno.ENOSPC if request.command in (Command.WRITE, Command.WRITE_ZEROES) else errno.EINVAL
    return 0


def simple_reply(cookie: int, error: int = 0) -> bytes:
    return SIMPLE_REPLY.pack(SIMPLE_REPLY_MAGIC, error, cookie)
