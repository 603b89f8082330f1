"""The member table and its incarnation rules (pure).

Each member has an incarnation number that only its owner raises. A message about a member is
applied only if it is at least as new as what we know, with these precedences at equal incarnation:
alive < suspect < dead/left. A member refutes a suspicion or a death of itself by raising its
incarnation above the accusation. A name claimed from a new address is refused while the known
holder may still be alive; it may be reclaimed once that holder left, or has been dead for
`reclaim_time`, so a host that rebooted with a new address rejoins under its own name.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from gossip._messages import Address, Alive, Dead, MemberRecord, MemberState, Suspect


@dataclass(frozen=True, slots=True)
class Member:
    """A snapshot of one member as this node sees it."""

    name: str
    addr: Address
    meta: bytes
    incarnation: int
    state: MemberState
    state_since: float
    """When this node saw the current state begin (the clock of whoever built the snapshot)."""


class Outcome(enum.Enum):
    """What applying a message did; the protocol core turns it into events and broadcasts."""

    IGNORED = "ignored"
    JOINED = "joined"
    """A new member, or a dead or left one back (possibly at a new address)."""
    UPDATED = "updated"
    """Metadata or address changed."""
    ALIVE_AGAIN = "alive_again"
    """A suspected member refuted."""
    SUSPECTED = "suspected"
    CONFIRMED = "confirmed"
    """Another accusation of a member already suspected."""
    DIED = "died"
    LEFT = "left"
    REFUTE = "refute"
    """The message accuses this node; it must raise its incarnation."""
    CONFLICT = "conflict"
    """Another address claims the name of a live member; refused."""


class _Entry:
    __slots__ = ("addr", "incarnation", "meta", "name", "state", "state_since")

    def __init__(
        self, name: str, addr: Address, meta: bytes, incarnation: int, state: MemberState, since: float
    ) -> None:
        self.name = name
        self.addr = addr
        self.meta = meta
        self.incarnation = incarnation
        self.state = state
        self.state_since = since

    def snapshot(self, clock_offset: float = 0.0) -> Member:
        return Member(
            self.name, self.addr, self.meta, self.incarnation, self.state, self.state_since + clock_offset
        )

    def record(self) -> MemberRecord:
        return MemberRecord(self.name, self.addr, self.meta, self.incarnation, self.state)


class MemberTable:
    def __init__(self, local: str, addr: Address, meta: bytes, now: float, reclaim_time: float) -> None:
        self.local = local
        self._reclaim_time = reclaim_time
        self._entries: dict[str, _Entry] = {local: _Entry(local, addr, meta, 0, MemberState.ALIVE, now)}
        self._shared: dict[str, _Entry] = {}
        """Entries read through until this table changes them (copy on write); see share()."""
        self._removed: set[str] = set()
        self._count = 1
        self._merged: list[_Entry] | None = None
        self.leaving = False

    def share(self, base: dict[str, _Entry]) -> None:
        """Start from `base`, an already-joined view shared by many tables and never changed by
        them: a simulation of thousands of members then holds one table, not one per member."""
        self._shared = base
        self._merged = None
        self._removed.clear()
        self._count = len(base) + sum(1 for name in self._entries if name not in base)

    # Reading -------------------------------------------------------------------------------------

    def __len__(self) -> int:
        return self._count

    def __contains__(self, name: object) -> bool:
        return name in self._entries or (name in self._shared and name not in self._removed)

    def get(self, name: str) -> _Entry | None:
        entry = self._entries.get(name)
        if entry is None and name not in self._removed:
            entry = self._shared.get(name)
        return entry

    def _writable(self, name: str) -> _Entry:
        """The entry of `name` (which exists), as this table's own copy, to change."""
        entry = self._entries.get(name)
        if entry is None:
            base = self._shared[name]
            entry = self._entries[name] = _Entry(base.name, base.addr, base.meta, base.incarnation, base.state,
                                                 base.state_since)
            self._merged = None
        return entry

    @property
    def me(self) -> _Entry:
        return self._entries[self.local]

    def entries(self) -> list[_Entry]:
        """Every entry; with a shared view, one list kept until the table changes (do not modify it)."""
        if not self._shared:
            return list(self._entries.values())
        if self._merged is None:
            own, removed = self._entries, self._removed
            merged = [own.get(name, entry) for name, entry in self._shared.items()
                      if name in own or name not in removed]
            self._merged = merged + [entry for name, entry in own.items() if name not in self._shared]
        return self._merged

    def names(self) -> list[str]:
        return [entry.name for entry in self.entries()]

    def records(self) -> list[MemberRecord]:
        return [e.record() for e in self.entries()]

    def count(self, state: MemberState) -> int:
        return sum(1 for e in self.entries() if e.state is state)

    # Rules ---------------------------------------------------------------------------------------

    def holds(self, record: MemberRecord) -> bool:
        """Whether an alive record tells nothing apply_alive would act on: the member is alive
        here at the same address, with a newer incarnation or the same one and metadata (most of
        a push-pull, which repeats the whole cluster)."""
        entry = self.get(record.name)
        return (entry is not None and entry.state is MemberState.ALIVE and entry.addr == record.addr
                and (entry.incarnation > record.incarnation
                     or (entry.incarnation == record.incarnation and entry.meta == record.meta)))

    def apply_alive(self, message: Alive, now: float) -> set[Outcome]:
        entry = self.get(message.node)
        if message.node == self.local:
            me = self.me
            same = message.meta == me.meta and message.addr == me.addr
            if message.incarnation < me.incarnation or (message.incarnation == me.incarnation and same):
                return {Outcome.IGNORED}
            # Someone announces a different or newer version of us: an older life of this node,
            # or another host using our name. Either way, our own word must win.
            return {Outcome.REFUTE}
        if entry is None:
            self._entries[message.node] = _Entry(
                message.node, message.addr, message.meta, message.incarnation, MemberState.ALIVE, now
            )
            self._count += 1
            self._merged = None
            return {Outcome.JOINED}
        reclaimed = False
        if message.addr != entry.addr:
            reclaimable = entry.state is MemberState.LEFT or (
                entry.state is MemberState.DEAD and now - entry.state_since >= self._reclaim_time
            )
            if not reclaimable:
                return {Outcome.CONFLICT}
            reclaimed = True
        if message.incarnation <= entry.incarnation and not reclaimed:
            return {Outcome.IGNORED}
        outcomes: set[Outcome] = set()
        if message.meta != entry.meta or message.addr != entry.addr:
            outcomes.add(Outcome.UPDATED)
        entry = self._writable(message.node)
        previous = entry.state
        entry.incarnation = message.incarnation
        entry.meta = message.meta
        entry.addr = message.addr
        if previous is not MemberState.ALIVE:
            entry.state = MemberState.ALIVE
            entry.state_since = now
            outcomes.discard(Outcome.UPDATED)
            outcomes.add(Outcome.ALIVE_AGAIN if previous is MemberState.SUSPECT else Outcome.JOINED)
        return outcomes or {Outcome.IGNORED}

    def apply_suspect(self, message: Suspect, now: float) -> Outcome:
        entry = self.get(message.node)
        if entry is None or message.incarnation < entry.incarnation:
            return Outcome.IGNORED
        if entry.state in (MemberState.DEAD, MemberState.LEFT):
            return Outcome.IGNORED
        if message.node == self.local:
            return Outcome.IGNORED if self.leaving else Outcome.REFUTE
        if entry.state is MemberState.SUSPECT:
            return Outcome.CONFIRMED
        entry = self._writable(message.node)
        entry.incarnation = message.incarnation
        entry.state = MemberState.SUSPECT
        entry.state_since = now
        return Outcome.SUSPECTED

    def apply_dead(self, message: Dead, now: float) -> Outcome:
        entry = self.get(message.node)
        if entry is None or message.incarnation < entry.incarnation:
            return Outcome.IGNORED
        if entry.state is MemberState.LEFT:
            return Outcome.IGNORED
        if entry.state is MemberState.DEAD and not message.is_leave:
            return Outcome.IGNORED
        if message.node == self.local and not self.leaving:
            return Outcome.REFUTE
        entry = self._writable(message.node)
        entry.incarnation = message.incarnation
        entry.state = MemberState.LEFT if message.is_leave else MemberState.DEAD
        entry.state_since = now
        return Outcome.LEFT if message.is_leave else Outcome.DIED

    # Changes of the local node -------------------------------------------------------------------

    def refute(self, accused_incarnation: int) -> int:
        """Raise our incarnation above an accusation; returns the new incarnation."""
        me = self.me
        me.incarnation = max(me.incarnation, accused_incarnation) + 1
        return me.incarnation

    def set_local_meta(self, meta: bytes) -> int:
        me = self.me
        me.meta = meta
        me.incarnation += 1
        return me.incarnation

    def mark_local_left(self, now: float) -> None:
        self.leaving = True
        me = self.me
        me.state = MemberState.LEFT
        me.state_since = now

    def alive_message(self) -> Alive:
        me = self.me
        return Alive(me.incarnation, me.name, me.addr, me.meta)

    # Housekeeping --------------------------------------------------------------------------------

    def reap(self, now: float, tombstone_timeout: float) -> list[_Entry]:
        """Remove dead and left members older than the tombstone timeout."""
        gone = [
            e
            for e in self.entries()
            if e.name != self.local
            and e.state in (MemberState.DEAD, MemberState.LEFT)
            and now - e.state_since >= tombstone_timeout
        ]
        for entry in gone:
            self._merged = None
            self._entries.pop(entry.name, None)
            if entry.name in self._shared:
                self._removed.add(entry.name)
            self._count -= 1
        return gone
