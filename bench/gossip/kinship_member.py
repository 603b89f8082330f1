"""One kinship member (LAN preset) printing membership events as JSON lines, like `python -m gossip node`."""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys

import kinship

KINDS = {
    "MemberJoined": "join",
    "MemberSuspect": "suspect",
    "MemberRecovered": "alive",
    "MemberDead": "dead",
    "MemberLeft": "left",
    "MemberUpdated": "update",
}


def emit(obj: dict[str, object]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--name", required=True)
    parser.add_argument("--bind", required=True)
    parser.add_argument("--join", action="append", default=[])
    parser.add_argument("--key", required=True)
    args = parser.parse_args()
    config = kinship.Config.lan(name=args.name, bind=args.bind, seeds=args.join, keys=[args.key])
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    async with kinship.Cluster(config) as cluster:
        emit({"type": "ready", "name": args.name})

        events = cluster.events()
        # Members learned while joining were announced before this subscription existed.
        for member in cluster.members():
            if member.name != args.name:
                emit({"type": "event", "kind": "join", "member": {"name": member.name}})

        async def forward() -> None:
            async for event in events:
                kind = KINDS.get(type(event).__name__)
                member = getattr(event, "member", None)
                if kind and member is not None:
                    emit({"type": "event", "kind": kind, "member": {"name": member.name}})

        task = asyncio.create_task(forward())
        await stop.wait()
        task.cancel()


if __name__ == "__main__":
    asyncio.run(main())
