"""The nodeorch command line: the agent itself, and a debug CLI that talks to a running agent.

Exit codes: 0 ok; 1 the agent answered with a problem; 2 usage or a refused file; 3 no agent
could be reached (the message says where the CLI looked and how to point it elsewhere).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp

from nodeorch import __version__
from nodeorch.faces.client import AgentProblem, Unreachable, agent_session, call
from nodeorch.faces.tables import ago, table
from nodeorch.spec.node_config import DEFAULT_API, DEFAULT_CONFIG_PATH, NodeConfig, load_node_config
from nodeorch.spec.secret_files import KeyringFileError, load_token
from nodeorch.spec.toml_tables import ConfigFileError

EXIT_OK, EXIT_PROBLEM, EXIT_USAGE, EXIT_UNREACHABLE = 0, 1, 2, 3
SALVAGE_TIMEOUT = 900.0
"""A salvage copies the trusted replica onto the others: minutes for a big volume."""


# Talking to an agent ------------------------------------------------------------------------------


def config_path(explicit: str | None) -> Path:
    return Path(explicit or os.environ.get("NODEORCH_CONFIG") or DEFAULT_CONFIG_PATH)


@dataclass(frozen=True, slots=True)
class AgentAddress:
    api: str
    source: str
    """Where the address came from, for the message when nobody answers there."""
    token: str = ""


def agent_address(args: argparse.Namespace) -> AgentAddress:
    """--api, then $NODEORCH_API, then [api] listen of the config, then the default; the token
    from $NODEORCH_TOKEN, else the config's [api] token_file when this user can read it."""
    path = config_path(getattr(args, "config", None))
    try:
        config: NodeConfig | None = load_node_config(path)
    except (ConfigFileError, OSError):
        config = None
    token = os.environ.get("NODEORCH_TOKEN", "")
    if not token and config is not None and config.api.token_file is not None:
        with contextlib.suppress(KeyringFileError):
            token = load_token(config.api.token_file)
    if args.api:
        return AgentAddress(args.api, "--api", token)
    if os.environ.get("NODEORCH_API"):
        return AgentAddress(os.environ["NODEORCH_API"], "NODEORCH_API", token)
    if config is not None:
        return AgentAddress(config.api.listen, f"[api] listen in {path}", token)
    return AgentAddress(DEFAULT_API, "the default", token)


# Output --------------------------------------------------------------------------------------------


def show_status(data: dict[str, Any]) -> str:
    members = data["members"]
    desired = data["desired"]
    lines = [
        f"node      {data['node']}  (cluster {data['cluster']}, nodeorch {data['version']}, up {data['uptime']:.0f}s)",
        f"members   {members['alive']} alive, {members['suspect']} suspect, {members['dead']} dead, "
        f"{members['left']} left",
        f"desired   revision {desired['revision']} digest {desired['digest']}"
        + (f"\n          ERROR: {desired['error']}" if desired.get("error") else ""),
        f"draining  {'yes' if data.get('draining') else 'no'}",
    ]
    if data.get("digest_differs"):
        lines.append(f"differs   nodes with another desired state: {', '.join(data['digest_differs'])}")
    return "\n".join(lines)


def show_members(data: list[dict[str, Any]]) -> str:
    rows = [(m["name"], f"{m['addr']}:{m['port']}", m["state"], m["incarnation"], ago(m["state_since"]),
             ",".join(f"{k}={v}" for k, v in sorted(m["labels"].items())) or "-") for m in data]
    return table(rows, ["NAME", "ADDRESS", "STATE", "INC", "SINCE", "LABELS"])


def show_nodes(data: list[dict[str, Any]]) -> str:
    rows = [(d["name"], d["version"], "stale" if d["stale"] else "current", "yes" if d["draining"] else "no",
             d["desired_revision"], d["desired_digest"] or "-", ago(d["updated_at"])) for d in data]
    return table(rows, ["NAME", "VERSION", "DOCUMENT", "DRAINING", "REVISION", "DIGEST", "UPDATED"])


def _update_cell(service: dict[str, Any]) -> str:
    update = service.get("update")
    if not update or update["state"] == "complete":
        return ""
    text = f"{update['state']} {update['done']}/{update['total']}"
    return f"{text}: {update['reason']}" if update.get("reason") else text


