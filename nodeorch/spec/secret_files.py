"""Secret files: the cluster keyring (one base64 key per line, the first encrypts) and the status
endpoint's bearer token. Both are kept private (0600)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from gossip import Keyring, KeyringError, generate_key
from nodeorch.errors import NodeorchError


class KeyringFileError(NodeorchError, ValueError):
    """The keyring file is missing, unsafe or malformed."""


def _read_private(path: Path, missing: str) -> str:
    try:
        info = path.stat()
        text = path.read_text()
    except FileNotFoundError:
        raise KeyringFileError(f"{path}: {missing}") from None
    except (OSError, UnicodeDecodeError) as error:
        raise KeyringFileError(f"{path}: cannot read: {getattr(error, 'strerror', None) or error}") from None
    if info.st_mode & 0o077:
        raise KeyringFileError(
            f"{path}: readable by others (mode {stat.S_IMODE(info.st_mode):04o}); "
            f"a secret must stay private: chmod 600 {path}"
        )
    return text


def load_token(path: Path) -> str:
    """The status endpoint's bearer token: the file's first non-empty line."""
    text = _read_private(path, "no such token file; write a long random line to it (e.g. `nodeorch keygen`)")
    token = next((line.strip() for line in text.splitlines() if line.strip()), "")
    if len(token) < 16:
        raise KeyringFileError(f"{path}: the token must be at least 16 characters")
    return token


def load_keyring(path: Path) -> Keyring:
    text = _read_private(path, f"no such keyring file; create one with `nodeorch keygen --keyring {path}` "
                               "and copy it to every host, or set [cluster] insecure = true")
    keys = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if line and not line.startswith("#"):
            keys.append((number, line))
    if not keys:
        raise KeyringFileError(f"{path}: no key in the file")
    try:
        return Keyring([k for _, k in keys])
    except KeyringError:
        for number, key in keys:
            try:
                Keyring([key])
            except KeyringError as error:
                raise KeyringFileError(f"{path}:{number}: {error}") from None
        raise


def write_keyring(path: Path, *, force: bool = False) -> str:
    """Create a keyring file holding one new key, readable by its owner only; returns the key."""
    key = generate_key()
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if force else os.O_EXCL)
    try:
        fd = os.open(path, flags, 0o600)
    except FileExistsError:
        raise KeyringFileError(f"{path}: already exists; pass --force to replace it") from None
    with os.fdopen(fd, "w") as out:
        os.fchmod(out.fileno(), 0o600)
        out.write(key + "\n")
    return key
