"""Replicas on disk: a sparse data file and its metadata, per volume, in one directory.

`NAME.img` holds the blocks (pwrite; FLUSH and FUA end in fdatasync). `NAME.meta` holds the
volume id, size, epoch, member set and its version, the last sequence number made durable, and a
clean flag; it is written atomically (temp file, fsync, rename, fsync of the directory). A request
carrying an epoch lower than the replica's is refused (Fenced): once a new engine claimed the
volume, the old one cannot write another block here.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import json
import os
import re
import secrets
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Protocol

from drivers.volumes._errors import Fenced, VolumeError
from drivers.volumes._local_view import EpochWord, offer

VOLUME_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,62}[a-z0-9])?$")
_FALLOC_FL_KEEP_SIZE = 0x01
_FALLOC_FL_PUNCH_HOLE = 0x02
_libc = ctypes.CDLL(None, use_errno=True)
_libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_long, ctypes.c_long]


@dataclass(frozen=True, slots=True)
class ReplicaMeta:
    volume: str
    size: int
    volume_id: str
    epoch: int = 0
    members: tuple[str, ...] = ()
    set_version: int = 0
    seq: int = 0
    """The highest write sequence made durable here (by a FLUSH or a FUA write)."""
    clean: bool = True
    """False from the first write after opening until a clean close."""
    set_epoch: int = -1
    """The epoch of the engine that wrote the member set (`epoch` may be higher: an engine that
    fenced this replica but has not written its set yet). -1 when built: the same as `epoch`."""
    fenced_by: str = ""
    """The engine that raised `epoch` (its random id): a recovering engine tells its own fences
    from a newer engine's."""

    def __post_init__(self) -> None:
        if self.set_epoch < 0:
            object.__setattr__(self, "set_epoch", self.epoch)

    @property
    def set_id(self) -> tuple[int, int]:
        """Which member set this replica last joined: (the epoch that wrote it, its version)."""
        return (self.set_epoch, self.set_version)

    @property
    def rank(self) -> tuple[int, int, int]:
        """Which replica's data is newest: the engine starts from the highest."""
        return (self.set_epoch, self.set_version, self.seq)

    def to_json(self) -> dict[str, object]:
        return {**asdict(self), "members": list(self.members)}

    @classmethod
    def from_json(cls, raw: dict[str, object]) -> ReplicaMeta:
        try:
            members = raw["members"]
            assert isinstance(members, list) and all(isinstance(m, str) for m in members)
            meta = cls(str(raw["volume"]), int(raw["size"]), str(raw["volume_id"]),  # type: ignore[call-overload]
                       int(raw["epoch"]), tuple(members), int(raw["set_version"]),  # type: ignore[call-overload]
                       int(raw["seq"]), bool(raw["clean"]),  # type: ignore[call-overload]
                       int(raw.get("set_epoch", -1)), str(raw.get("fenced_by", "")))  # type: ignore[call-overload]
        except (KeyError, TypeError, ValueError, AssertionError) as error:
            raise VolumeError(f"replica metadata is damaged: {error!r}") from None
        return meta


def check_volume_name(name: str) -> str:
    if not VOLUME_NAME.match(name):
        raise VolumeError(f"{name!r} is not a volume name (lowercase letters, digits and '-', at most 64)")
    return name


def write_atomically(path: Path, data: bytes, *, durable: bool = True) -> None:
    """Replace `path` with `data` so that readers see the old or the new content, never a mix; with
    `durable`, also across a crash (fsync of the file and of its directory)."""
    temp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, data)
        if durable:
            os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(temp, path)
    if not durable:
        return
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


class Backing(Protocol):
    """Where a replica's blocks and metadata live: files on a node, or memory in simulations."""

    def pwrite(self, data: bytes, offset: int) -> None: ...

    def pread(self, length: int, offset: int) -> bytes: ...

    def punch(self, offset: int, length: int) -> None: ...

    def sync(self) -> None:
        """Every block written so far survives a crash."""

    def extents(self, offset: int, length: int) -> list[tuple[int, int]]: ...

    def save_meta(self, meta: ReplicaMeta) -> None:
        """Durably, atomically."""

    def local_offer(self) -> dict[str, object] | None:
        """How an engine on this host may read the blocks itself (see _local_view), if it may."""

    def close(self) -> None: ...


