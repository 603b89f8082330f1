"""A Jepsen-style checker for the volume data path, in virtual time: the real engine against
simulated replica nodes, under random kills, stalls and partitions, with engines replaced as a
cluster would replace them (the old one is not told and keeps trying: a zombie).

Every write is FUA (durable before it is acknowledged) and carries a unique value. The first
replica is on the engine's host, so reads come from its blocks directly whenever they may (see
drivers/volumes/_local_view.py). Checked:
- no engine acknowledges a write issued after a newer engine finished claiming the volume;
- every acknowledged write is held, at the moment of its acknowledgement, by a majority;
- a read, during the run and after everything healed, returns for its block the last acknowledged
  value or the value of a write issued after it that failed (it may or may not have landed).
"""

from __future__ import annotations

import asyncio
import os
import random
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any

import pytest

from drivers.volumes._client import ReplicaLink
from drivers.volumes._engine import Engine
from drivers.volumes._errors import VolumeError
from drivers.volumes._simulation import MemoryLink, SimReplica, VirtualTimeLoop
from drivers.volumes._wire import Secrets

BLOCK = 4096
BLOCKS = 16
SIZE = BLOCK * BLOCKS
SECRETS = Secrets("sim", ())


@dataclass
class History:
    acked: dict[int, list[tuple[int, float]]] = field(default_factory=dict)
    """block -> (value, time issued) of each acknowledged write, in order."""
    failed: dict[int, list[tuple[int, float]]] = field(default_factory=dict)
    local_reads: int = 0
    claims: list[tuple[int, float]] = field(default_factory=list)
    """(engine number, time its claim completed)."""
    violations: list[str] = field(default_factory=list)


