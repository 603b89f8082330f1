"""The volume processes: `python -m drivers.volumes replica ...` and `... engine ...`.

    replica --dir DIR --listen HOST:PORT [--keyring FILE | --insecure] [--cluster NAME] [--status-file F]
    engine --volume NAME --size SIZE (--replica HOST:PORT [--replica ...] | --replicas-file F)
           --listen unix:PATH|HOST:PORT [--listen ...] [--keyring FILE | --insecure] [--cluster NAME]
           [--replica-timeout 8s] [--status-file F] [--rebuild-rate 200MiB]
    salvage --volume NAME --size SIZE --replica HOST:PORT [...] --from HOST:PORT [--keyring FILE | --insecure]
    drop --volume NAME --volume-id ID --replica HOST:PORT [--keyring FILE | --insecure]

With --replicas-file (one HOST:PORT per line, followed by `hold` for a replica whose rebuild must
wait: it counts for the majority but is not copied to yet), SIGHUP makes a running engine read it again and
serve on the new list without stopping: new replicas are rebuilt online, dropped ones ejected.

`drop` deletes one replica for good (`--replica` names its server, `--volume-id` the volume), as
`nodeorch volume delete` does on every node.

`salvage` is the only way past a lost majority: it takes the replica named by --from as the truth
and copies it onto every other reachable replica, after which the engine starts as usual.

Exit codes: 0 stopped cleanly (SIGTERM or SIGINT); 1 the volume cannot be served (no majority,
fenced); 2 usage or configuration. With --status-file, the process rewrites a JSON status
(size, epoch, members, I/O counters) every second.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import uvloop

from drivers.volumes._client import ReplicaClient, split_address
from drivers.volumes._engine import CONNECT_TIMEOUT, Engine
from drivers.volumes._errors import NoQuorum, VolumeError
from drivers.volumes._nbd_server import NbdServer
from drivers.volumes._replica_server import ReplicaServer
from drivers.volumes._sizes import parse_seconds, parse_size
from drivers.volumes._store import write_atomically
from drivers.volumes._wire import OP_DROP, Secrets, load_keys

log = logging.getLogger("drivers.volumes")
STATUS_INTERVAL = 1.0


def _secrets(args: argparse.Namespace) -> Secrets:
    if args.insecure == bool(args.keyring):
        raise VolumeError("give exactly one of --keyring FILE and --insecure")
    return Secrets(args.cluster, () if args.insecure else load_keys(Path(args.keyring)))


async def _until_stopped(status: Callable[[], dict[str, Any]], status_file: str | None,
                         stop: asyncio.Event | None = None) -> None:
    """Until SIGTERM or SIGINT (or `stop` is set), rewriting the status file every second."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    def write_status() -> None:
        if status_file:
            # rewritten every second and only informative: no fsync
            document = {**status(), "updated_at": round(time.time(), 3)}
            write_atomically(Path(status_file), json.dumps(document).encode(), durable=False)

    while not stop.is_set():
        write_status()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(STATUS_INTERVAL):
                await stop.wait()
    write_status()  # the last word: why it stopped, if it was fenced


async def run_replica(args: argparse.Namespace) -> int:
    host, port = split_address(args.listen)
    async with ReplicaServer(Path(args.dir), host, port, _secrets(args)) as server:
        print(f"replica server on {server.address} serving {args.dir}", file=sys.stderr, flush=True)
        await _until_stopped(lambda: {"address": server.address, "drops": dict(server.drops),
                                      "replicas": [{**m.to_json(), "used": server.store.used(m.volume)}
                                                   for m in server.store.volumes()]}, args.status_file)
    return 0


def _replica_list(args: argparse.Namespace) -> tuple[list[str], set[str]]:
    """The replicas, and those whose rebuild must wait (marked `hold` in --replicas-file)."""
    if bool(args.replica) == bool(args.replicas_file):
        raise VolumeError("give either --replica (once per replica) or --replicas-file")
    if args.replica:
        return list(args.replica), set()
    replicas, held = [], set()
    for line in Path(args.replicas_file).read_text().splitlines():
        words = line.split()
        if not words:
            continue
        if len(words) > 2 or (len(words) == 2 and words[1] != "hold"):
            raise VolumeError(f"{args.replicas_file}: {line!r}: expected HOST:PORT [hold]")
        replicas.append(words[0])
        if len(words) == 2:
            held.add(words[0])
    return replicas, held


