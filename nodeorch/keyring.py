"""The cluster keyring file: one base64 key per line, the first encrypts. Kept private (0600)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from gossip import Keyring, KeyringError, generate_key


class KeyringFileError(ValueError):
    """The keyring file is missing, unsafe or malformed."""


def load_keyring(path: Path) -> Keyring:
    try:
        info = path.stat()
        text = path.read_text()
    except FileNotFoundError:
        raise KeyringFileError(
            f"{path}: no such keyring file; create one with `nodeorch keygen --keyring {path}` "
            "and copy it to every host, or set [cluster] insecure = true"
        ) from None
    except OSError as error:
        raise KeyringFileError(f"{path}: cannot read: {error.strerror}") from None
    if info.st_mode & 0o077:
        raise KeyringFileError(
            f"{path}: readable by others (mode {stat.S_IMODE(info.st_mode):04o}); "
            f"the cluster key must stay private: chmod 600 {path}"
        )
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
