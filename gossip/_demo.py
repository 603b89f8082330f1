"""`python -m gossip demo`: a small cluster on loopback, each member its own process.

It shows, as a live membership matrix (rows: observers, columns: members), the cluster converging,
one member killed -9 (suspect, then dead everywhere), the same member restarted (alive again under
its name), and one member leaving gracefully (left, not dead). Ctrl-C stops every member cleanly.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import time
from typing import Any

from gossip._crypto import generate_key
from gossip._process import NodeProcess, wait_until

_LETTER = {"alive": ".", "suspect": "?", "dead": "X", "left": "-"}


class _Demo:
    def __init__(self, count: int, base_port: int) -> None:
        key = generate_key()
        self.start = time.monotonic()
        seeds = [f"127.0.0.1:{base_port}"]
        self.nodes = [
            NodeProcess(f"node-{i + 1}", f"127.0.0.1:{base_port + i}", join=seeds if i else (),
                        cluster="demo", keys=[key])
            for i in range(count)
        ]
        self._last = ""

    def say(self, text: str) -> None:
        print(f"[{time.monotonic() - self.start:6.1f}s] {text}", flush=True)

    async def views(self) -> dict[str, dict[str, dict[str, Any]]]:
        views = {}
        for node in self.nodes:
            if node.running:
                with contextlib.suppress(Exception):
                    views[node.name] = await node.members()
        return views

    async def show(self) -> dict[str, dict[str, dict[str, Any]]]:
        """Print the matrix if it changed since last time; return the views."""
        views = await self.views()
        names = [n.name for n in self.nodes]
        lines = ["            " + " ".join(f"{n[-6:]:>6}" for n in names)]
        for observer in names:
            view = views.get(observer)
            if view is None:
                lines.append(f"  {observer:>8}  " + "  (not running)")
                continue
            cells = [_LETTER.get(view[n]["state"], "?") if n in view else " " for n in names]
            lines.append(f"  {observer:>8}  " + " ".join(f"{c:>6}" for c in cells))
        table = "\n".join(lines)
        if table != self._last:
            self._last = table
            self.say("membership (row sees column):  . alive   ? suspect   X dead   - left")
            print(table, flush=True)
        return views

    async def until(self, what: str, predicate: Any, timeout: float) -> None:
        async def check() -> bool:
            return bool(predicate(await self.show()))

        try:
            await wait_until(check, timeout, interval=0.25)
            self.say(what)
        except TimeoutError:
            self.say(f"still waiting after {timeout:.0f}s for: {what}")

    def all_see(self, member: str, state: str) -> Any:
        def check(views: dict[str, dict[str, dict[str, Any]]]) -> bool:
            observers = [n.name for n in self.nodes if n.running and n.name != member]
            return all(views.get(o, {}).get(member, {}).get("state") == state for o in observers)

        return check

    async def run(self) -> None:
        count = len(self.nodes)
        self.say(f"starting {count} members on 127.0.0.1 (cluster 'demo', a fresh AES-256-GCM key)")
        for node in self.nodes:
            await node.start()
        await self.until(
            f"converged: every member sees all {count} alive",
            lambda v: len(v) == count and all(
                sum(1 for m in view.values() if m["state"] == "alive") == count for view in v.values()
            ),
            30,
        )
        victim = self.nodes[count // 2]
        self.say(f"kill -9 {victim.name} (pid {victim.pid}): no goodbye")
        victim.kill()
        await victim.wait()
        await self.until(f"{victim.name} declared dead by every survivor", self.all_see(victim.name, "dead"), 60)
        self.say(f"restarting {victim.name} at the same address")
        await victim.start()
        await self.until(f"{victim.name} alive again everywhere", self.all_see(victim.name, "alive"), 60)
        leaver = self.nodes[-1]
        self.say(f"SIGTERM {leaver.name}: a graceful leave")
        await leaver.stop()
        await self.until(f"{leaver.name} seen as left (not dead)", self.all_see(leaver.name, "left"), 30)
        self.say("done; stopping the members")

    async def close(self) -> None:
        await asyncio.gather(*(n.stop() for n in self.nodes if n.running))


async def run_demo(args: argparse.Namespace) -> int:
    demo = _Demo(args.nodes, args.base_port)
    try:
        await demo.run()
    finally:
        await demo.close()
    return 0


def add_demo_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = commands.add_parser("demo", help="a live cluster of processes on loopback")
    p.add_argument("--nodes", type=int, default=5)
    p.add_argument("--base-port", type=int, default=17946)