class FileBacking:
    """`NAME.img` (sparse) and `NAME.meta` (written atomically) in a directory, and `NAME.epoch`,
    the epoch shared with engines on this host that read the blocks themselves."""

    def __init__(self, directory: Path, meta: ReplicaMeta) -> None:
        self._meta_path = directory / f"{meta.volume}.meta"
        self._data_path = directory / f"{meta.volume}.img"
        self._fd = os.open(self._data_path, os.O_RDWR | os.O_CREAT, 0o600)
        if os.fstat(self._fd).st_size != meta.size:
            os.ftruncate(self._fd, meta.size)
        self._epoch = EpochWord(directory / f"{meta.volume}.epoch", meta.epoch)

    def pwrite(self, data: bytes, offset: int) -> None:
        os.pwrite(self._fd, data, offset)

    def pread(self, length: int, offset: int) -> bytes:
        data = os.pread(self._fd, length, offset)
        return data + bytes(length - len(data))

    def punch(self, offset: int, length: int) -> None:
        if length and _libc.fallocate(self._fd, _FALLOC_FL_PUNCH_HOLE | _FALLOC_FL_KEEP_SIZE, offset, length) != 0:
            os.pwrite(self._fd, bytes(length), offset)  # a filesystem without hole punching

    def sync(self) -> None:
        os.fdatasync(self._fd)

    def extents(self, offset: int, length: int) -> list[tuple[int, int]]:
        end, found, position = offset + length, [], offset
        while position < end:
            try:
                start = os.lseek(self._fd, position, os.SEEK_DATA)
            except OSError:  # ENXIO: no data after position
                break
            if start >= end:
                break
            stop = min(os.lseek(self._fd, start, os.SEEK_HOLE), end)
            found.append((start, stop - start))
            position = stop
        return found

    def save_meta(self, meta: ReplicaMeta) -> None:
        write_atomically(self._meta_path, json.dumps(meta.to_json()).encode())
        self._epoch.set(meta.epoch)

    def local_offer(self) -> dict[str, object] | None:
        return offer(self._data_path, self._fd, self._epoch)

    def close(self) -> None:
        self._epoch.close()
        os.close(self._fd)


class Replica:
    """One volume's replica, open for I/O: the epoch and member-set rules over a backing."""

    def __init__(self, backing: Backing, meta: ReplicaMeta) -> None:
        self._backing = backing
        self.meta = meta
        self.seq = meta.seq
        """The highest write sequence applied (durable or not)."""

    def _save(self, meta: ReplicaMeta) -> None:
        self._backing.save_meta(meta)
        self.meta = meta

    def _check(self, epoch: int) -> None:
        if epoch < self.meta.epoch:
            raise Fenced(f"{self.meta.volume}: epoch {epoch} is older than this replica's {self.meta.epoch}")

    def _dirty(self) -> None:
        if self.meta.clean:
            self._save(replace(self.meta, clean=False))

    def fence(self, epoch: int, by: str = "", served: int | None = None) -> ReplicaMeta:
        """A starting engine's first step: from now on lower epochs are refused, and nothing here
        changes until it writes its member set. Returns what the replica held just before (with
        the writes applied but not yet durable counted), which the engine then plans from.

        `served`: an engine recovering in place gives the epoch it served at, and is refused when
        another engine raised the epoch since: what it saw before fencing may be older than what
        the replica holds now, and it must never take the volume back from a newer engine."""
        if epoch <= self.meta.epoch:
            raise Fenced(f"{self.meta.volume}: epoch {epoch} does not exceed this replica's {self.meta.epoch}")
        if served is not None and self.meta.epoch > served and self.meta.fenced_by != by:
            raise Fenced(f"{self.meta.volume}: a newer engine took the volume at epoch {self.meta.epoch}")
        before = replace(self.meta, seq=max(self.meta.seq, self.seq))
        self._save(replace(self.meta, epoch=epoch, fenced_by=by))
        return before

    def claim(self, epoch: int, members: tuple[str, ...], set_version: int, fenced_by_caller: bool = False) -> None:
        """An engine takes the volume with its member set: from now on, lower epochs are refused.
        At the replica's own epoch only the engine that fenced it may (`fenced_by_caller`)."""
        if epoch < self.meta.epoch or (epoch == self.meta.epoch and not fenced_by_caller):
            raise Fenced(f"{self.meta.volume}: epoch {epoch} does not exceed this replica's {self.meta.epoch}")
        self._save(replace(self.meta, epoch=epoch, set_epoch=epoch, members=members, set_version=set_version,
                           seq=self.seq))

    def adopt(self, epoch: int) -> None:
        """A running engine takes this replica in to rebuild it: its epoch fences older engines,
        but its member set and version stay behind until the rebuild completes, so a restart in
        the middle never mistakes it for a complete copy."""
        self._check(epoch)
        self._dirty()
        if epoch != self.meta.epoch:
            self._save(replace(self.meta, epoch=epoch))

    def digest(self, epoch: int, offset: int, length: int) -> bytes:
        """SHA-256 of a range, so a rebuild can skip chunks that already match."""
        return hashlib.sha256(self.read(epoch, offset, length)).digest()

    def extents(self, epoch: int, offset: int, length: int) -> list[tuple[int, int]]:
        """The (offset, length) ranges holding data within a range; holes read as zeros and need
        no copying (SEEK_DATA / SEEK_HOLE)."""
        self._check(epoch)
        self._bounds(offset, length)
        return self._backing.extents(offset, length)

    def set_members(self, epoch: int, members: tuple[str, ...], set_version: int, seq: int = 0) -> None:
        """A new member set; `seq`: a rebuild completed here holds every write up to it."""
        self._check(epoch)
        if (epoch, set_version) < self.meta.set_id:
            raise VolumeError(f"{self.meta.volume}: member set {set_version} of epoch {epoch} is older than "
                              f"{self.meta.set_version} of epoch {self.meta.set_epoch}")
        self.seq = max(self.seq, seq)
        self._save(replace(self.meta, set_epoch=epoch, members=members, set_version=set_version, seq=self.seq))

    def write(self, epoch: int, offset: int, data: bytes, seq: int, fua: bool) -> None:
        self._check(epoch)
        self._bounds(offset, len(data))
        self._dirty()
        self._backing.pwrite(data, offset)
        self.seq = max(self.seq, seq)
        if fua:
            self.flush(epoch)

    def zero(self, epoch: int, offset: int, length: int, seq: int) -> None:
        """The range reads back as zeros, and its blocks are given back to the filesystem."""
        self._check(epoch)
        self._bounds(offset, length)
        self._dirty()
        self._backing.punch(offset, length)
        self.seq = max(self.seq, seq)

    def local_offer(self) -> dict[str, object] | None:
        return self._backing.local_offer()

    def read(self, epoch: int, offset: int, length: int) -> bytes:
        self._check(epoch)
        self._bounds(offset, length)
        return self._backing.pread(length, offset)

    def flush(self, epoch: int, clean: bool = False) -> None:
        """Everything written so far is durable, and so is the sequence number that says so. With
        `clean` (an engine's last flush before it closes) the replica is marked clean: the next
        engine needs no resync for it, until a write makes it unclean again."""
        self._check(epoch)
        self._backing.sync()
        if self.seq != self.meta.seq or (clean and not self.meta.clean):
            self._save(replace(self.meta, seq=self.seq, clean=self.meta.clean or clean))

    def _bounds(self, offset: int, length: int) -> None:
        if offset < 0 or length < 0 or offset + length > self.meta.size:
            raise VolumeError(f"{self.meta.volume}: {offset}+{length} is outside its {self.meta.size} bytes")

    def close(self, clean: bool = True) -> None:
        """Make everything durable and mark the replica clean."""
        with contextlib.suppress(OSError):
            self._backing.sync()
            if clean:
                self._save(replace(self.meta, seq=self.seq, clean=True))
        self._backing.close()


