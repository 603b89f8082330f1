"""The in-memory twin of the replica store, for simulations: the same Replica rules over blocks in
memory, with a crash that loses what was never synced (as a power cut does)."""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field

from drivers.volumes._errors import VolumeError
from drivers.volumes._store import Replica, ReplicaMeta, check_volume_name


@dataclass(slots=True)
class MemoryBacking:
    size: int
    meta: ReplicaMeta
    data: bytearray = field(init=False)
    durable: bytearray = field(init=False)
    closed: bool = False

    def __post_init__(self) -> None:
        self.data = bytearray(self.size)
        self.durable = bytearray(self.size)

    def pwrite(self, data: bytes, offset: int) -> None:
        self.data[offset:offset + len(data)] = data

    def pread(self, length: int, offset: int) -> bytes:
        return bytes(self.data[offset:offset + length])

    def punch(self, offset: int, length: int) -> None:
        self.data[offset:offset + length] = bytes(length)

    def sync(self) -> None:
        self.durable[:] = self.data

    def extents(self, offset: int, length: int) -> list[tuple[int, int]]:
        return [(offset, length)] if any(self.data[offset:offset + length]) else []

    def save_meta(self, meta: ReplicaMeta) -> None:
        self.meta = meta

    def local_offer(self) -> dict[str, object] | None:
        return None  # a simulated link reads the backing itself (MemoryView)

    def close(self) -> None:
        self.closed = True

    def crash(self) -> None:
        """What was never synced is gone."""
        self.data[:] = self.durable


class MemoryView:
    """The in-memory twin of _local_view.FileView: direct reads of a simulated replica on the
    engine's own host, at the replica's current epoch only."""

    def __init__(self, backing: MemoryBacking) -> None:
        self._backing: MemoryBacking | None = backing

    def read(self, offset: int, length: int, epoch: int) -> bytes | None:
        backing = self._backing
        if backing is None or backing.closed or backing.meta.epoch != epoch:
            return None
        return backing.pread(length, offset)

    def close(self) -> None:
        self._backing = None


class MemoryStore:
    """Replicas of one simulated node, surviving simulated process restarts (not their crashes'
    unsynced writes)."""

    def __init__(self) -> None:
        self.backings: dict[str, MemoryBacking] = {}

    def meta(self, volume: str) -> ReplicaMeta | None:
        backing = self.backings.get(check_volume_name(volume))
        return backing.meta if backing else None

    def volumes(self) -> list[ReplicaMeta]:
        return [b.meta for _, b in sorted(self.backings.items())]

    def open(self, volume: str, size: int, *, create: bool, volume_id: str = "") -> Replica:
        backing = self.backings.get(check_volume_name(volume))
        if backing is None:
            if not create:
                raise VolumeError(f"no replica of {volume!r} here")
            backing = self.backings[volume] = MemoryBacking(size, ReplicaMeta(volume, size,
                                                                              volume_id or secrets.token_hex(8)))
        elif backing.meta.size != size:
            raise VolumeError(f"{volume}: the replica holds {backing.meta.size} bytes, the engine asks for {size}")
        backing.closed = False
        return Replica(backing, backing.meta)

    def delete(self, volume: str) -> None:
        self.backings.pop(check_volume_name(volume), None)

    def crash(self) -> None:
        for backing in self.backings.values():
            backing.crash()
