"""An engine given a new list of replica servers while it serves (a lost replica replaced): the
new replica is rebuilt online and joins; a member no longer listed is ejected; I/O never stops."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from drivers.volumes._engine import Engine
from drivers.volumes._errors import VolumeError
from drivers.volumes._wire import Secrets

from .volume_sim import run, sim_replicas

BLOCK = 4096
SIZE = 16 * BLOCK


async def replace_a_lost_replica() -> dict[str, Any]:
    replicas, link = sim_replicas(4)
    engine = Engine("vol", SIZE, ["r0:1", "r1:1", "r2:1"], Secrets("sim", ()), replica_timeout=2.0, links=link)
    await engine.start()
    await engine.write(0, b"\x01" * BLOCK, fua=True)
    replicas["r2:1"].partition()  # its node is gone for good
    await engine.write(BLOCK, b"\x02" * BLOCK, fua=True)
    await asyncio.sleep(3)
    degraded = engine.members
    engine.reconfigure(["r0:1", "r1:1", "r3:1"])
    writes = 0
    for i in range(20):  # I/O goes on during the rebuild
        await engine.write((2 + i % 10) * BLOCK, bytes([3 + i]) * BLOCK, fua=False)
        writes += 1
        await asyncio.sleep(0.5)
    await engine.flush()
    result = {"degraded": degraded, "members": engine.members, "configured": engine.status.configured,
              "writes": writes, "set_version": engine.status.set_version,
              "same": bytes(replicas["r3:1"].store.backings["vol"].data[:SIZE])
              == bytes(replicas["r0:1"].store.backings["vol"].data[:SIZE])}
    await engine.close()
    return result


def test_a_replacement_replica_is_rebuilt_online_and_joins() -> None:
    result = run(replace_a_lost_replica())
    assert result["degraded"] == ("r0:1", "r1:1")
    assert result["configured"] == ("r0:1", "r1:1", "r3:1")
    assert result["members"] == ("r0:1", "r1:1", "r3:1")
    assert result["writes"] == 20
    assert result["same"], "the new replica holds exactly what the others hold"


async def drop_a_live_member() -> dict[str, Any]:
    _, link = sim_replicas(3)
    engine = Engine("vol", SIZE, ["r0:1", "r1:1", "r2:1"], Secrets("sim", ()), replica_timeout=2.0, links=link)
    await engine.start()
    before = engine.status.set_version
    engine.reconfigure(["r0:1", "r1:1"])
    await engine.write(0, b"\x05" * BLOCK, fua=True)  # waits for the ejection, then needs 2 of 2
    result = {"members": engine.members, "raised": engine.status.set_version > before,
              "read": await engine.read(0, BLOCK)}
    with pytest.raises(VolumeError, match="each once"):
        engine.reconfigure(["r0:1", "r0:1"])
    await engine.close()
    return result


def test_a_member_no_longer_listed_is_ejected_and_the_set_version_raised() -> None:
    result = run(drop_a_live_member())
    assert result["members"] == ("r0:1", "r1:1") and result["raised"]
    assert result["read"] == b"\x05" * BLOCK


async def hold_a_rebuild() -> dict[str, Any]:
    replicas, link = sim_replicas(4)
    engine = Engine("vol", SIZE, ["r0:1", "r1:1", "r2:1"], Secrets("sim", ()), replica_timeout=2.0, links=link)
    await engine.start()
    await engine.write(0, b"\x09" * BLOCK, fua=True)
    replicas["r2:1"].partition()
    await engine.write(BLOCK, b"\x0a" * BLOCK, fua=True)
    await asyncio.sleep(3)
    engine.reconfigure(["r0:1", "r1:1", "r3:1"], held={"r3:1"})  # its turn has not come
    await asyncio.sleep(10)
    held = (engine.members, "vol" in replicas["r3:1"].store.backings)
    engine.reconfigure(["r0:1", "r1:1", "r3:1"])  # a slot freed
    await asyncio.sleep(6)
    result = {"held": held, "members": engine.members,
              "r3": bytes(replicas["r3:1"].store.backings["vol"].data[:2 * BLOCK])}
    await engine.close()
    return result


def test_a_held_replica_counts_but_is_not_copied_to_until_its_turn() -> None:
    result = run(hold_a_rebuild())
    assert result["held"] == (("r0:1", "r1:1"), False), "nothing sent to the held replica"
    assert result["members"] == ("r0:1", "r1:1", "r3:1")
    assert result["r3"] == b"\x09" * BLOCK + b"\x0a" * BLOCK