class ReplicaStore:
    """Every replica in one directory (a node's replica server serves them all)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)

    def meta(self, volume: str) -> ReplicaMeta | None:
        path = self.directory / f"{check_volume_name(volume)}.meta"
        try:
            raw = json.loads(path.read_bytes())
        except FileNotFoundError:
            return None
        except ValueError as error:
            raise VolumeError(f"{path}: not readable metadata: {error}") from None
        if not isinstance(raw, dict):
            raise VolumeError(f"{path}: not readable metadata")
        return ReplicaMeta.from_json(raw)

    def volumes(self) -> list[ReplicaMeta]:
        found = []
        for path in sorted(self.directory.glob("*.meta")):
            with contextlib.suppress(VolumeError):
                meta = self.meta(path.stem)
                if meta is not None:
                    found.append(meta)
        return found

    def used(self, volume: str) -> int:
        """Bytes the replica's data file takes on disk (sparse: only what was written)."""
        try:
            return (self.directory / f"{check_volume_name(volume)}.img").stat().st_blocks * 512
        except FileNotFoundError:
            return 0

    def delete(self, volume: str) -> None:
        """Remove the replica's files (metadata first: a half-deleted replica is no replica)."""
        for suffix in (".meta", ".img", ".epoch"):
            (self.directory / f"{check_volume_name(volume)}{suffix}").unlink(missing_ok=True)
        fd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def open(self, volume: str, size: int, *, create: bool, volume_id: str = "") -> Replica:
        """Open a replica; with `create`, an absent one is created empty (epoch 0), carrying the
        volume id the engine gives (every replica of one volume has the same)."""
        meta = self.meta(volume)
        if meta is None:
            if not create:
                raise VolumeError(f"no replica of {volume!r} here")
            meta = ReplicaMeta(volume, size, volume_id or secrets.token_hex(8))
            write_atomically(self.directory / f"{volume}.meta", json.dumps(meta.to_json()).encode())
        elif meta.size != size:
            raise VolumeError(f"{volume}: the replica holds {meta.size} bytes, the engine asks for {size}")
        return Replica(FileBacking(self.directory, meta), meta)