def payload(value: int) -> bytes:
    return value.to_bytes(8, "big") * (BLOCK // 8)


class Cluster:
    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.replicas = {f"r{i}:1": SimReplica(f"r{i}:1", local=i == 0) for i in range(3)}
        self.engines: list[Engine] = []
        self.history = History()
        self.values = iter(range(1, 10**9))
        self.busy: set[int] = set()

    def link(self, address: str, on_lost: object) -> ReplicaLink:
        return MemoryLink(self.replicas[address], on_lost)  # type: ignore[arg-type]

    async def new_engine(self) -> Engine | None:
        engine = Engine("vol", SIZE, list(self.replicas), SECRETS, replica_timeout=2.0, links=self.link)
        try:
            await engine.start()
        except VolumeError:
            await engine.close()
            return None
        self.engines.append(engine)
        self.history.claims.append((len(self.engines) - 1, asyncio.get_running_loop().time()))
        return engine

    def holders(self, block: int, value: int) -> int:
        data = payload(value)
        count = 0
        for replica in self.replicas.values():
            backing = replica.store.backings.get("vol")
            if backing is not None and bytes(backing.data[block * BLOCK:(block + 1) * BLOCK]) == data:
                count += 1
        return count

    def allowed(self, block: int) -> set[int]:
        """What a read of `block` (no write to it in flight) may return: the last acknowledged
        value, or that of a write issued after it (failed writes may or may not have landed)."""
        acked = self.history.acked.get(block, [])
        value, issued = acked[-1] if acked else (0, -1.0)
        later = [*acked, *self.history.failed.get(block, [])]
        return {value} | {v for v, at in later if at >= issued}

    def _free_block(self) -> int | None:
        free = [b for b in range(BLOCKS) if b not in self.busy]
        return self.rng.choice(free) if free else None

    async def read(self) -> None:
        block = self._free_block()
        if block is None:
            return
        self.busy.add(block)
        try:
            data = await self.engines[-1].read(block * BLOCK, BLOCK)
        except VolumeError:
            return
        finally:
            self.busy.discard(block)
        value = int.from_bytes(data[:8], "big")
        if value not in self.allowed(block):
            self.history.violations.append(f"a read of block {block} returned {value}; allowed "
                                           f"{sorted(self.allowed(block))}")

    async def write(self, engine_index: int) -> None:
        block = self._free_block()
        if block is None:
            return
        value = next(self.values)
        self.busy.add(block)
        issued = asyncio.get_running_loop().time()
        engine = self.engines[engine_index]
        try:
            await engine.write(block * BLOCK, payload(value), fua=True)
        except VolumeError:
            self.history.failed.setdefault(block, []).append((value, issued))
            return
        finally:
            self.busy.discard(block)
        self.history.acked.setdefault(block, []).append((value, issued))
        if self.holders(block, value) < 2:
            self.history.violations.append(f"block {block} value {value} acknowledged by engine {engine_index} "
                                           f"while {self.holders(block, value)} replicas hold it")
        newer = [t for i, t in self.history.claims if i > engine_index and t <= issued]
        if newer:
            self.history.violations.append(f"engine {engine_index} acknowledged a write issued after engine "
                                           f"{len(self.history.claims) - 1} claimed the volume")


async def fault(cluster: Cluster) -> None:
    rng = cluster.rng
    replica = rng.choice(list(cluster.replicas.values()))
    kind = rng.choice(["kill", "stall", "partition", "partition"])
    duration = rng.uniform(0.5, 6.0)
    loop = asyncio.get_running_loop()
    if kind == "kill" and replica.running:
        replica.kill()
        await asyncio.sleep(duration)
        replica.restart()
    elif kind == "stall":
        replica.stalled_until = loop.time() + duration
        await asyncio.sleep(duration)
    elif kind == "partition":
        replica.partition()
        await asyncio.sleep(duration)
        replica.heal()


async def scenario(seed: int) -> History:
    rng = random.Random(seed)
    cluster = Cluster(rng)
    assert await cluster.new_engine() is not None
    tasks: set[asyncio.Task[None]] = set()
    loop = asyncio.get_running_loop()
    end = loop.time() + 120
    while loop.time() < end:
        await asyncio.sleep(rng.expovariate(20))
        roll = rng.random()
        current = len(cluster.engines) - 1
        if roll < 0.8:
            # mostly the current engine; now and then a zombie still tries
            target = current if rng.random() < 0.9 or current == 0 else rng.randrange(current)
            task = asyncio.create_task(cluster.write(target))
        elif roll < 0.97:
            task = asyncio.create_task(cluster.read())
        elif roll < 0.99:
            task = asyncio.create_task(fault(cluster))
        else:
            if not cluster.engines[current].status.fault and rng.random() < 0.7:
                continue
            task = asyncio.create_task(_replace_engine(cluster))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    try:
        async with asyncio.timeout(60):  # virtual seconds: every write ends, by an ack or an error
            await asyncio.gather(*tasks, return_exceptions=True)
    except TimeoutError:
        cluster.history.violations.append(f"{len(tasks)} writes or faults never finished")
        return cluster.history
    for replica in cluster.replicas.values():
        replica.heal()
        replica.stalled_until = 0.0
        if not replica.running:
            replica.restart()
    await asyncio.sleep(10)
    cluster.history.local_reads = sum(e.status.io["local_reads"] for e in cluster.engines)
    for engine in cluster.engines:
        await engine.close()
    final = await cluster.new_engine()
    if final is None:
        cluster.history.violations.append("after everything healed, no engine could start")
        return cluster.history
    for block in range(BLOCKS):
        data = await final.read(block * BLOCK, BLOCK)
        value = int.from_bytes(data[:8], "big")
        if value not in cluster.allowed(block):
            cluster.history.violations.append(f"after the heal block {block} reads {value}; allowed "
                                              f"{sorted(cluster.allowed(block))}")
    await asyncio.sleep(10)  # the final engine rebuilds what it left out
    images = {a: bytes(r.store.backings["vol"].data) for a, r in cluster.replicas.items() if a in final.members}
    if len(images) != len(cluster.replicas) or len(set(images.values())) != 1:
        differing = [b for b in range(BLOCKS) if len({i[b * BLOCK:(b + 1) * BLOCK] for i in images.values()}) > 1]
        cluster.history.violations.append(f"after the heal the members {sorted(images)} differ in blocks {differing}")
    await final.close()
    return cluster.history


async def _replace_engine(cluster: Cluster) -> None:
    await cluster.new_engine()


async def bounded(run: Coroutine[Any, Any, History]) -> History:
    """A scenario that does not end within 10 virtual minutes is itself a finding: something waits
    forever (a write, an ejection, a close)."""
    try:
        async with asyncio.timeout(600):
            return await run
    except TimeoutError:
        return History(violations=["the scenario did not finish within 10 virtual minutes"])


@pytest.mark.parametrize("seed", range(int(os.environ.get("NODEORCH_CHECKER_SEEDS", "12"))))
def test_no_acknowledged_write_is_lost_and_no_stale_engine_acknowledges(seed: int) -> None:
    loop = VirtualTimeLoop()
    try:
        history = loop.run_until_complete(bounded(scenario(seed)))
    finally:
        loop.close()
    acked = sum(len(v) for v in history.acked.values())
    assert acked > 50, f"the schedule acknowledged only {acked} writes: it tests little"
    assert history.local_reads > 0, "no read came from the local replica directly: the schedule tests them not"
    assert not history.violations, "\n".join(history.violations[:10])
