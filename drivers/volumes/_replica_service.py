"""What a replica server does with each request, without I/O of its own: the same service answers
over TCP (the replica server) and over the in-memory links of the simulations."""

from __future__ import annotations

from typing import Any, Protocol

from drivers.volumes._errors import Fenced, ProtocolError, VolumeError
from drivers.volumes._store import Replica, ReplicaMeta, check_volume_name
from drivers.volumes._wire import (
    OP_ADOPT,
    OP_CLAIM,
    OP_DIGEST,
    OP_DROP,
    OP_EXTENTS,
    OP_FENCE,
    OP_FLUSH,
    OP_MEMBERS,
    OP_OPEN,
    OP_READ,
    OP_STATUS,
    OP_WRITE,
    OP_ZERO,
    STATUS_ERROR,
    STATUS_FENCED,
    STATUS_OK,
    field,
)


class Store(Protocol):
    """Replicas on a node: files (ReplicaStore) or memory (MemoryStore)."""

    def meta(self, volume: str) -> ReplicaMeta | None: ...

    def volumes(self) -> list[ReplicaMeta]: ...

    def open(self, volume: str, size: int, *, create: bool, volume_id: str = "") -> Replica: ...

    def delete(self, volume: str) -> None: ...


def _members(header: dict[str, Any]) -> tuple[str, ...]:
    members = header.get("members")
    if not isinstance(members, list) or not all(isinstance(m, str) for m in members) or len(members) > 16:
        raise ProtocolError("members: expected a list of addresses")
    return tuple(members)


class ReplicaService:
    """The replicas of one node as engines see them. Each volume remembers the connection (session)
    that last claimed or adopted it: a change from any other session at the same epoch is refused,
    so writes an engine sent on a connection it has since given up (stuck in a partition, then
    delivered late) can never land after a rebuild copied that range on a new connection."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._open: dict[str, Replica] = {}
        self._owner: dict[str, int] = {}

    def answer(self, op: int, header: dict[str, Any], data: bytes,
               session: int = 0) -> tuple[int, dict[str, Any], bytes]:
        """(status, header, data) for one request on connection `session`; ProtocolError when the
        request is malformed (the connection is then closed)."""
        try:
            answer, payload = self._handle(op, header, data, session)
        except Fenced as error:
            return STATUS_FENCED, {"error": str(error)}, b""
        except ProtocolError:
            raise
        except (VolumeError, OSError) as error:
            return STATUS_ERROR, {"error": str(error)}, b""
        return STATUS_OK, answer, payload

    def close(self) -> None:
        for replica in self._open.values():
            replica.close()
        self._open.clear()

    def _drop(self, header: dict[str, Any]) -> dict[str, Any]:
        """Delete a replica for good (its volume was deleted): only the one with the volume id
        named, so a new volume that reuses the name is never touched."""
        volume = check_volume_name(field(header, "volume", str))
        volume_id = field(header, "volume_id", str)
        meta = self.store.meta(volume)
        if meta is None:
            return {"dropped": False}
        if meta.volume_id != volume_id:
            raise VolumeError(f"{volume}: the replica here is of volume id {meta.volume_id}, not {volume_id}")
        replica = self._open.pop(volume, None)
        if replica is not None:
            replica.close()
        self._owner.pop(volume, None)
        self.store.delete(volume)
        return {"dropped": True}

    def _replica(self, header: dict[str, Any]) -> Replica:
        volume = check_volume_name(field(header, "volume", str))
        replica = self._open.get(volume)
        if replica is None:
            raise VolumeError(f"{volume} is not open here; OPEN it first")
        return replica

    def _handle(self, op: int, header: dict[str, Any], data: bytes, session: int) -> tuple[dict[str, Any], bytes]:
        if op == OP_STATUS:
            return {"replicas": [m.to_json() for m in self.store.volumes()]}, b""
        if op == OP_DROP:
            return self._drop(header), b""
        if op == OP_OPEN:
            volume = check_volume_name(field(header, "volume", str))
            size = field(header, "size", int)
            if volume not in self._open:
                volume_id = header.get("volume_id", "")
                if not isinstance(volume_id, str) or len(volume_id) > 64:
                    raise ProtocolError("volume_id: expected a short string")
                self._open[volume] = self.store.open(volume, size, create=bool(header.get("create")),
                                                     volume_id=volume_id)
            elif self._open[volume].meta.size != size:
                raise VolumeError(f"{volume}: holds {self._open[volume].meta.size} bytes, not {size}")
            replica = self._open[volume]
            answer = {"meta": replica.meta.to_json(), "applied": replica.seq}
            local = replica.local_offer()
            return ({**answer, "local": local} if local else answer), b""
        replica = self._replica(header)
        epoch = field(header, "epoch", int)
        if op in (OP_WRITE, OP_ZERO, OP_MEMBERS, OP_FLUSH) and epoch == replica.meta.epoch \
                and self._owner.get(replica.meta.volume, session) != session:
            raise Fenced(f"{replica.meta.volume}: this connection was superseded by a newer one of epoch {epoch}")
        if op == OP_WRITE:
            replica.write(epoch, field(header, "offset", int), data, field(header, "seq", int), bool(header.get("fua")))
            return {}, b""
        if op == OP_READ:
            return {}, replica.read(epoch, field(header, "offset", int), field(header, "length", int))
        if op == OP_ZERO:
            replica.zero(epoch, field(header, "offset", int), field(header, "length", int), field(header, "seq", int))
            return {}, b""
        if op == OP_FENCE:
            by = header.get("engine", "")
            if not isinstance(by, str) or len(by) > 64:
                raise ProtocolError("engine: expected a short string")
            served = header.get("served")
            if served is not None and type(served) is not int:
                raise ProtocolError("served: expected int")
            before = replica.fence(epoch, by, served)
            self._owner[replica.meta.volume] = session
            return {"meta": before.to_json()}, b""
        if op == OP_CLAIM:
            replica.claim(epoch, _members(header), field(header, "set_version", int),
                          fenced_by_caller=self._owner.get(replica.meta.volume) == session)
            self._owner[replica.meta.volume] = session
            return {"meta": replica.meta.to_json()}, b""
        if op == OP_ADOPT:
            replica.adopt(epoch)
            self._owner[replica.meta.volume] = session
            return {"meta": replica.meta.to_json()}, b""
        if op == OP_DIGEST:
            return {}, replica.digest(epoch, field(header, "offset", int), field(header, "length", int))
        if op == OP_EXTENTS:
            found = replica.extents(epoch, field(header, "offset", int), field(header, "length", int))
            return {"extents": [list(e) for e in found]}, b""
        if op == OP_FLUSH:
            replica.flush(epoch, clean=header.get("clean") is True)
            return {}, b""
        if op == OP_MEMBERS:
            seq = header.get("seq", 0)
            if type(seq) is not int:
                raise ProtocolError("seq: expected int")
            replica.set_members(epoch, _members(header), field(header, "set_version", int), seq)
            return {}, b""
        raise ProtocolError(f"unknown op {op}")

