"""A new engine starting while the old one is still at work (a node thought dead, a slow stop):
it plans from what its fence froze, never from an earlier look."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from drivers.volumes._engine import Engine
from drivers.volumes._errors import VolumeError
from drivers.volumes._simulation import MemoryLink
from drivers.volumes._wire import OP_READ, Secrets

from .volume_sim import run, sim_replicas

BLOCK = 4096
SIZE = 16 * BLOCK


async def old_engine_ejects_and_acknowledges_between_look_and_claim() -> dict[str, Any]:
    replicas, link = sim_replicas(3)

    def engine() -> Engine:
        return Engine("vol", SIZE, list(replicas), Secrets("sim", ()), replica_timeout=2.0, links=link)

    old = engine()
    await old.start()
    await old.write(0, b"\x01" * BLOCK, fua=True)

    new = engine()
    looked = new._found

    async def look_then_let_the_old_engine_work() -> Any:
        found = await looked()
        # After the new engine looked: r2 stops answering, the old engine ejects it and has a
        # write acknowledged by r0 and r1 alone; the old engine's connection to r2 breaks (so
        # the write never lands there) and r2 answers again before the new engine fences.
        old_link = old._clients["r2:1"]
        replicas["r2:1"].partition()
        await old.write(0, b"\x02" * BLOCK, fua=True)
        await asyncio.sleep(3)
        assert isinstance(old_link, MemoryLink)
        old_link.reset("connection reset by peer")
        replicas["r2:1"].heal()
        return found

    new._found = look_then_let_the_old_engine_work  # type: ignore[method-assign]
    plan = await new.start()
    await new.write(BLOCK, b"\x03" * BLOCK, fua=True)  # r2 misses this one too
    first_read = {a: await new._clients[a].call(OP_READ, {"volume": "vol", "epoch": new.status.epoch,
                                                          "offset": 0, "length": BLOCK})
                  for a in plan.members}
    read = await new.read(0, BLOCK)
    await asyncio.sleep(10)  # the repair loop rebuilds r2
    result = {"old_members": old.members, "plan": plan, "read": read, "by_member": first_read,
              "members_after_repair": new.members,
              "r2": bytes(replicas["r2:1"].store.backings["vol"].data[:2 * BLOCK])}
    await old.close()
    await new.close()
    return result


def test_a_starting_engine_leaves_out_a_replica_ejected_after_it_looked() -> None:
    result = run(old_engine_ejects_and_acknowledges_between_look_and_claim())
    assert result["old_members"] == ("r0:1", "r1:1"), "the scenario did not eject r2 from the old engine"
    assert result["plan"].members == ("r0:1", "r1:1") and result["plan"].stale == ("r2:1",)
    assert result["read"] == b"\x02" * BLOCK
    assert all(data == b"\x02" * BLOCK for _, data in result["by_member"].values()), \
        "every member the new engine serves from holds the acknowledged write"
    assert result["members_after_repair"] == ("r0:1", "r1:1", "r2:1")
    assert result["r2"] == b"\x02" * BLOCK + b"\x03" * BLOCK, \
        "r2 was rebuilt in full, not caught up from a map it never had"


async def restart_after(clean: bool) -> int:
    replicas, link = sim_replicas(3)

    first = Engine("vol", SIZE, list(replicas), Secrets("sim", ()), replica_timeout=2.0, links=link)
    await first.start()
    await first.write(0, b"\x07" * BLOCK, fua=False)
    if clean:
        await first.close()
    else:  # the engine dies: its connections reset
        for client in first._clients.values():
            assert isinstance(client, MemoryLink)
            client.reset("killed")
    second = Engine("vol", SIZE, list(replicas), Secrets("sim", ()), replica_timeout=2.0, links=link)
    await second.start()
    await asyncio.sleep(5)
    resyncs = second.status.io["resyncs"]
    await second.close()
    if not clean:
        await first.close()
    return resyncs


def test_a_clean_close_spares_the_next_engine_a_resync_and_a_crash_does_not() -> None:
    assert run(restart_after(clean=True)) == 0
    assert run(restart_after(clean=False)) == 2, "both other members are made equal to the source"


async def faulted_for_several_recovery_attempts() -> dict[str, Any]:
    replicas, link = sim_replicas(3)

    engine = Engine("vol", SIZE, list(replicas), Secrets("sim", ()), replica_timeout=2.0, links=link)
    await engine.start()
    await engine.write(0, b"\x07" * BLOCK, fua=True)
    replicas["r1:1"].partition()
    replicas["r2:1"].partition()
    with contextlib.suppress(VolumeError):
        await engine.write(0, b"\x08" * BLOCK, fua=True)
    faulted = engine.status.fault
    await asyncio.sleep(9)  # several recovery attempts, each fencing the one replica it reaches
    replicas["r1:1"].heal()
    replicas["r2:1"].heal()
    await asyncio.sleep(6)
    result = {"faulted": faulted, "fault_after": engine.status.fault, "epoch": engine.status.epoch,
              "read": await engine.read(0, BLOCK) if not engine.status.fault else b""}
    await engine.close()
    return result


def test_an_engine_faulted_through_several_recovery_attempts_serves_again_after_the_heal() -> None:
    """Its own fences of the replica it still reached are not mistaken for a newer engine's."""
    result = run(faulted_for_several_recovery_attempts())
    assert result["faulted"], "two of three replicas gone: no more acknowledgements"
    assert result["fault_after"] == "" and result["epoch"] > 1
    assert result["read"] in (b"\x07" * BLOCK, b"\x08" * BLOCK)
