"""Reads of a replica on the engine's own host, straight from the replica's data file.

A read answered by the local replica server costs a round trip through a second process; on
the same host the engine can read the file itself. Three rules keep that exactly as safe as
asking the server:

- The same file: the server offers the file's path with the host's boot id and the file's device
  and inode; the engine opens it read-only and uses it only when all of them match.
- Only at the engine's epoch: the server keeps the replica's epoch in a shared 8-byte word
  (`NAME.epoch`, memory-mapped), written before it answers the request that raised it, and set to
  GONE when it lets go of the replica. The engine reads directly only while the word equals its
  own epoch; a fenced engine asks the server again, which refuses it.
- Only what the server has applied: the engine's link reads directly only while none of the
  writes it sent there is unanswered (otherwise the read goes on the connection, behind them), and
  only pages in the page cache (RWF_NOWAIT): a read that would wait for the disk goes to the
  server, so the engine's event loop never blocks on a disk.
"""

from __future__ import annotations

import contextlib
import functools
import mmap
import os
import struct
from pathlib import Path
from typing import Protocol

WORD = struct.Struct("<Q")
GONE = (1 << 64) - 1
"""The epoch word of a replica its server closed: no engine's epoch."""


class LocalView(Protocol):
    """Direct reads of one replica, valid while its epoch is the reader's."""

    def read(self, offset: int, length: int, epoch: int) -> bytes | None:
        """The bytes, or None when the caller must ask the replica server (another epoch, a
        closed replica, pages not in memory)."""
        ...

    def close(self) -> None: ...


@functools.cache
def host_boot_id() -> str:
    """This host's boot id ('' where the kernel has none): same id, same kernel, same files."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


class EpochWord:
    """The replica server's side: the epoch, shared with local engines through a mapped file."""

    def __init__(self, path: Path, epoch: int) -> None:
        self.path = path
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            os.ftruncate(fd, WORD.size)
            self._map = mmap.mmap(fd, WORD.size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        finally:
            os.close(fd)
        self.set(epoch)

    def set(self, epoch: int) -> None:
        WORD.pack_into(self._map, 0, epoch)

    def close(self) -> None:
        if not self._map.closed:
            self.set(GONE)
            self._map.close()


def offer(data: Path, data_fd: int, word: EpochWord) -> dict[str, object]:
    """What the replica server tells an engine so that it can read the file itself."""
    stat = os.fstat(data_fd)
    return {"host": host_boot_id(), "data": str(data), "epoch_word": str(word.path),
            "device": stat.st_dev, "inode": stat.st_ino}


class FileView:
    """The engine's side: the data file opened read-only and the epoch word mapped read-only."""

    def __init__(self, fd: int, word: mmap.mmap) -> None:
        self._fd = fd
        self._word = word

    @classmethod
    def accept(cls, offered: object) -> FileView | None:
        """A view of the offered file, or None when it is not this host's or not the same file."""
        if not isinstance(offered, dict) or not host_boot_id() or offered.get("host") != host_boot_id():
            return None
        data, word, device, inode = (offered.get(k) for k in ("data", "epoch_word", "device", "inode"))
        if not (isinstance(data, str) and isinstance(word, str) and isinstance(device, int)
                and isinstance(inode, int)):
            return None
        try:
            fd = os.open(data, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return None
        try:
            stat = os.fstat(fd)
            if (stat.st_dev, stat.st_ino) != (device, inode):
                raise OSError("not the offered file")
            word_fd = os.open(word, os.O_RDONLY | os.O_CLOEXEC)
            try:
                mapped = mmap.mmap(word_fd, WORD.size, mmap.MAP_SHARED, mmap.PROT_READ)
            finally:
                os.close(word_fd)
        except (OSError, ValueError):
            os.close(fd)
            return None
        return cls(fd, mapped)

    def read(self, offset: int, length: int, epoch: int) -> bytes | None:
        if self._word.closed or WORD.unpack_from(self._word)[0] != epoch:
            return None
        buffer = bytearray(length)
        try:
            got = os.preadv(self._fd, [buffer], offset, os.RWF_NOWAIT)
        except OSError:  # EAGAIN: not in memory; anything else: the server knows better
            return None
        return bytes(buffer) if got == length else None

    def close(self) -> None:
        if not self._word.closed:
            self._word.close()
            with contextlib.suppress(OSError):
                os.close(self._fd)
