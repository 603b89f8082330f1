"""`python -m gossip node`: one member as a process, speaking JSON lines.

Every event goes to stdout as one JSON object per line; commands come on stdin, one per line:
`members`, `stats`, `key install|use|remove KEY`, `meta TEXT`, `app TEXT`, `leave`. SIGTERM and
SIGINT leave the cluster gracefully, then exit. Used by the demo, the integration tests and the
benchmarks, and handy for poking at a cluster by hand.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import stat
import sys
from typing import Any

from gossip._config import profile
from gossip._crypto import Keyring, generate_key
from gossip._errors import GossipError
from gossip._events import AppStateEvent, Event, MemberEvent
from gossip._members import Member
from gossip._node import GossipNode, parse_address


def _member_json(member: Member) -> dict[str, Any]:
    return {
        "name": member.name,
        "addr": f"{member.addr[0]}:{member.addr[1]}",
        "state": member.state.label,
        "incarnation": member.incarnation,
        "meta": member.meta.decode(errors="replace"),
        "state_since": round(member.state_since, 3),
    }


def _event_json(event: Event) -> dict[str, Any]:
    if isinstance(event, MemberEvent):
        return {"type": "event", "kind": event.kind.value, "at": event.at, "member": _member_json(event.member)}
    assert isinstance(event, AppStateEvent)
    return {"type": "app", "node": event.node, "version": event.version, "size": len(event.data), "at": event.at}


def _emit(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj, separators=(",", ":")) + "\n")
    sys.stdout.flush()


async def _command(node: GossipNode, line: str, stop: asyncio.Event) -> dict[str, Any]:
    verb, _, rest = line.strip().partition(" ")
    if verb == "members":
        return {"type": "members", "members": [_member_json(m) for m in node.members()]}
    if verb == "stats":
        return {"type": "stats", "stats": dict(node.stats())}
    if verb == "key":
        action, _, key = rest.partition(" ")
        if node.keyring is None:
            return {"type": "error", "message": "this node runs without a keyring (insecure)"}
        operations = {"install": node.keyring.install, "use": node.keyring.use, "remove": node.keyring.remove}
        if action not in operations:
            return {"type": "error", "message": "usage: key install|use|remove KEY"}
        operations[action](key)
        return {"type": "ok"}
    if verb == "meta":
        await node.set_meta(rest.encode())
        return {"type": "ok"}
    if verb == "app":
        await node.set_app_state(rest.encode())
        return {"type": "ok"}
    if verb == "leave":
        stop.set()
        return {"type": "ok"}
    return {"type": "error", "message": f"unknown command {verb!r}"}


async def _read_commands(node: GossipNode, stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    try:
        kind = os.fstat(sys.stdin.fileno()).st_mode
        # Only what an event loop can poll: a regular file or /dev/null (a detached benchmark run)
        # is refused by asyncio's own loop and aborts uvloop's.
        if not (stat.S_ISFIFO(kind) or stat.S_ISSOCK(kind) or sys.stdin.isatty()):
            return
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    except (OSError, ValueError):
        return  # no usable stdin: events only
    while not stop.is_set():
        line = await reader.readline()
        if not line:
            return
        try:
            _emit(await _command(node, line.decode(errors="replace"), stop))
        except GossipError as error:
            _emit({"type": "error", "message": str(error)})


async def run_node(args: argparse.Namespace) -> int:
    config = profile(args.profile)
    keyring = Keyring(args.key) if args.key else None
    node = GossipNode(
        config,
        name=args.name,
        bind=parse_address(args.bind),
        advertise=parse_address(args.advertise) if args.advertise else None,
        cluster=args.cluster,
        keyring=keyring,
        insecure=args.insecure,
        meta=args.meta.encode(),
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    async with node:
        events = node.events()

        async def forward() -> None:
            async for event in events:
                _emit(_event_json(event))

        forwarder = asyncio.create_task(forward())
        joined = 0
        if args.join:
            try:
                joined = await node.join(args.join)
            except GossipError as error:
                _emit({"type": "join_failed", "message": str(error)})
        _emit({"type": "ready", "name": args.name, "addr": "{}:{}".format(*node.local_addr), "joined": joined})
        commands = asyncio.create_task(_read_commands(node, stop))
        await stop.wait()
        left = await node.leave(timeout=config.probe_interval * 3)
        _emit({"type": "left", "complete": left})
        commands.cancel()
        events.close()
        with contextlib.suppress(asyncio.CancelledError):
            await forwarder
    return 0


def add_node_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = commands.add_parser("node", help="run one member, events as JSON lines, commands on stdin")
    p.add_argument("--name", required=True)
    p.add_argument("--bind", default="127.0.0.1:7946", help="host:port for UDP and TCP")
    p.add_argument("--advertise", default="", help="host:port others use to reach this node")
    p.add_argument("--join", action="append", default=[], help="seed host:port (repeatable)")
    p.add_argument("--cluster", default="default")
    p.add_argument("--key", action="append", default=[], help="base64 key (repeatable; the first encrypts)")
    p.add_argument("--insecure", action="store_true", help="plaintext: no key")
    p.add_argument("--profile", default="lan", choices=["lan", "wan", "local"])
    p.add_argument("--meta", default="")
    p.add_argument("--log-level", default="WARNING")


def main(argv: list[str] | None = None) -> int:
    from gossip._demo import add_demo_parser, run_demo

    parser = argparse.ArgumentParser(prog="python -m gossip", description="gossip membership tools")
    commands = parser.add_subparsers(dest="command", required=True)
    add_node_parser(commands)
    add_demo_parser(commands)
    commands.add_parser("keygen", help="print a new random key (base64)")
    args = parser.parse_args(argv)
    if args.command == "keygen":
        print(generate_key())
        return 0
    logging.basicConfig(level=getattr(args, "log_level", "WARNING"), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        if args.command == "node":
            return asyncio.run(run_node(args))
        return asyncio.run(run_demo(args))
    except GossipError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