def _reload_replicas(engine: Engine, args: argparse.Namespace) -> None:
    """SIGHUP: serve on the list in --replicas-file now; a bad file is reported and changes nothing."""
    try:
        engine.reconfigure(*_replica_list(args))
    except (OSError, VolumeError) as error:
        log.error("%s: replicas not changed: %s", args.volume, getattr(error, "strerror", None) or error)


async def run_engine(args: argparse.Namespace) -> int:
    replicas, held = _replica_list(args)
    engine = Engine(args.volume, parse_size(args.size), replicas, _secrets(args),
                    parse_seconds(args.replica_timeout), parse_size(args.rebuild_rate))
    engine.held = frozenset(held)
    if args.replicas_file:
        asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, _reload_replicas, engine, args)
    try:
        await engine.start()
    except NoQuorum as error:
        print(f"engine {args.volume}: cannot serve: {error}", file=sys.stderr)
        await engine.close()
        return 1
    try:
        async with NbdServer(engine, args.listen) as nbd:
            print(f"engine {args.volume}: serving NBD on {', '.join(nbd.addresses)}", file=sys.stderr, flush=True)
            await _until_stopped(lambda: {**engine.describe(), "nbd": nbd.addresses,
                                          "drops": dict(nbd.drops)}, args.status_file, engine.superseded)
    finally:
        await engine.close()
    if engine.superseded.is_set():
        print(f"engine {args.volume}: {engine.status.fault}; exiting", file=sys.stderr)
        return 1
    return 0


async def run_salvage(args: argparse.Namespace) -> int:
    engine = Engine(args.volume, parse_size(args.size), args.replica, _secrets(args))
    try:
        members = await engine.salvage(args.trusted)
    except NoQuorum as error:
        print(f"salvage {args.volume}: {error}", file=sys.stderr)
        return 1
    finally:
        await engine.close()
    print(f"salvage {args.volume}: every replica now holds the data of {args.trusted}; members "
          f"{', '.join(members)} at epoch {engine.status.epoch}. Start the engine as usual.", file=sys.stderr)
    return 0


async def run_drop(args: argparse.Namespace) -> int:
    client = ReplicaClient(args.replica[0], _secrets(args))
    try:
        await client.connect(CONNECT_TIMEOUT)
        answer, _ = await client.call(OP_DROP, {"volume": args.volume, "volume_id": args.volume_id})
    except VolumeError as error:
        print(f"drop {args.volume}: {error}", file=sys.stderr)
        return 1
    finally:
        await client.aclose()
    print(f"drop {args.volume}: {'deleted' if answer.get('dropped') else 'no such replica'} on {args.replica[0]}",
          file=sys.stderr)
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m drivers.volumes", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = p.add_subparsers(dest="command", required=True)
    for name in ("replica", "engine", "salvage", "drop"):
        c = commands.add_parser(name)
        c.add_argument("--keyring", help="the cluster keyring (one base64 key per line, the first in use)")
        c.add_argument("--insecure", action="store_true", help="no authentication (test beds only)")
        c.add_argument("--cluster", default="default")
        c.add_argument("--status-file", help="rewrite a JSON status here every second")
        c.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
        if name == "replica":
            c.add_argument("--dir", required=True)
            c.add_argument("--listen", required=True, help="HOST:PORT")
        else:
            c.add_argument("--volume", required=True)
            c.add_argument("--size", required=name != "drop", help="e.g. 512MiB, 2GiB")
            c.add_argument("--replica", action="append", required=name in ("salvage", "drop"),
                           help="HOST:PORT, once per replica")
        if name == "engine":
            c.add_argument("--replicas-file", help="one HOST:PORT per line, read again on SIGHUP")
            c.add_argument("--listen", action="append", required=True, help="unix:PATH or HOST:PORT")
            c.add_argument("--replica-timeout", default="8s")
            c.add_argument("--rebuild-rate", default="200MiB", help="bytes per second a rebuild may send")
        if name == "drop":
            c.add_argument("--volume-id", required=True, help="only the replica of this volume id is deleted")
        if name == "salvage":
            c.add_argument("--from", dest="trusted", required=True,
                           help="HOST:PORT of the replica to trust; its data replaces every other copy")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        runner = {"replica": run_replica, "engine": run_engine, "salvage": run_salvage, "drop": run_drop}[args.command]
        # uvloop: the data path moves 20-45 % more through the same CPU (bench/RESULTS.md)
        return uvloop.run(runner(args))
    except VolumeError as error:
        print(f"{args.command}: {error}", file=sys.stderr)
        return 2
    except OSError as error:
        print(f"{args.command}: {error.strerror or error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
