"""The replica protocol between an engine and a replica server: a mutual challenge-response on
the cluster keyring before anything else, then pipelined frames.

Handshake: the server sends MAGIC, the cluster name, a 32-byte nonce and whether it is keyed; the
client answers with its nonce and HMAC-SHA256(key, "client" | cluster | both nonces); the server
checks it against every key of its keyring and proves itself the same way ("server" | ...). Nobody
without a key of the cluster can read or write a replica, and an engine never talks to a stranger.
Plaintext (no proofs) only when both sides are configured insecure.

Frame: u32 length of what follows the 15-byte header, u64 request id, u8 op (requests) or status
(replies), u16 length of a msgpack header; then the header, then raw data (blocks).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack

from drivers.volumes._errors import ProtocolError, VolumeError

MAGIC = b"NOVR1"
NONCE = 32
PROOF = 32
FRAME = struct.Struct(">IQBH")
MAX_FRAME = 40 * 1024 * 1024
MAX_HEADER = 16 * 1024
HANDSHAKE_TIMEOUT = 5.0
READ_CHUNK = 1 << 20
"""Bytes asked of the stream per wake-up; the frames they complete are handled together."""

OP_OPEN, OP_CLAIM, OP_WRITE, OP_READ, OP_FLUSH, OP_ZERO, OP_MEMBERS, OP_STATUS = 1, 2, 3, 4, 5, 6, 7, 8
OP_ADOPT, OP_DIGEST, OP_EXTENTS, OP_FENCE, OP_DROP = 9, 10, 11, 12, 13
STATUS_OK, STATUS_ERROR, STATUS_FENCED = 0, 1, 2
BLOCK_CHANGES = frozenset({OP_WRITE, OP_ZERO})
"""The requests that change blocks: a direct local read waits until none is unanswered."""


@dataclass(frozen=True, slots=True)
class Secrets:
    cluster: str
    keys: tuple[bytes, ...]
    """Empty: insecure (plaintext, no proofs)."""

    @property
    def insecure(self) -> bool:
        return not self.keys


def load_keys(path: Path) -> tuple[bytes, ...]:
    """The keys of an agent keyring file (one base64 key per line, the first in use)."""
    try:
        text = path.read_text()
    except OSError as error:
        raise VolumeError(f"{path}: cannot read the keyring: {error.strerror}") from None
    keys = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        try:
            key = base64.b64decode(line, validate=True)
        except (binascii.Error, ValueError):
            raise VolumeError(f"{path}:{number}: not a base64 key") from None
        if len(key) not in (16, 24, 32):
            raise VolumeError(f"{path}:{number}: a key is 16, 24 or 32 bytes, this one {len(key)}")
        keys.append(key)
    if not keys:
        raise VolumeError(f"{path}: no key in the keyring")
    return tuple(keys)


def _proof(key: bytes, role: bytes, cluster: bytes, server_nonce: bytes, client_nonce: bytes) -> bytes:
    return hmac.new(key, role + b"|" + cluster + b"|" + server_nonce + client_nonce, hashlib.sha256).digest()


async def server_handshake(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, secrets: Secrets) -> None:
    """Prove the client holds a cluster key, and prove we do; ProtocolError otherwise."""
    cluster = secrets.cluster.encode()
    nonce = os.urandom(NONCE)
    writer.write(MAGIC + bytes((len(cluster),)) + cluster + nonce + bytes((0 if secrets.insecure else 1,)))
    await writer.drain()
    async with asyncio.timeout(HANDSHAKE_TIMEOUT):
        answer = await reader.readexactly(NONCE + PROOF)
    client_nonce, proof = answer[:NONCE], answer[NONCE:]
    if secrets.insecure:
        writer.write(bytes(PROOF))
        await writer.drain()
        return
    for key in secrets.keys:
        if hmac.compare_digest(proof, _proof(key, b"client", cluster, nonce, client_nonce)):
            writer.write(_proof(key, b"server", cluster, nonce, client_nonce))
            await writer.drain()
            return
    raise ProtocolError("the client proved no key of this cluster")


async def client_handshake(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, secrets: Secrets) -> None:
    async with asyncio.timeout(HANDSHAKE_TIMEOUT):
        head = await reader.readexactly(len(MAGIC) + 1)
        if head[: len(MAGIC)] != MAGIC:
            raise ProtocolError("not a nodeorch replica server")
        cluster = await reader.readexactly(head[-1])
        nonce = await reader.readexactly(NONCE)
        keyed = (await reader.readexactly(1))[0] == 1
        if cluster.decode(errors="replace") != secrets.cluster:
            raise ProtocolError(f"the replica server belongs to cluster {cluster.decode(errors='replace')!r}")
        if keyed == secrets.insecure:
            raise ProtocolError("the replica server is " + ("keyed" if keyed else "insecure")
                                + " and this engine is not")
        client_nonce = os.urandom(NONCE)
        key = secrets.keys[0] if keyed else b""
        proof = _proof(key, b"client", cluster, nonce, client_nonce) if keyed else bytes(PROOF)
        writer.write(client_nonce + proof)
        await writer.drain()
        answer = await reader.readexactly(PROOF)
    if keyed and not hmac.compare_digest(answer, _proof(key, b"server", cluster, nonce, client_nonce)):
        raise ProtocolError("the replica server did not prove the cluster key")


def frame_head(request_id: int, code: int, header: dict[str, Any], data_length: int) -> bytes:
    """A frame up to its data, which follows it (sent apart, the data is never copied into it)."""
    packed: bytes = msgpack.packb(header, use_bin_type=True)
    return FRAME.pack(len(packed) + data_length, request_id, code, len(packed)) + packed


def _decode_header(raw: bytes) -> dict[str, Any]:
    try:
        header = msgpack.unpackb(raw, raw=False, strict_map_key=True, max_ext_len=0)
    except Exception as error:  # msgpack raises many types for bad input
        raise ProtocolError(f"unreadable frame header: {type(error).__name__}") from None
    if not isinstance(header, dict):
        raise ProtocolError("a frame header must be a table")
    return header


class FrameSplitter:
    """Frames out of a byte stream, as many as each chunk completes: one read per wake-up instead
    of two per frame. ProtocolError for anything malformed (the stream is then lost)."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, chunk: bytes) -> list[tuple[int, int, dict[str, Any], bytes]]:
        buffer = self._buffer
        buffer += chunk
        frames = []
        start = 0
        while len(buffer) - start >= FRAME.size:
            length, request_id, code, header_length = FRAME.unpack_from(buffer, start)
            if length > MAX_FRAME or header_length > min(length, MAX_HEADER):
                raise ProtocolError(f"frame of {length} bytes (header {header_length}) is out of bounds")
            body = start + FRAME.size
            end = body + length
            if len(buffer) < end:
                break
            with memoryview(buffer) as view:  # one copy out of the buffer, not two
                header = _decode_header(bytes(view[body:body + header_length]))
                frames.append((request_id, code, header, bytes(view[body + header_length:end])))
            start = end
        if start:
            del buffer[:start]
        return frames


def field(header: dict[str, Any], key: str, kind: type) -> Any:
    value = header.get(key)
    if type(value) is not kind:
        raise ProtocolError(f"{key}: expected {kind.__name__}")
    return value
