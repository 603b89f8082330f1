"""AES-256-GCM through libcrypto agrees byte for byte with an independent implementation, and
refuses anything tampered with."""

from __future__ import annotations

import os

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from gossip._aead import Aes256Gcm, AuthenticationFailed


@pytest.mark.parametrize("size", [0, 1, 15, 16, 17, 1400, 65536])
def test_the_same_ciphertext_as_an_independent_implementation(size: int) -> None:
    key, data, aad = os.urandom(32), os.urandom(size), os.urandom(size % 50)
    ours, reference = Aes256Gcm(key), AESGCM(key)
    for _ in range(3):  # the keyed contexts are reused message after message
        nonce = os.urandom(12)
        sealed = ours.encrypt(nonce, data, aad)
        assert sealed == reference.encrypt(nonce, data, aad or None)
        assert ours.decrypt(nonce, reference.encrypt(nonce, data, aad or None), aad) == data
        assert reference.decrypt(nonce, sealed, aad or None) == data


def test_tampering_with_the_ciphertext_the_tag_the_aad_or_the_key_is_refused() -> None:
    key, nonce = os.urandom(32), os.urandom(12)
    cipher = Aes256Gcm(key)
    sealed = cipher.encrypt(nonce, b"payload", b"cluster")
    for position in (0, len(sealed) - 1):
        bad = bytearray(sealed)
        bad[position] ^= 1
        with pytest.raises(AuthenticationFailed):
            cipher.decrypt(nonce, bytes(bad), b"cluster")
    with pytest.raises(AuthenticationFailed):
        cipher.decrypt(nonce, sealed, b"another cluster")
    with pytest.raises(AuthenticationFailed):
        Aes256Gcm(os.urandom(32)).decrypt(nonce, sealed, b"cluster")
    with pytest.raises(AuthenticationFailed):
        cipher.decrypt(nonce, sealed[:10], b"cluster")
    assert cipher.decrypt(nonce, sealed, b"cluster") == b"payload", "still usable after refusals"
