"""AES-256-GCM from OpenSSL's libcrypto, via ctypes: the library hashlib has already loaded.

Every agent pays for what it imports: a dedicated crypto package costs about 7 MB of memory per
process, while libcrypto is mapped already (Python's hashlib is built on it). The format is
standard AES-GCM: ciphertext followed by the 16-byte tag, a 12-byte nonce, the associated data
authenticated (tests check byte-for-byte agreement with an independent implementation).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import hashlib  # noqa: F401 (loads libcrypto into the process; the lookup below finds that copy)

from gossip._errors import GossipError

TAG_SIZE = 16
NONCE_SIZE = 12
_CTRL_GCM_GET_TAG = 0x10
_CTRL_GCM_SET_TAG = 0x11
_LIBRARY_NAMES = ("libcrypto.so.3", "libcrypto.so.1.1")


class AuthenticationFailed(Exception):
    """The ciphertext, its tag or the associated data was not made with this key."""


def _load() -> ctypes.CDLL:
    # find_library runs ldconfig: asked only when no usual name loads.
    for name in (*_LIBRARY_NAMES, ctypes.util.find_library("crypto")):
        if not name:
            continue
        try:
            lib = ctypes.CDLL(name)
        except OSError:
            continue
        vp, cp, ip = ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int
        lib.EVP_CIPHER_CTX_new.restype = vp
        lib.EVP_CIPHER_CTX_new.argtypes = []
        lib.EVP_CIPHER_CTX_free.restype = None
        lib.EVP_CIPHER_CTX_free.argtypes = [vp]
        lib.EVP_aes_256_gcm.restype = vp
        lib.EVP_aes_256_gcm.argtypes = []
        for direction in ("Encrypt", "Decrypt"):
            init = getattr(lib, f"EVP_{direction}Init_ex")
            init.restype, init.argtypes = ip, [vp, vp, vp, cp, cp]
            update = getattr(lib, f"EVP_{direction}Update")
            update.restype, update.argtypes = ip, [vp, vp, ctypes.POINTER(ip), cp, ip]
            final = getattr(lib, f"EVP_{direction}Final_ex")
            final.restype, final.argtypes = ip, [vp, vp, ctypes.POINTER(ip)]
        lib.EVP_CIPHER_CTX_ctrl.restype = ip
        lib.EVP_CIPHER_CTX_ctrl.argtypes = [vp, ip, ip, cp]
        return lib
    raise GossipError("AES-256-GCM needs OpenSSL's libcrypto (libssl3 on Debian), and none was found")


@functools.cache
def _crypto() -> ctypes.CDLL:
    return _load()


class _Direction:
    """One EVP context for one direction, keyed once; each message only sets its nonce."""

    def __init__(self, lib: ctypes.CDLL, name: str, key: bytes) -> None:
        self.init = getattr(lib, f"EVP_{name}Init_ex")
        self.update = getattr(lib, f"EVP_{name}Update")
        self.final = getattr(lib, f"EVP_{name}Final_ex")
        self.ctrl = lib.EVP_CIPHER_CTX_ctrl
        self._free = lib.EVP_CIPHER_CTX_free
        self.ctx = lib.EVP_CIPHER_CTX_new()
        if not self.ctx:
            raise MemoryError("EVP_CIPHER_CTX_new")
        if self.init(self.ctx, lib.EVP_aes_256_gcm(), None, key, None) != 1:
            raise GossipError(f"EVP_{name}Init_ex refused the key")
        # Reused from message to message: allocations are most of the cost of a ctypes call.
        self.size = ctypes.c_int(0)
        self.size_ref = ctypes.byref(self.size)
        self.tag = ctypes.create_string_buffer(TAG_SIZE)
        self.scratch = ctypes.create_string_buffer(TAG_SIZE)
        self.out = ctypes.create_string_buffer(2048)

    def buffer(self, size: int) -> ctypes.Array[ctypes.c_char]:
        if len(self.out) < size:
            self.out = ctypes.create_string_buffer(size)
        return self.out

    def __del__(self) -> None:
        if getattr(self, "ctx", None):
            self._free(self.ctx)


class Aes256Gcm:
    """`encrypt(nonce, data, aad) -> ciphertext + tag`; `decrypt` raises AuthenticationFailed.
    Not for use from several threads at once (each gossip node runs on one event loop)."""

    def __init__(self, key: bytes) -> None:
        if len(key) != 32:
            raise ValueError("AES-256-GCM needs a 32-byte key")
        lib = _crypto()
        self._encrypt = _Direction(lib, "Encrypt", key)
        self._decrypt = _Direction(lib, "Decrypt", key)

    @staticmethod
    def _run(d: _Direction, nonce: bytes, data: bytes, aad: bytes, tag: bytes | None) -> bytes:
        if len(nonce) != NONCE_SIZE:
            raise ValueError(f"the nonce must be {NONCE_SIZE} bytes")
        out = d.buffer(len(data) + TAG_SIZE)
        if d.init(d.ctx, None, None, None, nonce) != 1:
            raise AuthenticationFailed("nonce refused")
        if aad and d.update(d.ctx, None, d.size_ref, aad, len(aad)) != 1:
            raise AuthenticationFailed("associated data refused")
        if d.update(d.ctx, out, d.size_ref, data, len(data)) != 1:
            raise AuthenticationFailed("data refused")
        written = d.size.value
        if tag is not None:
            d.ctrl(d.ctx, _CTRL_GCM_SET_TAG, TAG_SIZE, tag)
        if d.final(d.ctx, d.scratch, d.size_ref) != 1:  # GCM writes nothing here; it checks the tag
            raise AuthenticationFailed("tag mismatch")
        if tag is not None:
            return ctypes.string_at(out, written)
        d.ctrl(d.ctx, _CTRL_GCM_GET_TAG, TAG_SIZE, d.tag)
        return ctypes.string_at(out, written) + d.tag.raw

    def encrypt(self, nonce: bytes, data: bytes, aad: bytes) -> bytes:
        return self._run(self._encrypt, nonce, data, aad, None)

    def decrypt(self, nonce: bytes, sealed: bytes, aad: bytes) -> bytes:
        if len(sealed) < TAG_SIZE:
            raise AuthenticationFailed("shorter than the tag")
        return self._run(self._decrypt, nonce, sealed[:-TAG_SIZE], aad, sealed[-TAG_SIZE:])
