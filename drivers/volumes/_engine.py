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
import functools
import logging
import secrets
import time
from collections import Counter, deque
from collections.abc import AsyncIterator, Callable, Collection, Coroutine
from dataclasses import dataclass, field, replace
from secrets import token_hex
from typing import Any

from drivers.volumes._client import LinkFactory, ReplicaClient, ReplicaLink, ReplicaLost, Reply
from drivers.volumes._dirty_map import BLOCK, REGION, DirtyMap
from drivers.volumes._errors import NoQuorum, VolumeError
from drivers.volumes._quorum import StartPlan, majority, plan_start
from drivers.volumes._store import ReplicaMeta, check_volume_name
from drivers.volumes._wire import (
    OP_ADOPT,
    OP_CLAIM,
    OP_DIGEST,
    OP_EXTENTS,
    OP_FENCE,
    OP_FLUSH,
    OP_MEMBERS,
    OP_OPEN,
    OP_READ,
    OP_WRITE,
    OP_ZERO,
    Secrets,
)

log = logging.getLogger(__name__)

CONNECT_TIMEOUT = 5.0
REPAIR_INTERVAL = 2.0
"""How often replicas outside the member set are tried again (and rebuilt when they answer)."""
DEFAULT_REBUILD_RATE = 200 * 1024 * 1024
REBUILD_PARALLEL = 8


@dataclass(slots=True)
class RebuildProgress:
    total: int
    full: bool
    done: int = 0
    sent: int = 0
    kind: str = ""
    """What is copied; by default "full" or "missed chunks"."""

    def to_json(self) -> dict[str, Any]:
        return {"progress": round(self.done / self.total, 4) if self.total else 1.0, "bytes_sent": self.sent,
                "kind": self.kind or ("full" if self.full else "missed chunks")}


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
    rebuilds: dict[str, RebuildProgress] = field(default_factory=dict)
    rebuilt: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=16))
    """The last rebuilds that completed (replica, bytes sent, when)."""

    def to_json(self) -> dict[str, Any]:
        return {"volume": self.volume, "size": self.size, "epoch": self.epoch, "set_version": self.set_version,
                "configured": list(self.configured), "members": list(self.members), "stale": list(self.stale),
                "state": "faulted" if self.fault else ("healthy" if len(self.members) == len(self.configured)
                                                        else "degraded"),
                "fault": self.fault or None, "io": dict(self.io),
                "rebuilds": {address: r.to_json() for address, r in self.rebuilds.items()},
                "rebuilt": list(self.rebuilt)}


class _Tally:
    """Answers to one request sent to every member: decided once `need` hold it, or once so many
    failed that `need` no longer can."""

    def __init__(self, sent: int, need: int) -> None:
        self.decided: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.ok = self.failed = 0
        self._sent, self._need = sent, need
        if sent < need:
            self.decided.set_result(None)

    def add(self, held: bool) -> None:
        if held:
            self.ok += 1
        else:
            self.failed += 1
        if not self.decided.done() and (self.ok >= self._need or self.failed > self._sent - self._need):
            self.decided.set_result(None)


