"""The keyring and the sealed envelope every packet and stream frame travels in.

Sealed (version 1): 0x01 | boot (8) | seq (8) | nonce (12) | AES-256-GCM(payload) with its tag (16).
The associated data is the cluster name plus the header, so a packet of another cluster, or with a
forged boot or sequence number, fails authentication. Several keys decrypt; the first encrypts, so
a new key is installed everywhere, then used, then the old one removed, with no downtime.

Plaintext (version 0, only when configured insecure): 0x00 | len(cluster) | cluster | payload.
The cluster name still keeps two clusters apart, but nothing is authenticated.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import struct
from collections import Counter

from gossip._aead import Aes256Gcm, AuthenticationFailed
from gossip._errors import ConfigError, DecodeError, KeyringError
from gossip._replay import ReplayGuard

KEY_SIZE = 32
_HEADER = struct.Struct(">BQQ")
_NONCE_SIZE = 12
_TAG_SIZE = 16
SEALED_OVERHEAD = _HEADER.size + _NONCE_SIZE + _TAG_SIZE
_SEALED = 1
_PLAIN = 0
MAX_CLUSTER_NAME = 64

CHANNEL_PACKET = 0
CHANNEL_STREAM = 1


def parse_key(key: bytes | str) -> bytes:
    """A key given as 32 raw bytes or as base64 text."""
    if isinstance(key, str):
        try:
            key = base64.b64decode(key.strip(), validate=True)
        except (binascii.Error, ValueError):
            raise KeyringError("key is not valid base64") from None
    if len(key) != KEY_SIZE:
        raise KeyringError(f"key must be {KEY_SIZE} bytes (AES-256), got {len(key)}")
    return bytes(key)


def generate_key() -> str:
    """A new random key as base64, ready for a keyring file."""
    return base64.b64encode(os.urandom(KEY_SIZE)).decode()


def key_id(key: bytes) -> str:
    """A short, non-secret name for a key, for logs and status (first 8 hex of its SHA-256)."""
    return hashlib.sha256(key).hexdigest()[:8]


class Keyring:
    """Keys that decrypt; the first one also encrypts. Rotation: install, use, remove."""

    def __init__(self, keys: list[bytes | str]) -> None:
        parsed = [parse_key(k) for k in keys]
        if not parsed:
            raise KeyringError("a keyring needs at least one key")
        self._keys: list[bytes] = []
        self._ciphers: dict[bytes, Aes256Gcm] = {}
        for key in parsed:
            self.install(key)

    @property
    def primary(self) -> bytes:
        return self._keys[0]

    @property
    def keys(self) -> tuple[bytes, ...]:
        return tuple(self._keys)

    def install(self, key: bytes | str) -> None:
        """Accept packets sealed with this key too."""
        key = parse_key(key)
        if key not in self._ciphers:
            self._keys.append(key)
            self._ciphers[key] = Aes256Gcm(key)

    def use(self, key: bytes | str) -> None:
        """Seal with this (installed) key from now on."""
        key = parse_key(key)
        if key not in self._ciphers:
            raise KeyringError(f"key {key_id(key)} is not installed")
        self._keys.remove(key)
        self._keys.insert(0, key)

    def remove(self, key: bytes | str) -> None:
        key = parse_key(key)
        if key == self._keys[0]:
            raise KeyringError("cannot remove the key in use; use another key first")
        if key in self._ciphers:
            self._keys.remove(key)
            del self._ciphers[key]

    def cipher(self, key: bytes) -> Aes256Gcm:
        return self._ciphers[key]


class Sealer:
    """Seals outgoing payloads and opens incoming ones for one cluster, counting every refusal."""

    def __init__(
        self,
        cluster: str,
        keyring: Keyring | None,
        *,
        replay_window: int = 1024,
        replay_memory: float = 600.0,
        boot: int | None = None,
        drops: Counter[str] | None = None,
    ) -> None:
        name = cluster.encode()
        if not 0 < len(name) <= MAX_CLUSTER_NAME:
            raise ConfigError(f"cluster name must be 1 to {MAX_CLUSTER_NAME} bytes")
        self.cluster = cluster
        self.keyring = keyring
        self._aad = name
        self._plain_prefix = bytes((_PLAIN, len(name))) + name
        self._boot = boot if boot is not None else int.from_bytes(os.urandom(8), "big")
        self._seq = [0, 0]
        self._replay = ReplayGuard(replay_window, replay_memory)
        self.drops: Counter[str] = drops if drops is not None else Counter()

    @property
    def overhead(self) -> int:
        return SEALED_OVERHEAD if self.keyring is not None else len(self._plain_prefix)

    def seal(self, payload: bytes, channel: int = CHANNEL_PACKET) -> bytes:
        if self.keyring is None:
            return self._plain_prefix + payload
        self._seq[channel] += 1
        header = _HEADER.pack(_SEALED, self._boot, self._seq[channel])
        nonce = os.urandom(_NONCE_SIZE)
        sealed = self.keyring.cipher(self.keyring.primary).encrypt(nonce, payload, self._aad + header)
        return header + nonce + sealed

    def open(self, data: bytes, now: float, channel: int = CHANNEL_PACKET) -> bytes:
        """The payload, or DecodeError with the reason (also counted in drops)."""
        try:
            return self._open(data, now, channel)
        except DecodeError as error:
            self.drops[error.reason] += 1
            raise

    def _open(self, data: bytes, now: float, channel: int) -> bytes:
        if not data:
            raise DecodeError("empty")
        version = data[0]
        if self.keyring is None:
            if version == _SEALED:
                raise DecodeError("encrypted_refused", "this node is insecure; the sender encrypts")
            if version != _PLAIN:
                raise DecodeError("bad_envelope", f"version {version}")
            if not data.startswith(self._plain_prefix):
                raise DecodeError("wrong_cluster")
            return data[len(self._plain_prefix) :]
        if version == _PLAIN:
            raise DecodeError("plaintext_refused", "this node requires encryption")
        if version != _SEALED:
            raise DecodeError("bad_envelope", f"version {version}")
        if len(data) < SEALED_OVERHEAD:
            raise DecodeError("truncated", "shorter than the envelope")
        _, boot, seq = _HEADER.unpack_from(data)
        header = data[: _HEADER.size]
        nonce = data[_HEADER.size : _HEADER.size + _NONCE_SIZE]
        body = data[_HEADER.size + _NONCE_SIZE :]
        aad = self._aad + header
        for key in self.keyring.keys:
            try:
                payload = self.keyring.cipher(key).decrypt(nonce, body, aad)
            except AuthenticationFailed:
                continue
            break
        else:
            raise DecodeError("decrypt", "no key authenticates it (wrong key or cluster)")
        if not self._replay.accept(boot, channel, seq, now):
            raise DecodeError("replay", f"boot {boot:x} seq {seq}")
        return payload
