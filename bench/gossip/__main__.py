"""Gossip benchmarks: our members against HashiCorp Serf and kinship, side by side, in one run.

    python bench/gossip real   [--sizes 10,30] [--systems ours,serf,kinship] [--kills 3]
    python bench/gossip stress [--size 10] [--seconds 120]
    python bench/gossip sim    [--sizes 100,1000,5000]
    python bench/gossip all

`real` starts N members per system as real processes on 127.0.0.1 (LAN profile, encrypted) and
prints convergence time, kill -9 to first suspect and to dead at every survivor (median, max), idle
CPU in % of one core per member, RSS per member and bytes per second per member (counted by
iptables on the members' ports, the same way for every system). `stress` drops 10 % of UDP packets
to the members' ports (iptables statistic match) and stops one member with SIGSTOP for 1.5 s every
10 s, and counts false suspicions and false deaths. `sim` runs our protocol core in virtual time.
Needs root for iptables; without it, the traffic and stress columns say so.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchlib import (
    MonitoredProcess as Member,
)
from benchlib import (
    fmt,
    free_ports,
    median,
    parse_json_line,
    parse_serf_line,
    wait_for,
)

from gossip import generate_key, lan
from gossip._messages import MemberState
from gossip._simulation import Simulation

HERE = Path(__file__).resolve().parent
CHAIN = "NODEORCH_BENCH"

def build(system: str, count: int, base: int, key: str) -> list[Member]:
    ports = free_ports(count, base)
    members = []
    for i, port in enumerate(ports):
        name = f"{system}-{i}"
        seed = f"127.0.0.1:{ports[0]}"
        if system == "ours":
            argv = [sys.executable, "-m", "gossip", "node", "--name", name, "--bind", f"127.0.0.1:{port}",
                    "--key", key, "--profile", "lan"] + (["--join", seed] if i else [])
            members.append(Member(name, port, argv, parse_json_line))
        elif system == "kinship":
            argv = [sys.executable, str(HERE / "kinship_member.py"), "--name", name, "--bind",
                    f"127.0.0.1:{port}", "--key", key] + (["--join", seed] if i else [])
            members.append(Member(name, port, argv, parse_json_line))
        else:
            rpc = port + 10000
            argv = ["serf", "agent", f"-node={name}", f"-bind=127.0.0.1:{port}", f"-rpc-addr=127.0.0.1:{rpc}",
                    f"-encrypt={key}", "-log-level=info", "-profile=lan"] + ([f"-join={seed}"] if i else [])
            members.append(Member(name, port, argv, parse_serf_line))
    return members


# Traffic accounting and fault injection with iptables ---------------------------------------------


def iptables(*args: str) -> bool:
    if shutil.which("iptables") is None or os.geteuid() != 0:
        return False
    return subprocess.run(["iptables", *args], capture_output=True, check=False).returncode == 0


def chain_setup(low: int, high: int, loss: float = 0.0) -> bool:
    chain_teardown()
    if not iptables("-N", CHAIN) or not iptables("-I", "INPUT", "-i", "lo", "-j", CHAIN):
        return False
    span = f"{low}:{high}"
    if loss:
        iptables("-A", CHAIN, "-p", "udp", "--dport", span, "-m", "statistic", "--mode", "random",
                 "--probability", str(loss), "-j", "DROP")
    iptables("-A", CHAIN, "-p", "udp", "--dport", span)
    iptables("-A", CHAIN, "-p", "tcp", "--dport", span)
    iptables("-A", CHAIN, "-p", "tcp", "--sport", span)
    return True


def chain_bytes() -> int | None:
    if shutil.which("iptables") is None or os.geteuid() != 0:
        return None
    out = subprocess.run(["iptables", "-L", CHAIN, "-v", "-x", "-n"], capture_output=True, text=True, check=False)
    if out.returncode != 0:
        return None
    total = 0
    for line in out.stdout.splitlines()[2:]:
        parts = line.split()
        if len(parts) > 2 and parts[2] != "DROP":
            total += int(parts[1])
    return total


def chain_teardown() -> None:
    while iptables("-D", "INPUT", "-i", "lo", "-j", CHAIN):
        pass
    iptables("-F", CHAIN)
    iptables("-X", CHAIN)


# Scenarios -------------------------------------------------------------------------------------------


@dataclass
class RealResult:
    system: str
    count: int
    convergence: float | None = None
    suspect: list[float] = field(default_factory=list)
    dead: list[float] = field(default_factory=list)
    cpu: float | None = None
    rss: float | None = None
    bps: float | None = None


async def run_real(system: str, count: int, kills: int, idle: float, base: int) -> RealResult:
    result = RealResult(system, count)
    members = build(system, count, base, generate_key())
    names = {m.name for m in members}
    counting = chain_setup(min(m.port for m in members), max(m.port for m in members))
    try:
        await members[0].start()
        await asyncio.sleep(0.5)
        await asyncio.gather(*(m.start() for m in members[1:]))

        def everyone_knows_everyone() -> bool:
            return all(names - {m.name} <= m.seen("join") for m in members)

        # Convergence: from the last member's first sight of the cluster (its join completed)
        # to the moment every member has seen every other one join.
        if await wait_for(everyone_knows_everyone, 60):
            last_join = max(min(at for at, k, _ in m.events if k == "join") for m in members[1:])
            done = max(max(at for at, k, _ in m.events if k == "join") for m in members)
            result.convergence = max(0.0, done - last_join)
        await asyncio.sleep(3)

        cpu0 = [m.cpu_seconds() for m in members]
        bytes0 = chain_bytes() if counting else None
        t0 = time.monotonic()
        await asyncio.sleep(idle)
        elapsed = time.monotonic() - t0
        result.cpu = 100 * statistics.mean(m.cpu_seconds() - c for m, c in zip(members, cpu0, strict=False)) / elapsed
        result.rss = statistics.mean(m.rss_mb() for m in members)
        bytes1 = chain_bytes() if counting else None
        if bytes0 is not None and bytes1 is not None:
            result.bps = (bytes1 - bytes0) / elapsed / count

        survivors = list(members)
        for k in range(kills):
            victim = survivors[1 + k * 3 % (len(survivors) - 1)]
            survivors.remove(victim)
            killed = time.time()
            victim.signal(signal.SIGKILL)

            def all_dead(v: Member = victim, t: float = killed) -> bool:
                return all(s.first("dead", v.name, t) is not None for s in survivors)

            if not await wait_for(all_dead, 90):
                print(f"  {system} N={count}: {victim.name} not declared dead everywhere within 90 s")
            suspects = [s.first("suspect", victim.name, killed) for s in survivors]
            found = [t - killed for t in suspects if t is not None]
            if found:
                result.suspect.append(min(found))
            dead = [t - killed for s in survivors if (t := s.first("dead", victim.name, killed))]
            result.dead += dead
            print(f"  kill -9 {victim.name}: first suspect {min(found, default=float('nan')):.2f} s, dead at "
                  f"all {len(survivors)} survivors: median {statistics.median(dead) if dead else float('nan'):.2f} s")
            await asyncio.sleep(2)
    finally:
        await asyncio.gather(*(m.stop() for m in members))
        chain_teardown()
    return result


def episodes(suspects: list[tuple[float, str]], gap: float = 5.0) -> int:
    """Suspicions of one member that follow each other within `gap` seconds are one episode, however
    many observers report them: Serf logs only the prober's suspicion, kinship and ours every node's."""
    last: dict[str, float] = {}
    count = 0
    for at, name in suspects:
        if at - last.get(name, -1e9) > gap:
            count += 1
        last[name] = at
    return count


@dataclass
class StressResult:
    system: str
    count: int
    episodes: int = 0
    false_suspicions: int = 0
    false_deaths: int = 0
    loss_applied: bool = False


async def run_stress(system: str, count: int, seconds: float, base: int) -> StressResult:
    result = StressResult(system, count)
    members = build(system, count, base, generate_key())
    names = {m.name for m in members}
    try:
        await members[0].start()
        await asyncio.sleep(0.5)
        await asyncio.gather(*(m.start() for m in members[1:]))
        await wait_for(lambda: all(names - {m.name} <= m.seen("join") for m in members), 60)
        await asyncio.sleep(3)
        result.loss_applied = chain_setup(min(m.port for m in members), max(m.port for m in members), 0.10)
        start = time.time()
        victim = members[count // 2]
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            victim.signal(signal.SIGSTOP)
            await asyncio.sleep(1.5)
            victim.signal(signal.SIGCONT)
            await asyncio.sleep(8.5)
        chain_teardown()
        await asyncio.sleep(5)  # let the last suspicions resolve one way or the other
        suspects = sorted(
            (at, name) for m in members for at, kind, name in m.events if kind == "suspect" and at >= start
        )
        result.false_suspicions = len(suspects)
        result.episodes = episodes(suspects)
        result.false_deaths = sum(1 for m in members for at, kind, _ in m.events if kind == "dead" and at >= start)
    finally:
        chain_teardown()
        await asyncio.gather(*(m.stop() for m in members))
    return result


# Simulation ----------------------------------------------------------------------------------------------


def run_sim(count: int) -> dict[str, float]:
    config = lan()
    sim = Simulation(config, seed=count, record_events=False)
    built = time.monotonic()
    nodes = sim.converged_cluster(count)
    sim.run_for(5)
    build_seconds = time.monotonic() - built
    # Dissemination of one update: a metadata change of one member.
    origin = nodes[0]
    sent = sum(n.packets_sent for n in nodes)
    start = sim.now
    sim._apply(origin, origin.core.set_meta(sim.now, b"v2"))
    target = int(count * 0.999)

    def informed() -> int:
        return sum(1 for n in nodes if (m := n.core.member(origin.name)) is not None and m.meta == b"v2")

    sim.run_for(60, stop=lambda: informed() >= target, check_every=0.02)
    rounds = (sim.now - start) / config.gossip_interval
    # Detection of a failure.
    victim = nodes[count // 2]
    sim.kill(victim.name)
    killed = sim.now
    sim.run_for(300, stop=lambda: sim.all_see(victim.name, MemberState.DEAD), check_every=0.05)
    detection = sim.now - killed
    # Idle message rate.
    sent = sum(n.packets_sent for n in nodes)
    idle_start = sim.now
    sim.run_for(10)  # push-pull of full member lists makes each simulated second cost O(N^2) at 5000
    rate = (sum(n.packets_sent for n in nodes) - sent) / (sim.now - idle_start) / len(sim.running())
    return {"rounds": rounds, "detection": detection, "msgs": rate, "build": build_seconds}


# Reporting ----------------------------------------------------------------------------------------------


def print_real(results: list[RealResult]) -> None:
    print("\n## Real processes on loopback (LAN profile, encrypted)\n")
    print("| system | N | converge | first suspect (median) | dead everywhere median / max | idle CPU %/member |"
          " RSS MB/member | bytes/s/member |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r.system} | {r.count} | {fmt(r.convergence, ' s')} | {fmt(median(r.suspect), ' s')} | "
              f"{fmt(median(r.dead), ' s')} / {fmt(max(r.dead) if r.dead else None, ' s')} | {fmt(r.cpu, '', 3)} | "
              f"{fmt(r.rss, '', 1)} | {fmt(r.bps, '', 0)} |")
    for count in sorted({r.count for r in results}):
        ours = next((r for r in results if r.system == "ours" and r.count == count), None)
        if ours is None:
            continue
        for peer in results:
            if peer.count != count or peer.system == "ours":
                continue
            ratios = []
            for label, a, b in (
                ("dead median", median(ours.dead), median(peer.dead)),
                ("CPU", ours.cpu, peer.cpu),
                ("RSS", ours.rss, peer.rss),
                ("bytes/s", ours.bps, peer.bps),
            ):
                if a is not None and b:
                    ratios.append(f"{label} x{a / b:.2f}")
            print(f"- N={count}, ours / {peer.system}: " + ", ".join(ratios))


async def main_async(args: argparse.Namespace) -> None:
    systems = args.systems.split(",")
    if "serf" in systems and shutil.which("serf") is None:
        print("serf is not installed (apt-get install serf); measuring without it")
        systems.remove("serf")
    if args.mode in ("real", "all"):
        results = []
        for count in [int(s) for s in args.sizes.split(",")]:
            for system in systems:
                print(f"# {system}, N={count} ...", flush=True)
                results.append(await run_real(system, count, args.kills, args.idle, 21000))
        print_real(results)
    if args.mode in ("stress", "all"):
        print(f"\n## Stress: 10 % UDP loss, one member SIGSTOPped 1.5 s every 10 s, {args.seconds:.0f} s\n")
        print("| system | N | suspicion episodes | suspicion reports | false deaths | loss applied |")
        print("|---|---|---|---|---|---|")
        for system in systems:
            r = await run_stress(system, args.size, args.seconds, 23000)
            print(f"| {r.system} | {r.count} | {r.episodes} | {r.false_suspicions} | {r.false_deaths} | "
                  f"{'yes' if r.loss_applied else 'no (needs root and iptables)'} |", flush=True)
    if args.mode in ("sim", "all"):
        print("\n## Simulation (virtual time, LAN profile)\n")
        print("| N | rounds to 99.9 % | detection | messages/node/s | wall time (build / whole run) | peak memory |")
        print("|---|---|---|---|---|---|")
        for count in [int(s) for s in args.sim_sizes.split(",")]:
            sim = run_sim_isolated(count)
            print(f"| {count} | {sim['rounds']:.1f} | {sim['detection']:.1f} s | {sim['msgs']:.2f} | "
                  f"{sim['build']:.0f} s / {sim['wall']:.0f} s | {sim['rss'] / 1024:.2f} GB |", flush=True)


def run_sim_isolated(count: int) -> dict[str, float]:
    """run_sim in a process of its own, so its peak memory is its own."""
    result = subprocess.run([sys.executable, __file__, "sim-one", "--sim-sizes", str(count)], capture_output=True,
                            text=True, check=True)
    values: dict[str, float] = json.loads(result.stdout.splitlines()[-1])
    return values


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", choices=["real", "stress", "sim", "all", "sim-one"])
    parser.add_argument("--sizes", default="10,30")
    parser.add_argument("--systems", default="ours,serf,kinship")
    parser.add_argument("--kills", type=int, default=3)
    parser.add_argument("--idle", type=float, default=20.0)
    parser.add_argument("--size", type=int, default=10)
    parser.add_argument("--seconds", type=float, default=120.0)
    parser.add_argument("--sim-sizes", default="100,1000,5000")
    args = parser.parse_args()
    if args.mode == "sim-one":
        started = time.monotonic()
        result = run_sim(int(args.sim_sizes))
        result["wall"] = time.monotonic() - started
        result["rss"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # MB
        print(json.dumps(result))
        return
    print(f"# gossip benchmark, {time.strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} cores, Python "
          f"{sys.version.split()[0]}")
    try:
        asyncio.run(main_async(args))
    finally:
        chain_teardown()


if __name__ == "__main__":
    main()
