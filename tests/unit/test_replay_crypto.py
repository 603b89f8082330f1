"""The sealed envelope: authenticated encryption, cluster separation, key rotation, replays."""

from __future__ import annotations

import os

import pytest

from gossip import DecodeError, Keyring, KeyringError, Sealer, generate_key, parse_key
from gossip._crypto import CHANNEL_STREAM
from gossip._replay import ReplayGuard


def sealer(cluster: str = "prod", *keys: str, boot: int | None = None) -> Sealer:
    return Sealer(cluster, Keyring(list(keys)) if keys else None, boot=boot)


KEY1, KEY2 = generate_key(), generate_key()


def test_round_trip_and_overhead() -> None:
    a, b = sealer("prod", KEY1), sealer("prod", KEY1)
    sealed = a.seal(b"hello")
    assert len(sealed) == len(b"hello") + a.overhead
    assert b"hello" not in sealed
    assert b.open(sealed, now=0.0) == b"hello"


@pytest.mark.parametrize(
    ("receiver", "reason"),
    [
        (lambda: sealer("prod", KEY2), "decrypt"),
        (lambda: sealer("staging", KEY1), "decrypt"),
        (lambda: sealer("prod"), "encrypted_refused"),
    ],
)
def test_wrong_key_other_cluster_or_insecure_receiver_drops_and_counts(receiver, reason) -> None:  # type: ignore[no-untyped-def]
    r = receiver()
    with pytest.raises(DecodeError) as caught:
        r.open(sealer("prod", KEY1).seal(b"x"), now=0.0)
    assert caught.value.reason == reason
    assert r.drops[reason] == 1


def test_plaintext_is_refused_by_an_encrypting_node_and_kept_apart_by_cluster() -> None:
    with pytest.raises(DecodeError, match="plaintext_refused"):
        sealer("prod", KEY1).open(sealer("prod").seal(b"x"), now=0.0)
    with pytest.raises(DecodeError, match="wrong_cluster"):
        sealer("prod").open(sealer("prodx").seal(b"x"), now=0.0)
    assert sealer("prod").open(sealer("prod").seal(b"x"), now=0.0) == b"x"


def test_tampering_anywhere_is_detected() -> None:
    sealed = bytearray(sealer("prod", KEY1).seal(b"payload" * 10))
    for position in (1, 10, 20, 30, len(sealed) - 1):
        forged = bytearray(sealed)
        forged[position] ^= 0x01
        with pytest.raises(DecodeError):
            sealer("prod", KEY1).open(bytes(forged), now=0.0)


def test_rotation_install_use_remove_keeps_both_sides_talking() -> None:
    a, b = sealer("prod", KEY1), sealer("prod", KEY1)
    a.keyring.install(KEY2)  # type: ignore[union-attr]
    b.keyring.install(KEY2)  # type: ignore[union-attr]
    a.keyring.use(KEY2)  # type: ignore[union-attr]
    assert b.open(a.seal(b"1"), 0.0) == b"1", "b still decrypts the new key"
    assert a.open(b.seal(b"2"), 0.0) == b"2", "a still decrypts the old key"
    b.keyring.use(KEY2)  # type: ignore[union-attr]
    a.keyring.remove(KEY1)  # type: ignore[union-attr]
    b.keyring.remove(KEY1)  # type: ignore[union-attr]
    assert a.open(b.seal(b"3"), 0.0) == b"3"


def test_keyring_errors_are_precise() -> None:
    ring = Keyring([KEY1])
    with pytest.raises(KeyringError, match="in use"):
        ring.remove(KEY1)
    with pytest.raises(KeyringError, match="not installed"):
        ring.use(KEY2)
    with pytest.raises(KeyringError, match="32 bytes"):
        parse_key(os.urandom(16))
    with pytest.raises(KeyringError, match="base64"):
        parse_key("not base64 at all!")


def test_a_replayed_packet_is_refused_but_streams_have_their_own_sequence() -> None:
    a, b = sealer("prod", KEY1), sealer("prod", KEY1)
    packet = a.seal(b"ping")
    assert b.open(packet, 0.0) == b"ping"
    with pytest.raises(DecodeError, match="replay"):
        b.open(packet, 0.1)
    assert b.open(a.seal(b"frame", CHANNEL_STREAM), 0.2, CHANNEL_STREAM) == b"frame"


def test_replay_window_accepts_reordering_within_it_and_rejects_beyond() -> None:
    guard = ReplayGuard(window=64, memory=600.0)
    assert guard.accept(boot=1, channel=0, seq=100, now=0.0)
    assert guard.accept(1, 0, 90, 0.0), "late but within the window"
    assert not guard.accept(1, 0, 90, 0.0)
    assert not guard.accept(1, 0, 100, 0.0)
    assert not guard.accept(1, 0, 36, 0.0), "older than the window"
    assert guard.accept(1, 0, 300, 0.0)
    assert guard.accept(2, 0, 100, 0.0), "another boot has its own window"


def test_replay_memory_forgets_silent_boots() -> None:
    guard = ReplayGuard(window=64, memory=10.0)
    guard.accept(1, 0, 5, 0.0)
    guard.accept(2, 0, 5, 20.0)
    assert len(guard) == 1