class Engine:
    def __init__(self, volume: str, size: int, replicas: list[str], secrets: Secrets,
                 replica_timeout: float = 8.0, rebuild_rate: float = DEFAULT_REBUILD_RATE,
                 links: LinkFactory | None = None) -> None:
        if not replicas:
            raise VolumeError("an engine needs at least one --replica")
        if len(set(replicas)) != len(replicas):
            raise VolumeError("each --replica must be a different address")
        self.status = EngineStatus(check_volume_name(volume), size, configured=tuple(replicas))
        self._secrets = secrets
        self._timeout = replica_timeout
        self._clients: dict[str, ReplicaLink] = {}
        self._links: LinkFactory = links or (lambda address, on_lost: ReplicaClient(address, secrets, on_lost))
        self._need = majority(len(replicas))
        self._seq = 0
        self._membership = asyncio.Lock()
        self._settled = asyncio.Event()
        self._settled.set()
        self._background: set[asyncio.Future[Any]] = set()
        self._ejecting: set[str] = set()
        self._write_only: set[str] = set()
        self._missed: dict[str, DirtyMap] = {}
        """Per replica outside the member set: the chunks written without it (known only for
        replicas this engine ejected; others are rebuilt in full, skipping what already matches)."""
        self._rebuilds: dict[str, asyncio.Task[None]] = {}
        self._chunk_locks: dict[int, asyncio.Lock] = {}
        self._volume_id = ""
        self._recovery: asyncio.Task[None] | None = None
        self._session_tasks: list[asyncio.Task[Any]] = []
        """The repair loop, the timeout watchdog and a resync: they end with the session."""
        self._source: str | None = None
        """While members are resynced after an unclean stop: the member reads and copies come from."""
        self.rebuild_rate = rebuild_rate
        self._id = token_hex(8)
        """Written into each replica it fences, so its own fences are never taken for a newer engine's."""
        self.held: frozenset[str] = frozenset()
        """Replicas whose rebuild waits for a free slot (the agent limits rebuilds per node)."""
        self.superseded = asyncio.Event()
        """Set when a newer engine (or a salvage) took the volume: this one will never serve again."""

    @property
    def members(self) -> tuple[str, ...]:
        return self.status.members

    def describe(self) -> dict[str, Any]:
        """The status plus, per replica written to, how many requests it has not answered yet
        (a replica falling behind shows here before its timeout ejects it)."""
        written = [*self.members, *sorted(self._write_only)]
        return {**self.status.to_json(), "held": sorted(self.held),
                "outstanding": {a: self._clients[a].outstanding for a in written if a in self._clients}}

    # Start ------------------------------------------------------------------------------------------

    async def start(self) -> StartPlan:
        """Connect, fence, find where to start from, claim the volume on a majority. NoQuorum if it
        cannot.

        The plan is made from what the replicas answer to the fence, not to the first look: until
        the fence, an older engine may still eject members or acknowledge writes, and a set claimed
        from a stale view could leave out a replica holding them. Once a replica is fenced nothing
        on it changes, so the plan sees exactly what the old engine left behind."""
        return await self._take_over(await self._found())

    async def _take_over(self, found: dict[str, ReplicaMeta | None], served: int | None = None) -> StartPlan:
        """`served`: recovering in place after serving at that epoch (see ReplicaMeta.fence)."""
        configured = self.status.configured
        holding = {a: m for a, m in found.items() if m is not None}
        if holding:
            epoch = max(m.epoch for m in holding.values()) + 1
            if len(holding) < self._need:  # a fence of a minority only strands it above the current engine
                raise NoQuorum(f"{self.status.volume}: {len(holding)} replicas holding it answer; {self._need} "
                               f"needed; unreachable: {', '.join(a for a in configured if a not in found)}")
            answers = await asyncio.gather(*(self._fence_replica(a, epoch, served) for a in holding))
            fenced = {a: m for a, m in zip(holding, answers, strict=True) if m is not None}
            if len(fenced) < self._need:
                raise NoQuorum(f"{self.status.volume}: epoch {epoch} fenced on {len(fenced)} replicas; "
                               f"{self._need} needed")
            # replicas that did not take the fence count as unanswered: their writes may be the newest
            found = {**{a: None for a, m in found.items() if m is None}, **fenced}
            plan = replace(plan_start(configured, found), epoch=epoch)
        else:
            plan = plan_start(configured, found)
        self._volume_id = next((m.volume_id for a, m in found.items() if m is not None and a in plan.members),
                               secrets.token_hex(8))
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
        self.status.fault = ""
        self._resync_if_unclean({a: m for a, m in found.items() if m is not None and a in members})
        self._session_tasks += [self._start_background(self._repair_loop()),
                                self._start_background(self._watch_timeouts())]
        log.info("%s: serving at epoch %d from %s (set version %d)%s", self.status.volume, plan.epoch,
                 ", ".join(members), plan.set_version,
                 f"; left out: {', '.join(plan.stale)}" if plan.stale else "")
        return plan

    def _resync_if_unclean(self, metas: dict[str, ReplicaMeta]) -> None:
        """Members that were not closed cleanly may differ where writes were in flight when the last
        engine stopped (none of them acknowledged to a majority, or they would be on every member
        past the start's threshold, but some landed here and not there). Reads must not depend on
        which member answers: the member holding the most writes becomes the source, reads prefer
        it, and every other member is made equal to it, while the volume serves."""
        if len(metas) < 2 or (all(m.clean for m in metas.values()) and len({m.seq for m in metas.values()}) == 1):
            return
        order = list(self.status.configured)
        source = max(metas, key=lambda a: (metas[a].seq, -order.index(a)))
        self._source = source
        targets = [a for a in self.members if a != source]
        for target in targets:  # until its resync completes, a target that drops out is copied in full
            self._missed[target] = DirtyMap(self.status.size, all_dirty=True)
        log.info("%s: resyncing %s from %s after an unclean stop", self.status.volume, ", ".join(targets), source)
        self._session_tasks.append(self._start_background(self._resync(source, targets)))

    async def _resync(self, source: str, targets: list[str]) -> None:
        try:
            for target in targets:
                if target not in self.members:
                    continue
                everything = DirtyMap(self.status.size, all_dirty=True)
                progress = self.status.rebuilds[target] = RebuildProgress(self.status.size, True, kind="resync")
                try:
                    await self._copy_all(target, everything, progress, full=True, fresh=False,
                                         still_wanted=functools.partial(self._is_member, target))
                except (VolumeError, TimeoutError, ExceptionGroup) as error:
                    log.warning("%s: resync of %s stopped: %s", self.status.volume, target, error)
                    continue
                finally:
                    self.status.rebuilds.pop(target, None)
                self._missed.pop(target, None)
                self.status.io["resyncs"] += 1
                log.info("%s: %s resynced from %s (%d bytes sent)", self.status.volume, target, source, progress.sent)
        finally:
            self._source = None

    def _is_member(self, address: str) -> bool:
        return address in self.members

    def _read_order(self) -> tuple[str, ...]:
        source = self._source
        if source is None or source not in self.members:
            return self.members
        return (source, *(a for a in self.members if a != source))

    async def _fence_replica(self, address: str, epoch: int, served: int | None) -> ReplicaMeta | None:
        """Raise `address` to `epoch`; what it held just before, or None if it refused or failed."""
        header = {"volume": self.status.volume, "epoch": epoch, "engine": self._id}
        try:
            async with asyncio.timeout(self._timeout):
                answer, _ = await self._clients[address].call(
                    OP_FENCE, header if served is None else {**header, "served": served})
            return ReplicaMeta.from_json(answer["meta"])
        except (VolumeError, TimeoutError, KeyError, TypeError) as error:
            log.warning("%s: fence of epoch %d on %s refused: %s", self.status.volume, epoch, address, error)
            return None

    async def _found(self) -> dict[str, ReplicaMeta | None]:
        """Every reachable replica with its metadata (None: it holds no replica of the volume)."""
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
        return found

    async def salvage(self, trusted: str) -> tuple[str, ...]:
        """The operator's way past a lost majority: take `trusted` as the truth, rebuild every other
        reachable replica from it in full, and leave them a member set that an engine starts from.
        Returns the new member set; NoQuorum when fewer than a majority could be made whole."""
        if trusted not in self.status.configured:
            raise VolumeError(f"{trusted} is not one of the --replica addresses")
        found = await self._found()
        base = found.get(trusted)
        if base is None:
            raise VolumeError(f"{trusted} is unreachable or holds no replica of {self.status.volume}")
        known = [m for m in found.values() if m is not None]
        self.status.epoch = max(m.epoch for m in known) + 1
        self.status.set_version = max(m.set_version for m in known) + 1
        self._volume_id, self._seq = base.volume_id, base.seq
        plan = StartPlan((trusted,), (), False, self.status.epoch, self.status.set_version)
        if not await self._claim(trusted, plan):
            raise NoQuorum(f"{trusted} refused epoch {self.status.epoch}")
        self.status.members = (trusted,)
        for address, meta in found.items():
            if address == trusted:
                continue
            if meta is None:
                await self._open(address, create=True)
            self._missed.pop(address, None)
            await self._rebuild(address, None)  # in full: every chunk that differs from the trusted one
        if len(self.members) < self._need:
            raise NoQuorum(f"{self.status.volume}: only {', '.join(self.members)} could be made whole from "
                           f"{trusted}; {self._need} replicas needed")
        return self.members

    async def _open(self, address: str, create: bool = False) -> ReplicaMeta | None:
        client = self._clients.get(address)
        if client is None or not client.connected:
            client = self._links(address, self._begin_eject)
            await client.connect(CONNECT_TIMEOUT)
            self._clients[address] = client
        try:
            answer, _ = await client.call(OP_OPEN, {"volume": self.status.volume, "size": self.status.size,
                                                    "create": create, "volume_id": self._volume_id})
        except VolumeError as error:
            if "no replica" in str(error):
                return None
            raise
        meta = answer.get("meta")
        if not isinstance(meta, dict):
            return None
        client.attach_local(self.status.volume, answer.get("local"))
        opened = ReplicaMeta.from_json(meta)
        applied = answer.get("applied")
        # A running replica may hold writes not yet made durable: its rank counts them.
        return replace(opened, seq=max(opened.seq, applied)) if isinstance(applied, int) else opened

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

    def _judge(self, address: str, future: Reply,
               span: tuple[int, int] | None = None) -> tuple[dict[str, Any], bytes] | None:
        """A finished request's answer, or None after ejecting its replica (or fencing this
        engine); a write the replica did not take is remembered for its catch-up."""
        error = ReplicaLost(f"{address}: request cancelled") if future.cancelled() else future.exception()
        if error is not None:
            reason = str(error)
        else:
            status, answer, data = future.result()
            if status == 0:
                return answer, data
            if status == 2:
                self._fence(f"{address} holds a newer epoch: {answer.get('error')}")
                return None
            reason = str(answer.get("error"))
        self._missed_by(address, span)
        self._begin_eject(address, reason)
        return None

    async def _guard(self, address: str, future: Reply,
                     span: tuple[int, int] | None = None) -> tuple[dict[str, Any], bytes] | None:
        """One replica's answer, or None after ejecting it. A request never waits longer than the
        replica timeout: the watchdog ejects a replica that leaves one unanswered, which fails
        every request still waiting on it."""
        with contextlib.suppress(ReplicaLost):
            await future
        return self._judge(address, future, span)

    async def _watch_timeouts(self) -> None:
        """Eject a replica whose oldest unanswered request is older than the replica timeout.
        One sweep for every request, instead of a timer per request and replica."""
        step = self._timeout / 8
        loop = asyncio.get_running_loop()
        while not self.status.fault:
            await asyncio.sleep(step)
            now = loop.time()
            for address in (*self.members, *self._write_only):
                since = self._clients[address].oldest_unanswered
                if since is not None and now - since > self._timeout:
                    self._begin_eject(address, f"no answer within {self._timeout:g}s")

    def _start_background(self, coroutine: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task = asyncio.create_task(coroutine)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    def _missed_by(self, address: str, span: tuple[int, int] | None) -> None:
        """`address` did not get a write to `span`: remember it for its catch-up."""
        if span is not None:
            self._missed.setdefault(address, DirtyMap(self.status.size)).mark(*span)

    @contextlib.asynccontextmanager
    async def _chunks_locked(self, span: tuple[int, int] | None) -> AsyncIterator[None]:
        """While a rebuild runs, a write waits for the chunks it touches to be out of its copy."""
        if span is None or not self.status.rebuilds or span[1] <= 0:
            yield
            return
        first, last = span[0] // REGION, (span[0] + span[1] - 1) // REGION
        locks = [self._chunk_locks.setdefault(c, asyncio.Lock()) for c in range(first, last + 1)]
        async with contextlib.AsyncExitStack() as stack:
            for lock in locks:
                await stack.enter_async_context(lock)
            yield

    async def _quorum(self, op: int, header: dict[str, Any], data: bytes = b"",
                      span: tuple[int, int] | None = None) -> None:
        """Send to every member (and to replicas being rebuilt); return once a majority of the
        configured replicas holds it. `span`: the range a write changes."""
        self._check_serving()
        header = {"volume": self.status.volume, "epoch": self.status.epoch, **header}
        async with self._chunks_locked(span):
            for address in self.status.configured:
                if address not in self.members and address not in self._write_only:
                    self._missed_by(address, span)
            replies = [(a, self._clients[a].send(op, header, data)) for a in self.members]
            # A replica being rebuilt gets the write but not its sequence number: until its rebuild
            # completes, its sequence must not claim writes it does not hold yet.
            partial = {**header, "seq": 0} if "seq" in header else header
            for address in list(self._write_only):
                self._start_background(self._guard(address, self._clients[address].send(op, partial, data), span))
        tally = _Tally(len(replies), self._need)
        for address, reply in replies:
            reply.add_done_callback(functools.partial(self._count, tally, address, span))
        await tally.decided
        await self._settled.wait()  # a membership change goes first
        self._check_serving()
        if tally.ok < self._need:
            raise NoQuorum(f"{self.status.volume}: {tally.ok} of {len(self.status.configured)} replicas hold it; "
                           f"{self._need} needed")

    def _count(self, tally: _Tally, address: str, span: tuple[int, int] | None, reply: Reply) -> None:
        tally.add(self._judge(address, reply, span) is not None)

    def _fence(self, reason: str) -> None:
        self._fault(f"fenced: {reason}", recoverable=False)
        self.superseded.set()

    def _fault(self, reason: str, recoverable: bool = True) -> None:
        """Stop serving: nothing more is acknowledged, and every request still waiting on a replica
        fails now rather than at some later timeout. Unless another engine took over, the engine
        keeps trying to serve again in place (see `_recover`)."""
        if not self.status.fault:
            self.status.fault = reason
            log.error("%s: %s; no more acknowledgements", self.status.volume, reason)
        for client in self._clients.values():
            client.close(reason)
        if recoverable and not reason.startswith("fenced") and (self._recovery is None or self._recovery.done()):
            self._recovery = self._start_background(self._recover())
        elif not recoverable and self._recovery is not None:
            self._recovery.cancel()

    async def _recover(self) -> None:
        """Faulted without a newer engine in sight (a partition, replicas down): every few seconds,
        start again in place, on the same NBD socket, so clients see I/O errors while it lasts and
        nothing more. An engine that finds a newer epoch on any replica gives up for good: another
        engine took the volume, and this one must never fence it back."""
        served = self.status.epoch
        while True:
            await asyncio.sleep(REPAIR_INTERVAL)
            self._drop_session()
            try:
                found = await self._found()
                # epochs this engine fenced itself in earlier attempts are its own, not a newer engine's
                newest = max((m.epoch for m in found.values() if m is not None and m.fenced_by != self._id),
                             default=0)
                if newest > served:
                    self.status.fault = f"fenced: a newer engine took the volume at epoch {newest}"
                    log.error("%s: %s; not recovering", self.status.volume, self.status.fault)
                    self.superseded.set()
                    return
                await self._take_over(found, served)
            except VolumeError as error:
                log.info("%s: still cannot serve: %s", self.status.volume, error)
                continue
            self.status.io["recoveries"] += 1
            log.warning("%s: serving again after the fault", self.status.volume)
            return

    def _drop_session(self) -> None:
        """Forget the faulted session: connections, rebuilds, what ejected replicas missed (the next
        take-over rebuilds whatever it leaves out in full)."""
        for task in [*self._rebuilds.values(), *self._session_tasks]:
            task.cancel()
        self._rebuilds.clear()
        self._session_tasks.clear()
        for client in self._clients.values():
            client.close("the engine starts again")
        self._clients.clear()
        self._write_only.clear()
        self._missed.clear()
        self._ejecting.clear()
        self._settled.set()
        self._source = None
        self.status.rebuilds.clear()

    def _begin_eject(self, address: str, reason: str) -> None:
        """Start ejecting `address`; acknowledgements wait until every ejection is done."""
        if address in self._write_only:
            self._write_only.discard(address)
            log.warning("%s: replica %s dropped out of its rebuild: %s", self.status.volume, address, reason)
            self._clients[address].close(f"rebuild failed: {reason}")
            return
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
                    self._fault(f"{len(remaining)} of {len(self.status.configured)} replicas left; "
                                f"{self._need} needed")
                    return
                header = {"volume": self.status.volume, "epoch": self.status.epoch, "members": list(remaining),
                          "set_version": self.status.set_version}
                results = await asyncio.gather(
                    *(self._members_update(a, header) for a in remaining), return_exceptions=True)
                if sum(1 for r in results if r is True) < self._need:
                    self._fault("the member-set change did not reach a majority")
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
        await self._quorum(OP_WRITE, {"offset": offset, "seq": self._seq, "fua": fua}, data, (offset, len(data)))
        self.status.io["write_ops"] += 1
        self.status.io["write_bytes"] += len(data)

    async def zero(self, offset: int, length: int, fua: bool) -> None:
        self._seq += 1
        await self._quorum(OP_ZERO, {"offset": offset, "length": length, "seq": self._seq}, span=(offset, length))
        if fua:
            await self.flush()

    async def flush(self) -> None:
        await self._quorum(OP_FLUSH, {})
        self.status.io["flushes"] += 1

    def read_at_once(self, offset: int, length: int) -> bytes | None:
        """The read served without waiting, when the first member is on this host and can (see
        _local_view); None: use `read`."""
        order = self._read_order()
        if self.status.fault or not order:
            return None
        data = self._clients[order[0]].read_locally(offset, length, self.status.epoch)
        if data is not None:
            self.status.io["local_reads"] += 1
            self._count_read(length)
        return data

    def _count_read(self, length: int) -> None:
        self.status.io["read_ops"] += 1
        self.status.io["read_bytes"] += length

    async def read(self, offset: int, length: int) -> bytes:
        """From the first member that answers (in configured order: list the local replica first)."""
        self._check_serving()
        data = self.read_at_once(offset, length)
        if data is not None:
            return data
        header = {"volume": self.status.volume, "epoch": self.status.epoch, "offset": offset, "length": length}
        for address in self._read_order():
            answer = await self._guard(address, self._clients[address].send(OP_READ, header))
            if answer is not None:
                self._count_read(length)
                return answer[1]
        raise NoQuorum(f"{self.status.volume}: no replica could serve the read")

    async def close(self) -> None:
        """Flush what can be flushed, marking the replicas clean, and let go of them."""
        with contextlib.suppress(VolumeError):
            if self.members and not self.status.fault:
                await self._quorum(OP_FLUSH, {"clean": True})
        for task in [*self._background, *self._rebuilds.values()]:
            task.cancel()
        for client in self._clients.values():
            await client.aclose()

    # Repair -----------------------------------------------------------------------------------------

    def reconfigure(self, replicas: list[str], held: Collection[str] = ()) -> None:
        """Serve on another list of replica servers without stopping (a lost replica replaced by a
        new one): added ones are rebuilt by the repair loop and join the member set when whole;
        members no longer listed are ejected (the member-set version is raised on the rest), and
        rebuilds of the others stop. The majority is counted on the new list from now on.
        `held`: replicas whose rebuild must wait (they count for the majority all the same)."""
        if not replicas or len(set(replicas)) != len(replicas):
            raise VolumeError("the new replica list must name at least one replica, each once")
        new = tuple(replicas)
        removed = [a for a in self.status.configured if a not in new]
        self.held = frozenset(held) & set(new)
        if new == self.status.configured:
            return
        log.info("%s: replicas now %s (%s no longer)", self.status.volume, ", ".join(new),
                 ", ".join(removed) or "none")
        self.status.configured = new
        self._need = majority(len(new))
        for address in removed:
            self._missed.pop(address, None)
            rebuild = self._rebuilds.pop(address, None)
            if rebuild is not None:
                rebuild.cancel()
            if address in self.members:
                self._begin_eject(address, "no longer one of the volume's replicas")
            else:
                self._write_only.discard(address)
                client = self._clients.pop(address, None)
                if client is not None:
                    client.close("no longer one of the volume's replicas")

    async def _repair_loop(self) -> None:
        """Replicas outside the member set are tried again; one that answers is rebuilt online."""
        while not self.status.fault:
            await asyncio.sleep(REPAIR_INTERVAL)
            for address in self.status.configured:
                if address in self.members or address in self._rebuilds or address in self._ejecting \
                        or address in self.held:
                    continue
                try:
                    meta = await self._open(address)
                    if meta is None:
                        meta = await self._open(address, create=True)
                except VolumeError as error:
                    log.debug("%s: replica %s still unavailable: %s", self.status.volume, address, error)
                    continue
                task = asyncio.create_task(self._rebuild(address, meta))
                self._rebuilds[address] = task
                task.add_done_callback(functools.partial(self._rebuild_done, address))

    def _rebuild_done(self, address: str, task: asyncio.Task[None]) -> None:
        self._rebuilds.pop(address, None)

    async def _rebuild(self, address: str, meta: ReplicaMeta | None) -> None:
        """Bring `address` up to date while the volume serves, then make it a member again."""
        missed = self._missed.get(address)
        # Only a replica that was a member under this engine (its set written at this epoch) can
        # catch up from the map of what it missed; any other, even one this engine fenced, is
        # copied in full. One never claimed (epoch 0) was never written.
        fresh = meta is None or meta.epoch == 0
        full = (missed is None or meta is None or meta.volume_id != self._volume_id
                or meta.set_epoch != self.status.epoch)
        if full:
            missed = self._missed[address] = DirtyMap(self.status.size, all_dirty=True)
        assert missed is not None
        progress = self.status.rebuilds[address] = RebuildProgress(missed.count() * BLOCK, full)
        client = self._clients[address]
        log.info("%s: rebuilding %s (%s, %d blocks)", self.status.volume, address,
                 "full copy" if full else "the blocks it missed", missed.count())
        try:
            await client.call(OP_ADOPT, {"volume": self.status.volume, "epoch": self.status.epoch})
            self._write_only.add(address)
            await self._copy_all(address, missed, progress, full=full, fresh=fresh,
                                 still_wanted=lambda: address in self._write_only)
            self.status.io["rebuilds"] += 1
            await self._promote(address)
            log.info("%s: %s rebuilt (%d bytes sent) and back in the member set", self.status.volume, address,
                     progress.sent)
            self.status.rebuilt.append({**progress.to_json(), "replica": address, "at": round(time.time(), 3)})
        except (VolumeError, TimeoutError, ExceptionGroup) as error:
            log.warning("%s: rebuild of %s stopped: %s", self.status.volume, address, error)
            self._write_only.discard(address)
            client.close("rebuild stopped")
        finally:
            self.status.rebuilds.pop(address, None)

    async def _copy_all(self, address: str, missed: DirtyMap, progress: RebuildProgress, *, full: bool, fresh: bool,
                        still_wanted: Callable[[], bool]) -> None:
        """Copy every dirty region to `address`, several at a time, at most at the rebuild rate."""
        limit = asyncio.Semaphore(REBUILD_PARALLEL)
        started = asyncio.get_running_loop().time()

        async def copy(region: int) -> None:
            async with limit:
                if not still_wanted():
                    raise ReplicaLost(f"{address}: dropped out during its copy")
                moved, covered = await self._copy_region(address, region, missed, full, fresh)
                progress.done += covered
                progress.sent += moved
                wait = started + progress.sent / self.rebuild_rate - asyncio.get_running_loop().time()
                if wait > 0:
                    await asyncio.sleep(wait)

        try:
            async with asyncio.TaskGroup() as copies:
                for region in list(missed.dirty_regions()):
                    copies.create_task(copy(region))
        finally:
            self.status.io["rebuild_bytes"] += progress.sent
            self.status.io["rebuild_ms"] += round((asyncio.get_running_loop().time() - started) * 1000)

    async def _copy_region(self, address: str, region: int, missed: DirtyMap, full: bool,
                           fresh: bool) -> tuple[int, int]:
        """Copy the dirty runs of one region from a member to `address`; returns (bytes sent,
        bytes covered). Writes to the region wait meanwhile. In a full rebuild only the data extents
        of the source move (holes are zeroed there, or left alone on a fresh replica, never read),
        and an existing replica's ranges whose SHA-256 already matches are skipped."""
        async with self._chunks_locked(missed.region_span(region)):
            source = self._clients[self._read_order()[0]]
            target = self._clients[address]
            base = {"volume": self.status.volume, "epoch": self.status.epoch}
            sent = covered = 0
            async with asyncio.timeout(self._timeout):
                for offset, length in missed.runs(region):
                    covered += length
                    where = {**base, "offset": offset, "length": length}
                    pieces = [(offset, length)]
                    if full:
                        answer, _ = await source.call(OP_EXTENTS, where)
                        pieces = [(int(o), int(n)) for o, n in answer.get("extents", [])]
                        if not fresh:
                            if not pieces:
                                await target.call(OP_ZERO, {**where, "seq": 0})
                                continue
                            if (await source.call(OP_DIGEST, where))[1] == (await target.call(OP_DIGEST, where))[1]:
                                continue
                            pieces = [(offset, length)]  # holes inside it may hold stale data there
                    for piece_offset, piece_length in pieces:
                        piece = {**base, "offset": piece_offset, "length": piece_length}
                        _, data = await source.call(OP_READ, piece)
                        # seq 0: a copy must not make a half-rebuilt replica look up to date
                        await target.call(OP_WRITE, {**piece, "seq": 0, "fua": False}, data)
                        sent += len(data)
            missed.clear_region(region)
            return sent, covered

    async def _promote(self, address: str) -> None:
        """A rebuilt replica joins the member set: the new set and its version go to every member."""
        async with self._membership:
            self._check_serving()
            await self._clients[address].call(OP_FLUSH, {"volume": self.status.volume, "epoch": self.status.epoch})
            members = tuple(a for a in self.status.configured if a in self.members or a == address)
            version = self.status.set_version + 1
            header = {"volume": self.status.volume, "epoch": self.status.epoch, "members": list(members),
                      "set_version": version}
            # The rebuilt replica holds every write so far: its sequence says so from now on.
            results = await asyncio.gather(
                *(self._members_update(a, {**header, "seq": self._seq} if a == address else header) for a in members),
                return_exceptions=True)
            if sum(1 for r in results if r is True) < self._need:
                raise NoQuorum(f"{address}: the new member set did not reach a majority")
            self.status.members, self.status.set_version = members, version
            self.status.stale = tuple(a for a in self.status.stale if a != address)
            self._write_only.discard(address)
            self._missed.pop(address, None)
