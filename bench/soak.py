"""Soak: N real agents, as `nodeorch dev` runs them, under a chaos schedule, with invariants
checked all along.

    python bench/soak.py [--agents 100] [--minutes 10] [--gap 20] [--seed 1] [--json]

The desired state: `work`, a service of N/3 instances (one per node), and `edge`, a global
service (one per node); both are sleeping processes. One fault at a time, `--gap` seconds of
calm after each, in a seeded order that covers every kind early:

- host_crash: kill -9 of an agent and its instances (the host went down), back after 8-15 s;
- agent_crash: kill -9 of the agent alone (its instances go on), restarted after 3-8 s (both
  strike a node that runs a `work` instance at that moment);
- stall: SIGSTOP of an agent for 2-6 s;
- partition: a tenth of the nodes cut from the rest with iptables for 10-20 s;
- loss: 10 % of the gossip packets between agents dropped (iptables statistic) for 20-30 s.

Node 1 is every agent's seed and is never faulted (an agent restarting with its only seed down
cannot join until it is back). Partitions and loss need root and iptables; without them they are
left out, and the report says so. The checker reads the ground truth (every node's process pid
files, each pid checked alive) twice a second, and every agent's member.dead events, and reports:

- duplicates: a slot of `work` running on two nodes, and for how long after the fault ended
  (invariant: no longer than the detection time);
- shortfalls: fewer `work` slots running than desired, and how long after the fault began they
  were restored (invariant: within detection + 5 s);
- false deaths: a node declared dead by a node while neither was faulted, from the start of the
  chaos on (invariant: none; deaths while every agent starts at once are counted apart);
- convergence: after the last fault, every agent holds every node's latest document (invariant:
  within 60 s);
- agent CPU (% of a core, over the soak, agents never killed) and RSS at the end.

Exits 1 if an invariant was broken. Leaves no process or iptables rule behind, even on failure.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import aiohttp
from benchlib import cpu_seconds, rss_mb

from drivers.attach.fuse_loop import release_all
from drivers.containers import logical_slot
from drivers.containers.process import process_start_ticks
from gossip import lan
from nodeorch.faces.client import call
from nodeorch.faces.dev import DevCluster
from nodeorch.reconcile.replica_server_keeper import stop_replica_server
from nodeorch.reconcile.volume_keeper import volume_attacher

CHAIN = "NODEORCH_SOAK"
KINDS = ("host_crash", "agent_crash", "stall", "partition", "loss")
NEEDS_IPTABLES = ("partition", "loss")
DURATIONS = {"host_crash": (8.0, 15.0), "agent_crash": (3.0, 8.0), "stall": (2.0, 6.0),
             "partition": (10.0, 20.0), "loss": (20.0, 30.0)}
RESTORE_MARGIN = 5.0
QUIET = 15.0
"""Seconds without a death before the chaos begins."""
CONVERGENCE_LIMIT = 60.0


def desired(agents: int, volume: bool = False) -> str:
    writer = f"""
[[volume]]
name = "soakdata"
size = "64MiB"
replicas = 3
replenish_wait = "60s"

[[service]]
name = "writer"
command = {json.dumps([sys.executable, "-m", "nodeorch.faces.sequence_writer", "${NODEORCH_VOLUME_SOAKDATA}",
                        "--pause", "0.05"])}
volumes = [{{ volume = "soakdata", path = "/data" }}]
stop_grace = "2s"
restart_delay = "1s"
""" if volume else ""
    return "revision = 1\n" + writer + f"""
