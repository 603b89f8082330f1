"""Real members, each its own OS process, on real sockets on 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
import socket
import sys
from typing import Any

from gossip import GossipNode, Keyring, UdpTcpTransport, generate_key, lan
from gossip._process import NodeProcess, wait_until

from .conftest import free_port, start_cluster


async def states(nodes: list[NodeProcess]) -> dict[str, dict[str, tuple[str, int]]]:
    """observer -> member -> (state, incarnation), from each running process."""
    views = {}
    for node in nodes:
        if node.running:
            members = await node.members()
            views[node.name] = {name: (m["state"], m["incarnation"]) for name, m in members.items()}
    return views


async def all_see(nodes: list[NodeProcess], member: str, state: str, count: int | None = None) -> bool:
    for observer, view in (await states(nodes)).items():
        if observer == member:
            continue
        if view.get(member, ("", 0))[0] != state:
            return False
        if count is not None and sum(1 for s, _ in view.values() if s == "alive") != count:
            return False
    return True


async def test_five_members_join_then_a_killed_one_dies_and_comes_back(processes: list[NodeProcess]) -> None:
    nodes = await start_cluster(processes, 5, keys=[generate_key()])
    await wait_until(lambda: all_see(nodes, "node-1", "alive", count=5), 15)

    victim = nodes[2]
    victim.kill()
    await victim.wait()
    await wait_until(lambda: all_see(nodes, victim.name, "dead"), 40)
    for survivor in nodes:
        if survivor is not victim:
            event = await survivor.wait_event(
                lambda e: e.get("kind") == "dead" and e["member"]["name"] == victim.name, 1
            )
            assert event["member"]["state_since"] > 0

    dead_incarnation = (await nodes[0].members())[victim.name]["incarnation"]
    await victim.start()
    await wait_until(lambda: all_see(nodes, victim.name, "alive", count=5), 20)
    assert (await nodes[0].members())[victim.name]["incarnation"] > dead_incarnation


async def test_sigterm_leaves_gracefully(processes: list[NodeProcess]) -> None:
    nodes = await start_cluster(processes, 3, keys=[generate_key()])
    await wait_until(lambda: all_see(nodes, "node-1", "alive", count=3), 15)
    assert await nodes[1].stop() == 0
    await wait_until(lambda: all_see(nodes, "node-2", "left"), 10)


async def test_key_rotation_across_a_running_cluster(processes: list[NodeProcess]) -> None:
    old, new = generate_key(), generate_key()
    nodes = await start_cluster(processes, 4, keys=[old])
    await wait_until(lambda: all_see(nodes, "node-1", "alive", count=4), 15)
    for step in (f"key install {new}", f"key use {new}", f"key remove {old}"):
        for node in nodes:
            assert (await node.command(step))["type"] == "ok", step
        await asyncio.sleep(1.5)
        assert await all_see(nodes, "node-1", "alive", count=4), f"cluster intact after '{step}'"

    seed = nodes[0].bind
    late_old = NodeProcess("late-old", f"127.0.0.1:{free_port()}", join=[seed], keys=[old])
    late_new = NodeProcess("late-new", f"127.0.0.1:{free_port()}", join=[seed], keys=[new])
    processes.extend([late_old, late_new])
    assert (await late_old.start())["joined"] == 0, "the removed key no longer opens the cluster"
    assert (await late_new.start())["joined"] == 1
    await wait_until(lambda: all_see(nodes, "late-new", "alive", count=5), 15)
    assert "late-old" not in await nodes[0].members()


async def test_a_wrong_key_or_another_cluster_cannot_join(processes: list[NodeProcess]) -> None:
    key = generate_key()
    nodes = await start_cluster(processes, 3, keys=[key], cluster="prod")
    await wait_until(lambda: all_see(nodes, "node-1", "alive", count=3), 15)
    seed = nodes[0].bind
    intruders = [
        NodeProcess("wrong-key", f"127.0.0.1:{free_port()}", join=[seed], cluster="prod", keys=[generate_key()]),
        NodeProcess("wrong-cluster", f"127.0.0.1:{free_port()}", join=[seed], cluster="staging", keys=[key]),
        NodeProcess("plaintext", f"127.0.0.1:{free_port()}", join=[seed], cluster="prod", insecure=True),
    ]
    processes.extend(intruders)
    for intruder in intruders:
        assert (await intruder.start())["joined"] == 0, intruder.name
    await asyncio.sleep(2)
    members = await nodes[0].members()
    assert set(members) == {"node-1", "node-2", "node-3"}
    drops = await nodes[0].stats()
    assert drops.get("drop_decrypt", 0) > 0 and drops.get("drop_plaintext_refused", 0) > 0


class _RecordingTransport(UdpTcpTransport):
    """The real transport, keeping a copy of every datagram it sends (the captured traffic)."""

    sent: list[tuple[tuple[str, int], bytes]]

    def send_packet(self, to: tuple[str, int], data: bytes) -> None:
        self.sent.append((to, data))
        super().send_packet(to, data)


async def test_garbage_and_replayed_packets_change_nothing(processes: list[NodeProcess]) -> None:
    key = generate_key()
    nodes = await start_cluster(processes, 3, keys=[key])
    transport = _RecordingTransport(("127.0.0.1", free_port()), max_packet=1400, max_frame=1 << 20)
    transport.sent = []
    async with GossipNode(lan(), name="observer", keyring=Keyring([key]), transport=transport) as observer:
        await observer.join([nodes[0].bind])
        await wait_until(lambda: all_see(nodes, "observer", "alive", count=4), 15)
        await asyncio.sleep(3)  # let a few probe rounds be captured
        captured = list(transport.sent)
        assert len(captured) > 5
        before = await states(nodes)
        before_stats: list[dict[str, Any]] = [await n.stats() for n in nodes]

        attacker = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            for to, data in captured * 3:
                attacker.sendto(data, to)
            for node in nodes:
                port = int(node.bind.rsplit(":", 1)[1])
                for garbage in (b"", b"\x00", b"\x01" * 45, b"\xff" * 1400, bytes(range(256)) * 5):
                    attacker.sendto(garbage, ("127.0.0.1", port))
        finally:
            attacker.close()
        await asyncio.sleep(2)

        assert await states(nodes) == before, "no member's view changed"
        for node, old in zip(nodes, before_stats, strict=True):
            assert node.running
            new = await node.stats()
            assert new.get("drop_replay", 0) > old.get("drop_replay", 0), node.name
            assert new.get("suspicions", 0) == old.get("suspicions", 0)
            assert new.get("refutations", 0) == old.get("refutations", 0)
            assert new.get("drop_internal_error", 0) == 0


UVLOOP_MEMBER = """
import sys, asyncio, uvloop
from gossip._cli import main
asyncio.run = lambda coroutine, **_: uvloop.run(coroutine)
sys.exit(main(sys.argv[1:]))
"""


async def test_members_run_on_uvloop_alone_and_detached_from_any_terminal() -> None:
    """Programs that embed members often run uvloop; it aborts the whole process on a timer armed
    at infinity (a member alone has no deadline) and on polling /dev/null as stdin."""
    ports = [free_port(), free_port()]
    members = []
    for index, port in enumerate(ports):
        args = ["-c", UVLOOP_MEMBER, "node", "--name", f"uv-{index}", "--bind", f"127.0.0.1:{port}", "--insecure"]
        if index:
            args += ["--join", f"127.0.0.1:{ports[0]}"]
        members.append(await asyncio.create_subprocess_exec(
            sys.executable, *args, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE))
        await asyncio.sleep(1.5)  # alone, with nothing due, for more than a loop's first turns
    try:
        assert members[0].stdout is not None and members[1].stdout is not None
        async with asyncio.timeout(10):
            joined = json.loads(await members[1].stdout.readline())
        assert joined["type"] == "event" and joined["member"]["name"] == "uv-0", joined
        assert [m.returncode for m in members] == [None, None], "a member died on uvloop"
    finally:
        for member in members:
            if member.returncode is None:
                member.terminate()
            await member.wait()
    assert [m.returncode for m in members] == [0, 0]
