"""The engine: one per attached volume. It claims the volume on a majority of its replicas, then
serves block requests by writing to every replica in the member set and acknowledging once a
majority of the configured replicas holds each write.

- A replica that fails or does not answer within `replica_timeout` is ejected: it is cut off,
  and the member-set version is raised on the remaining replicas before any further
  acknowledgement, so a restart knows it is behind.
- Without a majority, requests fail (the NBD client sees EIO): never a false acknowledgement.
- A replica that answers "fenced" means another engine claimed the volume with a higher epoch:
  this engine stops acknowledging anything at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from drivers.volumes._client import ReplicaClient, ReplicaLost, Reply
from drivers.volumes._errors import NoQuorum, VolumeError
from drivers.volumes._quorum import StartPlan, majority, plan_start
from drivers.volumes._store import ReplicaMeta, check_volume_name
from drivers.volumes._wire import OP_CLAIM, OP_FLUSH, OP_MEMBERS, OP_OPEN, OP_READ, OP_WRITE, OP_ZERO, Secrets

log = logging.getLogger(__name__)

CONNECT_TIMEOUT = 5.0


@dataclass(slots=True)
class EngineStatus:
    volume: str
    size: int
    epoch: int = 0
    set_version: int = 0
    configured: tuple[str, ...] = ()
    members: tuple[str, ...] = ()
    stale: tuple[str, ...] = ()
    fault: str = ""
    io: Counter[str] = field(default_factory=Counter)

    def to_json(self) -> dict[str, Any]:
        return {"volume": self.volume, "size": self.size, "epoch": self.epoch, "set_version": self.set_version,
                "configured": list(self.configured), "members": list(self.members), "stale": list(self.stale),
                "state": "faulted" if self.fault else ("healthy" if len(self.members) == len(self.configured)
                                                        else "degraded"),
                "fault": self.fault or None, "io": dict(self.io)}


class Engine:
    def __init__(self, volume: str, size: int, replicas: list[str], secrets: Secrets,
                 replica_timeout: float = 8.0) -> None:
        if not replicas:
            raise VolumeError("an engine needs at least one --replica")
        if len(set(replicas)) != len(replicas):
            raise VolumeError("each --replica must be a different address")
        self.status = EngineStatus(check_volume_name(volume), size, configured=tuple(replicas))
        self._secrets = secrets
        self._timeout = replica_timeout
        self._clients: dict[str, ReplicaClient] = {}
        self._need = majority(len(replicas))
        self._seq = 0
        self._membership = asyncio.Lock()
        self._settled = asyncio.Event()
        self._settled.set()
        self._background: set[asyncio.Future[Any]] = set()
        self._ejecting: set[str] = set()

    @property
    def members(self) -> tuple[str, ...]:
        return self.status.members

    # Start ------------------------------------------------------------------------------------------

    async def start(self) -> StartPlan:
        """Connect, find where to start from, claim a new epoch on a majority. NoQuorum if it cannot."""
        configured = self.status.configured
        results = await asyncio.gather(*(self._open(a) for a in configured), return_exceptions=True)
        found: dict[str, ReplicaMeta | None] = {}
        for address, result in zip(configured, results, strict=True):
            if isinstance(result, BaseException):
                if not isinstance(result, VolumeError):
                    raise result
                log.warning("%s: replica %s unavailable: %s", self.status.volume, address, result)
                continue
            found[address] = result
        plan = plan_start(configured, found)
        if plan.create:
            await asyncio.gather(*(self._open(a, create=True) for a in plan.members))
        claimed = await asyncio.gather(*(self._claim(a, plan) for a in plan.members), return_exceptions=True)
        members = tuple(a for a, ok in zip(plan.members, claimed, strict=True) if ok is True)
        if len(members) < self._need:
            raise NoQuorum(f"{self.status.volume}: epoch {plan.epoch} claimed on {len(members)} replicas; "
                           f"{self._need} needed")
        for address in set(self._clients) - set(members):
            self._clients.pop(address).close("not in the member set")
        self.status.epoch, self.status.set_version = plan.epoch, plan.set_version
        self.status.members, self.status.stale = members, plan.stale
        self._seq = max((m.seq for m in found.values() if m is not None), default=0)
        log.info("%s: serving at epoch %d from %s (set version %d)%s", self.status.volume, plan.epoch,
                 ", ".join(members), plan.set_version,
                 f"; left out: {', '.join(plan.stale)}" if plan.stale else "")
        return plan

    async def _open(self, address: str, create: bool = False) -> ReplicaMeta | None:
        client = self._clients.get(address)
        if client is None or not client.connected:
            client = ReplicaClient(address, self._secrets, on_lost=self._begin_eject)
            await client.connect(CONNECT_TIMEOUT)
            self._clients[address] = client
        try:
            answer, _ = await client.call(OP_OPEN, {"volume": self.status.volume, "size": self.status.size,
                                                    "create": create})
        except VolumeError as error:
            if "no replica" in str(error):
                return None
            raise
        meta = answer.get("meta")
        return ReplicaMeta.from_json(meta) if isinstance(meta, dict) else None

    async def _claim(self, address: str, plan: StartPlan) -> bool:
        try:
            async with asyncio.timeout(self._timeout):
                await self._clients[address].call(OP_CLAIM, {
                    "volume": self.status.volume, "epoch": plan.epoch, "members": list(plan.members),
                    "set_version": plan.set_version})
        except (VolumeError, TimeoutError) as error:
            log.warning("%s: claim on %s refused: %s", self.status.volume, address, error)
            return False
        return True

    # Quorum -----------------------------------------------------------------------------------------

    def _check_serving(self) -> None:
        if self.status.fault:
            raise NoQuorum(self.status.fault)

    async def _guard(self, address: str, future: Reply) -> tuple[dict[str, Any], bytes] | None:
        """One replica's answer, or None after ejecting it (failure or timeout)."""
        try:
            async with asyncio.timeout(self._timeout):
                status, answer, data = await future
        except TimeoutError:
            self._begin_eject(address, f"no answer within {self._timeout:g}s")
            return None
        except ReplicaLost as error:
            self._begin_eject(address, str(error))
            return None
        if status == 0:
            return answer, data
        if status == 2:
            self._fence(f"{address} holds a newer epoch: {answer.get('error')}")
        else:
            self._begin_eject(address, str(answer.get("error")))
        return None

    async def _quorum(self, op: int, header: dict[str, Any], data: bytes = b"") -> None:
        """Send to every member; return once a majority of the configured replicas holds it."""
        self._check_serving()
        header = {"volume": self.status.volume, "epoch": self.status.epoch, **header}
        guards = [asyncio.ensure_future(self._guard(a, self._clients[a].send(op, header, data)))
                  for a in self.members]
        ok = failed = 0
        pending = set(guards)
        while pending and ok < self._need and failed <= len(guards) - self._need:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for guard in done:
                if guard.result() is None:
                    failed += 1
                else:
                    ok += 1
        for guard in pending:  # the rest finish (or eject their replica) on their own
            self._background.add(guard)
            guard.add_done_callback(self._background.discard)
        await self._settled.wait()  # a membership change goes first
        self._check_serving()
        if ok < self._need:
            raise NoQuorum(f"{self.status.volume}: {ok} of {len(self.status.configured)} replicas hold it; "
                           f"{self._need} needed")

    def _fence(self, reason: str) -> None:
        if not self.status.fault:
            self.status.fault = f"fenced: {reason}"
            log.error("%s: %s; no more acknowledgements", self.status.volume, self.status.fault)
        for client in self._clients.values():
            client.close("fenced")

    def _begin_eject(self, address: str, reason: str) -> None:
        """Start ejecting `address`; acknowledgements wait until every ejection is done."""
        if address not in self.members or address in self._ejecting or self.status.fault:
            return
        self._ejecting.add(address)
        self._settled.clear()
        task = asyncio.ensure_future(self._eject(address, reason))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _eject(self, address: str, reason: str) -> None:
        async with self._membership:
            try:
                if address not in self.members or self.status.fault:
                    return
                log.warning("%s: ejecting replica %s: %s", self.status.volume, address, reason)
                self.status.io["ejections"] += 1
                self._clients[address].close(f"ejected: {reason}")
                remaining = tuple(a for a in self.members if a != address)
                self.status.members = remaining
                self.status.set_version += 1
                if len(remaining) < self._need:
                    self.status.fault = (f"{len(remaining)} of {len(self.status.configured)} replicas left; "
                                         f"{self._need} needed")
                    log.error("%s: %s", self.status.volume, self.status.fault)
                    return
                header = {"volume": self.status.volume, "epoch": self.status.epoch, "members": list(remaining),
                          "set_version": self.status.set_version}
                results = await asyncio.gather(
                    *(self._members_update(a, header) for a in remaining), return_exceptions=True)
                if sum(1 for r in results if r is True) < self._need:
                    self.status.fault = "the member-set change did not reach a majority"
                    log.error("%s: %s", self.status.volume, self.status.fault)
            finally:
                self._ejecting.discard(address)
                if not self._ejecting:
                    self._settled.set()

    async def _members_update(self, address: str, header: dict[str, Any]) -> bool:
        async with asyncio.timeout(self._timeout):
            await self._clients[address].call(OP_MEMBERS, header)
        return True

    # Block I/O --------------------------------------------------------------------------------------

    async def write(self, offset: int, data: bytes, fua: bool) -> None:
        self._seq += 1
        await self._quorum(OP_WRITE, {"offset": offset, "seq": self._seq, "fua": fua}, data)
        self.status.io["write_ops"] += 1
        self.status.io["write_bytes"] += len(data)

    async def zero(self, offset: int, length: int, fua: bool) -> None:
        self._seq += 1
        await self._quorum(OP_ZERO, {"offset": offset, "length": length, "seq": self._seq})
        if fua:
            await self.flush()

    async def flush(self) -> None:
        await self._quorum(OP_FLUSH, {})
        self.status.io["flushes"] += 1

    async def read(self, offset: int, length: int) -> bytes:
        """From the first member that answers (in configured order: list the local replica first)."""
        self._check_serving()
        header = {"volume": self.status.volume, "epoch": self.status.epoch, "offset": offset, "length": length}
        for address in self.members:
            answer = await self._guard(address, self._clients[address].send(OP_READ, header))
            if answer is not None:
                self.status.io["read_ops"] += 1
                self.status.io["read_bytes"] += length
                return answer[1]
        raise NoQuorum(f"{self.status.volume}: no replica could serve the read")

    async def close(self) -> None:
        """Flush what can be flushed and let go of the replicas."""
        with contextlib.suppress(VolumeError):
            if self.members and not self.status.fault:
                await self.flush()
        for task in list(self._background):
            task.cancel()
        for client in self._clients.values():
            await client.aclose()