[[service]]
name = "work"
command = ["sleep", "86400"]
scale = {max(2, agents // 3)}
stop_grace = "1s"
restart_delay = "500ms"

[[service]]
name = "edge"
command = ["sleep", "86400"]
global = true
stop_grace = "1s"
"""


# The schedule and the verdicts (pure) ----------------------------------------------------------------


@dataclass
class Fault:
    kind: str
    nodes: tuple[int, ...]
    """Indexes of the agents it strikes (for a partition: the cut-off group)."""
    duration: float
    started: float = 0.0
    ended: float = 0.0
    detected: float | None = None
    """Seconds from the start until a node first declared a struck node dead."""


def plan_chaos(rng: random.Random, agents: int, seconds: float, gap: float, kinds: Sequence[str]) -> list[Fault]:
    """Faults one after the other, each kind once before any repeats, filling `seconds`."""
    faults: list[Fault] = []
    used = 0.0
    order: list[str] = []
    while True:
        if not order:
            order = list(kinds)
            rng.shuffle(order)
        kind = order.pop()
        low, high = DURATIONS[kind]
        duration = round(rng.uniform(low, high), 1)
        if used + duration + gap > seconds:
            return faults
        if kind == "partition":
            size = max(1, agents // 10)
            first = rng.randrange(1, agents - size + 1)
            nodes = tuple(range(first, first + size))
        elif kind == "loss":
            nodes = ()
        else:
            nodes = (rng.randrange(1, agents),)
        faults.append(Fault(kind, nodes, duration))
        used += duration + gap


@dataclass
class Episode:
    what: str
    start: float
    end: float | None = None


@dataclass
class Tracker:
    """Duplicates and shortfalls of one scaled service, from the ground truth over time."""

    scale: int
    duplicates: dict[str, Episode] = field(default_factory=dict)
    shortfall: Episode | None = None
    closed: list[Episode] = field(default_factory=list)

    def observe(self, now: float, running: dict[str, set[str]]) -> None:
        for slot, nodes in running.items():
            if len(nodes) > 1 and slot not in self.duplicates:
                self.duplicates[slot] = Episode(f"duplicate {slot} on {','.join(sorted(nodes))}", now)
        for slot in [s for s in self.duplicates if len(running.get(s, ())) <= 1]:
            episode = self.duplicates.pop(slot)
            episode.end = now
            self.closed.append(episode)
        held = sum(1 for nodes in running.values() if nodes)
        if held < self.scale and self.shortfall is None:
            self.shortfall = Episode(f"shortfall {held}/{self.scale}", now)
        elif held >= self.scale and self.shortfall is not None:
            self.shortfall.end = now
            self.closed.append(self.shortfall)
            self.shortfall = None

    def finish(self, now: float) -> None:
        for episode in [*self.duplicates.values(), *([self.shortfall] if self.shortfall else [])]:
            episode.end = now
            self.closed.append(episode)
        self.duplicates.clear()
        self.shortfall = None


def cause(episode: Episode, faults: Sequence[Fault]) -> Fault | None:
    """The fault an episode follows from: the last one that started before it."""
    before = [f for f in faults if f.started and f.started <= episode.start]
    return before[-1] if before else None


def verdicts(episodes: Iterable[Episode], faults: Sequence[Fault], detection: float) -> list[dict[str, Any]]:
    """Each episode with its cause and whether it kept to its invariant."""
    out = []
    for episode in episodes:
        fault = cause(episode, faults)
        end = episode.end if episode.end is not None else episode.start
        if episode.what.startswith("duplicate"):
            after = max(0.0, end - fault.ended) if fault and fault.ended else end - episode.start
            ok, measure = after <= detection, {"after_fault_end": round(after, 1)}
        else:
            since = end - fault.started if fault else end - episode.start
            limit = (fault.detected if fault and fault.detected is not None else detection) + RESTORE_MARGIN
            ok, measure = since <= limit, {"restored_after_fault_start": round(since, 1), "limit": round(limit, 1)}
        out.append({"episode": episode.what, "fault": fault.kind if fault else None,
                    "lasted": round(end - episode.start, 1), "ok": ok, **measure})
    return out


def false_deaths(deaths: Iterable[tuple[str, str, float]], faults: Sequence[Fault], names: Sequence[str],
                 grace: float) -> list[tuple[str, str, float]]:
    """(observer, subject, time) deaths where neither node was struck by a fault then (or up to
    `grace` seconds after it ended)."""
    def struck(name: str, at: float) -> bool:
        index = names.index(name) if name in names else -1
        return any(index in f.nodes and f.started <= at <= (f.ended or at) + grace for f in faults)

    return [(o, s, t) for o, s, t in deaths if not struck(o, t) and not struck(s, t)]


# The cluster under test (I/O) ------------------------------------------------------------------------


def iptables_usable() -> bool:
    return os.geteuid() == 0 and shutil.which("iptables") is not None


def iptables(*args: str, check: bool = True) -> None:
    subprocess.run(["iptables", "-w", *args], check=check, capture_output=True)


def chain_create() -> None:
    chain_remove()
    iptables("-N", CHAIN)
    iptables("-I", "INPUT", "-j", CHAIN)


def chain_remove() -> None:
    iptables("-D", "INPUT", "-j", CHAIN, check=False)
    iptables("-F", CHAIN, check=False)
    iptables("-X", CHAIN, check=False)


def ip_ranges(ips: Sequence[str]) -> list[str]:
    """Consecutive addresses as a-b ranges for the iprange match."""
    ranges: list[list[str]] = []
    for ip in ips:
        if ranges and int.from_bytes(bytes(map(int, ip.split(".")))) == \
                int.from_bytes(bytes(map(int, ranges[-1][1].split(".")))) + 1:
            ranges[-1][1] = ip
        else:
            ranges.append([ip, ip])
    return [f"{a}-{b}" for a, b in ranges]


class Soak:
    def __init__(self, agents: int, folder: Path, rng: random.Random, volume: bool = False) -> None:
        self.rng = rng
        self.volume = volume
        self.writer = Tracker(1)
        self.cluster = DevCluster(agents, folder, desired(agents, volume))
        self.agents = agents
        self.scale = max(2, agents // 3)
        self.names = [f"node-{i + 1}" for i in range(agents)]
        self.tracker = Tracker(self.scale)
        self.deaths: list[tuple[str, str, float]] = []
        self.killed: set[int] = set()
        self.stopped: set[int] = set()

    # Ground truth

    def running(self, service: str = "work") -> dict[str, set[str]]:
        """logical slot of `service` -> nodes where a live process runs it."""
        out: dict[str, set[str]] = {str(i): set() for i in range(self.scale if service == "work" else 1)}
        for name in self.names:
            for pid_file in (self.cluster.folder / name / "data" / "run").glob(f"{service}-*.json"):
                with contextlib.suppress(OSError, ValueError, KeyError):
                    record = json.loads(pid_file.read_text())
                    if process_start_ticks(int(record["pid"])) == record.get("start_ticks"):
                        out.setdefault(logical_slot(str(record["slot"])), set()).add(name)
        return out

    async def watch_truth(self) -> None:
        while True:
            self.tracker.observe(time.time(), self.running())
            if self.volume:
                self.writer.observe(time.time(), self.running("writer"))
            await asyncio.sleep(0.5)

    async def watch_deaths(self, index: int) -> None:
        """member.dead events from one agent, across its restarts."""
        seen: set[tuple[float, int]] = set()
        api = self.cluster.apis[index]
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None, sock_read=60)) as session:
            while True:
                with contextlib.suppress(aiohttp.ClientError, OSError, ValueError):
                    url = f"http://{api}/v1/events?since=0&follow=1&kind=member.dead"
                    async with session.get(url, headers={"Host": api}) as response:
                        async for line in response.content:
                            if line.strip():
                                event = json.loads(line)
                                key = (event["time"], event["seq"])
                                if key not in seen:
                                    seen.add(key)
                                    self.deaths.append((self.names[index], event["node"], event["time"]))
                await asyncio.sleep(1.0)

    # Faults

    async def strike(self, fault: Fault) -> None:
        if fault.kind in ("host_crash", "agent_crash"):
            # A crash matters where work runs: strike a node that runs a `work` instance now.
            holding = [*self.running().values(), *(self.running("writer").values() if self.volume else ())]
            holders = sorted({self.names.index(n) for nodes in holding for n in nodes} - {0})
            if holders:
                fault.nodes = (self.rng.choice(holders),)
        fault.started = time.time()
        ips = self.cluster.ips
        if fault.kind in ("host_crash", "agent_crash"):
            (index,) = fault.nodes
            proc = self.cluster.procs[index]
            proc.send_signal(signal.SIGKILL)
            await proc.wait()
            self.killed.add(index)
            if fault.kind == "host_crash":
                self.kill_instances(index)
                await asyncio.to_thread(self.crash_volumes, index)
        elif fault.kind == "stall":
            (index,) = fault.nodes
            self.cluster.procs[index].send_signal(signal.SIGSTOP)
            self.stopped.add(index)
        elif fault.kind == "partition":
            group = [ips[i] for i in fault.nodes]
            rest = [ip for i, ip in enumerate(ips) if i not in fault.nodes]
            for a in ip_ranges(group):
                for b in ip_ranges(rest):
                    for src, dst in ((a, b), (b, a)):
                        iptables("-A", CHAIN, "-m", "iprange", "--src-range", src, "--dst-range", dst, "-j", "DROP")
        elif fault.kind == "loss":
            for span in ip_ranges(ips):
                iptables("-A", CHAIN, "-p", "udp", "-m", "iprange", "--src-range", span, "--dst-range", span,
                         "-m", "statistic", "--mode", "random", "--probability", "0.1", "-j", "DROP")
        detector = asyncio.create_task(self.detect(fault))
        await asyncio.sleep(fault.duration)
        await self.lift(fault)
        fault.ended = time.time()
        await asyncio.sleep(0)
        detector.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await detector

    async def detect(self, fault: Fault) -> None:
        struck = {self.names[i] for i in fault.nodes}
        while fault.detected is None:
            first = min((t for _, subject, t in self.deaths if subject in struck and t >= fault.started), default=None)
            if first is not None:
                fault.detected = first - fault.started
            await asyncio.sleep(0.2)

    async def lift(self, fault: Fault) -> None:
        if fault.kind in ("host_crash", "agent_crash"):
            (index,) = fault.nodes
            if fault.kind == "host_crash":
                for stale in (self.cluster.folder / self.names[index] / "data" / "run").glob("*.json"):
                    stale.unlink()  # the host rebooted: its pid files name nothing
            self.cluster.procs[index] = await self.cluster.start_agent(index)
            self.killed.discard(index)
        elif fault.kind == "stall":
            (index,) = fault.nodes
            self.cluster.procs[index].send_signal(signal.SIGCONT)
            self.stopped.discard(index)
        else:
            iptables("-F", CHAIN)

    def crash_volumes(self, index: int) -> None:
        """What a host crash takes with it: its engines, nbdfuse, replica server, mounts and loop devices."""
        data = self.cluster.folder / self.names[index] / "data"
        volumes = data / "volumes"
        for record in (volumes / "engines").glob("*.json"):
            with contextlib.suppress(OSError, ValueError, KeyError, ProcessLookupError):
                os.kill(int(json.loads(record.read_text())["pid"]), signal.SIGKILL)
        fuse = subprocess.run(["pgrep", "-f", f"nbdfuse {volumes}"], capture_output=True, text=True, check=False)
        for pid in fuse.stdout.split():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid), signal.SIGKILL)
        release_all(volumes)
        stop_replica_server(data, grace=0)

    def writes(self) -> dict[str, Any]:
        """Every acknowledged write, against what each start of the writer and the volume found."""
        acked: list[tuple[float, int]] = []
        found: list[tuple[float, int, bool]] = []
        for name in self.names:
            log = self.cluster.folder / name / "data" / "logs" / "writer-0.log"
            text = log.read_text(errors="replace") if log.exists() else ""
            acked += [(float(t), int(n)) for n, t in re.findall(r"^acked (\d+) at ([\d.]+)$", text, re.MULTILINE)]
            found += [(float(t), int(n), ok == "True")
                      for n, ok, t in re.findall(r"^found (\d+) in order=(\w+) at ([\d.]+)$", text, re.MULTILINE)]
        lost = []
        for at, count, in_order in found:
            before = max((n for t, n in acked if t < at), default=0)
            if count < before or not in_order:
                lost.append({"start_at": at, "found": count, "acked_before": before, "in_order": in_order})
        return {"acknowledged": max((n for _, n in acked), default=0), "writer_starts": len(found), "lost": lost}


    def kill_instances(self, index: int) -> None:
        for pid_file in (self.cluster.folder / self.names[index] / "data" / "run").glob("*.json"):
            with contextlib.suppress(OSError, ValueError, KeyError, ProcessLookupError):
                os.killpg(int(json.loads(pid_file.read_text())["pid"]), signal.SIGKILL)

    async def release(self) -> None:
        """Whatever a fault left held: stopped agents resumed, the iptables chain removed."""
        for index in list(self.stopped):
            with contextlib.suppress(ProcessLookupError):
                self.cluster.procs[index].send_signal(signal.SIGCONT)
        if iptables_usable():
            chain_remove()

    # Steady state

    async def all_placed(self, timeout: float) -> float:
        started = time.time()
        while time.time() - started < timeout:
            writing = not self.volume or any(self.running("writer").values())
            if sum(1 for nodes in self.running().values() if len(nodes) == 1) == self.scale and writing:
                return time.time() - started
            await asyncio.sleep(1)
        raise RuntimeError(f"work never ran {self.scale} instances (and the writer, with a volume) "
                           f"within {timeout:.0f} s")

    async def calm(self, quiet: float, timeout: float) -> None:
        """Wait until no node has declared another dead for `quiet` seconds (agents that all start
        at once on a small machine starve each other for a while), or `timeout`."""
        started = time.time()
        while time.time() - started < timeout:
            last = max((t for _, _, t in self.deaths), default=0.0)
            if time.time() - max(last, started) >= quiet:
                return
            await asyncio.sleep(1)

    async def converged(self, timeout: float) -> float | None:
        """Seconds until every agent holds every node's latest document (None: not within timeout)."""
        started = time.time()
        while time.time() - started < timeout:
            with contextlib.suppress(Exception):
                views = await asyncio.gather(*(call(api, "GET", "/v1/nodes") for api in self.cluster.apis))
                own = {name: next(d["version"] for d in view if d["name"] == name)
                       for name, view in zip(self.names, views, strict=True)}
                if all(len(view) == self.agents and all(not d["stale"] and d["version"] == own[d["name"]]
                                                          for d in view) for view in views):
                    return time.time() - started
            await asyncio.sleep(2)
        return None


async def soak(agents: int, minutes: float, gap: float, seed: int, keep: bool = False,
               volume: str = "auto") -> dict[str, Any]:
    kinds = [k for k in KINDS if k not in NEEDS_IPTABLES or iptables_usable()]
    rng = random.Random(seed)
    faults = plan_chaos(rng, agents, minutes * 60, gap, kinds)
    _, cannot_attach = volume_attacher(Path(tempfile.gettempdir()))
    if volume == "on" and cannot_attach:
        raise SystemExit(f"--volume on: {cannot_attach}")
    with_volume = volume == "on" or (volume == "auto" and not cannot_attach)
    run = Soak(agents, Path(tempfile.mkdtemp(prefix="nodeorch-soak-")), rng, with_volume)
    run.cluster.prepare()
    tasks: list[asyncio.Task[None]] = []
    if iptables_usable():
        chain_create()
    try:
        await run.cluster.start()
        placed = await run.all_placed(240)
        tasks = [asyncio.create_task(run.watch_truth())]
        tasks += [asyncio.create_task(run.watch_deaths(i)) for i in range(agents)]
        await run.calm(QUIET, 180)
        steady = [p.pid for p in run.cluster.procs]
        before = {pid: cpu_seconds(pid) for pid in steady}
        began = time.time()
        for number, fault in enumerate(faults, start=1):
            print(f"  fault {number}/{len(faults)}: {fault.kind} on "
                  f"{','.join(run.names[i] for i in fault.nodes) or 'every link'} for {fault.duration} s",
                  file=sys.stderr, flush=True)
            await run.strike(fault)
            await asyncio.sleep(gap)
        elapsed = time.time() - began
        survivors = [p.pid for p in run.cluster.procs if p.pid in before and p.returncode is None]
        cpu = [100 * (cpu_seconds(pid) - before[pid]) / elapsed for pid in survivors]
        rss = [rss_mb(p.pid) for p in run.cluster.procs if p.returncode is None]
        convergence = await run.converged(CONVERGENCE_LIMIT)
        run.tracker.finish(time.time())
        run.writer.finish(time.time())
        writes = run.writes() if with_volume else None
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await run.release()
        await run.cluster.stop()
        if keep:
            print(f"  the agents' folders and logs are kept in {run.cluster.folder}", file=sys.stderr)
        else:
            shutil.rmtree(run.cluster.folder, ignore_errors=True)
    detections = [f.detected for f in faults if f.kind in ("host_crash", "agent_crash") and f.detected is not None]
    config = lan()
    bound = 3 * config.probe_interval + config.suspicion_min_timeout(agents) * 2
    detection = statistics.median(detections) if detections else bound
    episodes = verdicts(run.tracker.closed, faults, detection)
    writer_episodes = verdicts(run.writer.closed, faults, detection)
    # Deaths before the chaos began (while every agent was starting at once) are counted apart.
    startup_deaths = [d for d in run.deaths if d[2] < began]
    wrong_deaths = false_deaths([d for d in run.deaths if d[2] >= began], faults, run.names, grace=detection + 5)
    return {
        "agents": agents, "minutes": minutes, "seed": seed, "placed_in": round(placed, 1),
        "left_out": [k for k in NEEDS_IPTABLES if k not in kinds],
        "faults": [{"kind": f.kind, "nodes": [run.names[i] for i in f.nodes], "duration": f.duration,
                    "from": round(f.started - began, 1), "to": round(f.ended - began, 1),
                    "detected": None if f.detected is None else round(f.detected, 1)} for f in faults],
        "chaos_began": began,
        "detection": round(detection, 1), "episodes": episodes, "false_deaths": wrong_deaths,
        "startup_deaths": len(startup_deaths),
        "volume": None if writes is None else {**writes, "episodes": writer_episodes},
        "volume_left_out": "" if with_volume else cannot_attach or "--volume off",
        "convergence": None if convergence is None else round(convergence, 1),
        "cpu_mean": round(statistics.mean(cpu), 2) if cpu else None, "cpu_max": round(max(cpu), 2) if cpu else None,
        "rss_mean": round(statistics.mean(rss), 1) if rss else None, "rss_max": round(max(rss), 1) if rss else None,
        "ok": all(e["ok"] for e in episodes) and not wrong_deaths and convergence is not None
        and (writes is None or not writes["lost"]),
    }


def report(result: dict[str, Any]) -> str:
    lines = [f"# soak: {result['agents']} agents, {result['minutes']} min, seed {result['seed']}, "
             f"{time.strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} cores", ""]
    if result["left_out"]:
        lines.append(f"left out (need root and iptables): {', '.join(result['left_out'])}")
    lines += [f"all `work` slots placed {result['placed_in']} s after the agents started",
              f"detection (kill to the first member.dead, median): {result['detection']} s", "",
              "| fault | nodes | duration | detected |", "|---|---|---|---|"]
    lines += [f"| {f['kind']} | {','.join(f['nodes']) or 'all'} | {f['duration']} s | "
              f"{'-' if f['detected'] is None else str(f['detected']) + ' s'} |" for f in result["faults"]]
    lines += ["", "| episode | after fault | lasted | measure | ok |", "|---|---|---|---|---|"]
    for e in result["episodes"]:
        measure = (f"{e['after_fault_end']} s after it ended" if "after_fault_end" in e
                   else f"restored {e['restored_after_fault_start']} s after it began (limit {e['limit']} s)")
        lines.append(f"| {e['episode']} | {e['fault']} | {e['lasted']} s | {measure} | {'yes' if e['ok'] else 'NO'} |")
    volume = result["volume"]
    if volume is None:
        lines += ["", f"volume: left out ({result['volume_left_out']})"]
    else:
        lines += ["", f"volume: {volume['acknowledged']} writes acknowledged; the writer restarted on existing data "
                      f"{volume['writer_starts']} times; acknowledged writes lost: {len(volume['lost'])} "
                      f"{volume['lost'][:3] or ''}"]
        lines += [f"  writer {e['episode']} after {e['fault']}: lasted {e['lasted']} s (a volume moves stop-first)"
                  for e in volume["episodes"]]
    lines += ["", f"false deaths: {len(result['false_deaths'])} {result['false_deaths'][:5] or ''} "
              f"(and {result['startup_deaths']} while the agents were all starting, before the chaos)",
              f"documents converged after the last fault: "
              f"{'no, not within 60 s' if result['convergence'] is None else str(result['convergence']) + ' s'}",
              f"agent CPU over the soak: mean {result['cpu_mean']} %, max {result['cpu_max']} % of a core; "
              f"RSS at the end: mean {result['rss_mean']} MB, max {result['rss_max']} MB",
              f"invariants: {'kept' if result['ok'] else 'BROKEN'}"]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--agents", type=int, default=100)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--gap", type=float, default=20.0, help="seconds of calm after each fault")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.add_argument("--keep", action="store_true", help="keep the agents' folders and logs")
    parser.add_argument("--volume", choices=["auto", "on", "off"], default="auto",
                        help="a writer on a replicated volume (auto: when this machine can attach volumes)")
    args = parser.parse_args()
    if args.agents < 3:
        parser.error("--agents: at least 3")

    def stop(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, stop)
    result = asyncio.run(soak(args.agents, args.minutes, args.gap, args.seed, args.keep, args.volume))
    print(json.dumps(result) if args.json else report(result), flush=True)
    sys.exit(0 if result["ok"] else 1)


if __name__ == "__main__":
    main()