def show_services(data: list[dict[str, Any]]) -> str:
    rows = []
    for service in data:
        running = sum(1 for i in service["instances"] if i["state"] == "running")
        waiting = service.get("waiting", "")
        note = waiting or _update_cell(service)
        rows.append((service["name"], f"{running}/{service['desired']}", "", "", "waiting" if waiting else "",
                     "", service.get("digest", "-"), note))
        for i in service["instances"]:
            rows.append(("", "", i["slot"], i["node"], i["state"], i["health"], i.get("digest", ""), ""))
    return table(rows, ["SERVICE", "RUNNING", "SLOT", "NODE", "STATE", "HEALTH", "SPEC", "UPDATE"])


def _size(size: int) -> str:
    for unit, shift in (("TiB", 40), ("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if size >= 1 << shift and size % (1 << shift) == 0:
            return f"{size >> shift}{unit}"
    return f"{size}B"


def show_volumes(data: list[dict[str, Any]]) -> str:
    rows = []
    for volume in data:
        engine = volume["engine"]
        held = [r for r in volume["replicas"] if not r["node_down"]]
        rows.append((volume["name"], _size(volume["size"]) if "size" in volume else "-", volume["state"],
                     f"{len(held)}/{volume.get('wanted', 0)}", f"{engine['node']} (epoch {engine['epoch']})"
                     if engine else "-", ", ".join(volume.get("placement", [])) or "-"))
    return table(rows, ["VOLUME", "SIZE", "STATE", "REPLICAS", "ENGINE", "PLACEMENT"])


def show_jobs(data: list[dict[str, Any]]) -> str:
    rows = [(j["id"], j["kind"], j["target"], j["state"], j["attempts"], ago(j["updated"]), j["error"] or "")
            for j in data]
    return table(rows, ["ID", "KIND", "TARGET", "STATE", "ATTEMPTS", "UPDATED", "ERROR"])


# Commands -------------------------------------------------------------------------------------------


async def run_query(args: argparse.Namespace) -> int:
    address = agent_address(args)
    api, source, token = address.api, address.source, address.token
    try:
        if args.command == "events":
            return await run_events(address, args)
        if args.command in ("drain", "undrain"):
            data = await call(api, "POST", f"/v1/{args.command}", token)
            print(json.dumps(data) if args.json else f"{data['node']}: draining {'on' if data['draining'] else 'off'}")
            return EXIT_OK
        if args.command == "service":
            return await run_service_action(api, token, args)
        if args.command == "event":
            data = await call(api, "POST", "/v1/events", token, {"name": args.name, "payload": args.payload})
            print(json.dumps(data) if args.json else f"user event {data['name']} ({data['size']} bytes) sent to "
                  "every node")
            return EXIT_OK
        if args.command == "volume" and args.words[0] in ("delete", "salvage") and len(args.words) == 2:
            return await run_volume_action(api, token, args)
        if args.command == "volume":
            if len(args.words) != 1:
                print("nodeorch volume: expected NAME, delete NAME or salvage NAME --from NODE", file=sys.stderr)
                return EXIT_USAGE
            args.name = args.words[0]
        path = {"status": "/v1/status", "members": "/v1/members", "nodes": "/v1/nodes",
                "services": "/v1/services", "volumes": "/v1/volumes", "volume": "/v1/volumes",
                "jobs": "/v1/jobs"}[args.command]
        if args.command in ("nodes", "volume") and args.name:
            path = f"{path}/{args.name}"
        data = await call(api, "GET", path, token)
    except Unreachable as error:
        print(f"nodeorch: no agent answered at {api} ({source}): {error}\n"
              "  start one with `nodeorch agent`, or point the CLI elsewhere with --api HOST:PORT "
              "(or unix:/path) or NODEORCH_API", file=sys.stderr)
        return EXIT_UNREACHABLE
    except AgentProblem as error:
        print(f"nodeorch: the agent at {api} answered: {error}", file=sys.stderr)
        return EXIT_PROBLEM
    if args.json or (args.command in ("nodes", "volume") and args.name):
        print(json.dumps(data, indent=2))
    else:
        renderers: dict[str, Callable[[Any], str]] = {
            "status": show_status, "members": show_members, "nodes": show_nodes,
            "services": show_services, "volumes": show_volumes, "jobs": show_jobs,
        }
        print(renderers[args.command](data))
    return EXIT_OK


async def run_service_action(api: str, token: str, args: argparse.Namespace) -> int:
    data = await call(api, "POST", f"/v1/services/{args.name}/resume", token)
    print(json.dumps(data) if args.json else f"{args.name}: update to {data['digest']} resumed (was {data['was']})")
    return EXIT_OK


async def run_volume_action(api: str, token: str, args: argparse.Namespace) -> int:
    action, name = args.words
    if action == "salvage":
        if not args.trusted:
            print("nodeorch volume salvage: --from NODE is required (the node whose replica to trust)",
                  file=sys.stderr)
            return EXIT_USAGE
        data = await call(api, "POST", f"/v1/volumes/{name}/salvage", token, {"from": args.trusted},
                          read_timeout=SALVAGE_TIMEOUT)
        print(json.dumps(data) if args.json else f"{name}: salvaged from {data['from']}; its engine starts again\n"
              f"{data['output']}")
        return EXIT_OK
    volume = await call(api, "GET", f"/v1/volumes/{name}", token)
    holders = sorted({r["node"] for r in volume.get("replicas", [])})
    if not args.yes:
        if not sys.stdin.isatty():
            print(f"nodeorch volume delete: deleting {name} destroys its data on {', '.join(holders) or 'no node'}; "
                  "confirm with --yes", file=sys.stderr)
            return EXIT_USAGE
        answer = await asyncio.to_thread(
            input, f"Delete volume {name} and its replicas on {', '.join(holders)}? Its data is lost. [y/N] ")
        if answer.strip().lower() not in ("y", "yes"):
            print("not deleted", file=sys.stderr)
            return EXIT_USAGE
    data = await call(api, "POST", f"/v1/volumes/{name}/delete", token)
    print(json.dumps(data) if args.json else f"{name}: deleted; {', '.join(data['nodes'])} drop their replicas")
    return EXIT_OK


async def run_events(address: AgentAddress, args: argparse.Namespace) -> int:
    follow = "1" if args.follow else "0"
    async with agent_session(address.api, address.token) as (session, base):
        try:
            query = f"since={args.since}&follow={follow}" + (f"&kind={quote(args.kind)}" if args.kind else "")
            async with session.get(f"{base}/v1/events?{query}") as response:
                if response.status >= 400:
                    raise AgentProblem(f"HTTP {response.status}: {(await response.text())[:200]}")
                async for line in response.content:
                    if not line.strip():
                        continue
                    if args.json:
                        print(line.decode().rstrip(), flush=True)
                    else:
                        event = json.loads(line)
                        rest = " ".join(f"{k}={v}" for k, v in event.items() if k not in ("seq", "time", "kind"))
                        stamp = time.strftime("%H:%M:%S", time.localtime(event["time"]))
                        print(f"{event['seq']:>6} {stamp} {event['kind']:<18} {rest}", flush=True)
        except (aiohttp.ClientConnectionError, OSError) as error:
            raise Unreachable(str(error)) from None
    return EXIT_OK


def run_agent(args: argparse.Namespace) -> int:
    from nodeorch.agent import Agent, AgentError

    path = config_path(args.config)
    try:
        config = load_node_config(path)
    except ConfigFileError as error:
        print(f"nodeorch: {error}", file=sys.stderr)
        return EXIT_USAGE
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        await Agent(config).run(stop)

    try:
        asyncio.run(main())
    except (AgentError, OSError) as error:
        print(f"nodeorch: {error}", file=sys.stderr)
        return EXIT_USAGE
    return EXIT_OK


def run_keygen(args: argparse.Namespace) -> int:
    from gossip import generate_key
    from nodeorch.spec.secret_files import KeyringFileError, write_keyring

    if not args.keyring:
        print(generate_key())
        return EXIT_OK
    try:
        write_keyring(Path(args.keyring), force=args.force)
    except (KeyringFileError, OSError) as error:
        print(f"nodeorch: {error}", file=sys.stderr)
        return EXIT_USAGE
    print(f"wrote a new key to {args.keyring} (mode 0600); copy the same file to every host")
    return EXIT_OK


def run_spec_check(args: argparse.Namespace) -> int:
    from nodeorch.spec.desired import load_desired

    try:
        desired = load_desired(Path(args.file))
    except ConfigFileError as error:
        print(f"nodeorch: {error}", file=sys.stderr)
        return EXIT_USAGE
    print(f"{args.file}: ok (revision {desired.revision}, digest {desired.digest}, "
          f"{len(desired.services)} services, {len(desired.volumes)} volumes)")
    return EXIT_OK


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="nodeorch", description="masterless node orchestrator")
    p.add_argument("--version", action="version", version=f"nodeorch {__version__}")
    commands = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    agent = commands.add_parser("agent", help="run the agent (what systemd starts)")
    agent.add_argument("--config", help=f"default: $NODEORCH_CONFIG, then {DEFAULT_CONFIG_PATH}")
    agent.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])

    def query(name: str, help_text: str) -> argparse.ArgumentParser:
        q = commands.add_parser(name, help=help_text)
        q.add_argument("--api", help="agent address HOST:PORT or unix:/path (default: $NODEORCH_API, "
                       f"then [api] listen of the config, then {DEFAULT_API})")
        q.add_argument("--config", help="config file to read the API address from")
        q.add_argument("--json", action="store_true", help="machine-readable output")
        return q

    query("status", "this node, the cluster at a glance")
    query("members", "the member table as this node sees it")
    query("nodes", "node documents held by this node").add_argument("name", nargs="?", help="one node, in full")
    events = query("events", "the event log; -f to follow")
    events.add_argument("-f", "--follow", action="store_true")
    events.add_argument("--since", type=int, default=0, help="only events after this seq")
    events.add_argument("--kind", default="", help="only these kinds: comma-separated patterns, like member.*,user.*")
    event = query("event", "send a user event to every node (shown in their events, fed to their hooks)")
    event.add_argument("name", metavar="NAME", help="letters, digits, '_', '.', ':', '-' (at most 64)")
    event.add_argument("payload", metavar="PAYLOAD", nargs="?", default="",
                       help="text that goes with it (name and payload: at most 512 bytes)")
    query("services", "desired services and their instances across the cluster")
    service = query("service", "act on a service: `service resume NAME` continues a paused or rolled-back update")
    service.add_argument("action", choices=["resume"])
    service.add_argument("name", metavar="NAME")
    query("volumes", "desired volumes: state, replicas, engine, placement")
    volume = query("volume", "one volume in full; `volume delete NAME`, `volume salvage NAME --from NODE`")
    volume.add_argument("words", nargs="+", metavar="NAME | delete NAME | salvage NAME",
                        help="a volume to show, or an action and the volume it acts on")
    volume.add_argument("--from", dest="trusted", metavar="NODE", help="salvage: the node whose replica to trust")
    volume.add_argument("--yes", action="store_true", help="delete: do not ask")
    query("jobs", "this node's job table")
    query("drain", "move this node's work away")
    query("undrain", "take work again")

    keygen = commands.add_parser("keygen", help="a new cluster key (printed, or written to a keyring file)")
    keygen.add_argument("--keyring", help="write a new keyring file (mode 0600) instead of printing")
    keygen.add_argument("--force", action="store_true", help="replace an existing keyring file")

    spec = commands.add_parser("spec", help="desired-state files")
    spec_commands = spec.add_subparsers(dest="spec_command", required=True, metavar="SUBCOMMAND")
    check = spec_commands.add_parser("check", help="validate a desired.toml")
    check.add_argument("file")

    dev = commands.add_parser("dev", help="a local cluster of agents on loopback, with a live status table")
    dev.add_argument("--nodes", type=int, default=3)
    dev.add_argument("--dir", help="folder for configs, keyring, data and logs (default: a new temp folder)")
    dev.add_argument("--base-ip", help="address of the first agent (127.x.y.z; the next agents take the "
                     "following addresses); default: the first free range 127.0.N.2..")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.command == "agent":
        return run_agent(args)
    if args.command == "keygen":
        return run_keygen(args)
    if args.command == "spec":
        return run_spec_check(args)
    if args.command == "dev":
        from nodeorch.faces.dev import run_dev

        return run_dev(args)
    try:
        return asyncio.run(run_query(args))
    except Unreachable as error:
        print(f"nodeorch: {error}", file=sys.stderr)
        return EXIT_UNREACHABLE
    except AgentProblem as error:
        print(f"nodeorch: {error}", file=sys.stderr)
        return EXIT_PROBLEM
    except KeyboardInterrupt:
        return 130
