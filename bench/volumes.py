"""Volume benchmark: a 3-replica volume on loopback against one copy served by `nbdkit file` on the
same filesystem, side by side in one run, with fio's nbd engine; then rebuild speed, catch-up
traffic and the stall fio sees when a replica is killed.

A third column measures the same topology written in C, in the same run: QEMU's quorum block
driver (qemu-nbd) exporting three NBD children, each an `nbdkit file` server on a TCP loopback
port. It does what the engine does (every write to three servers over TCP, reads from the first
one), so it shows what three copies over loopback cost on this machine whatever the language.

    python bench/volumes.py [--size 512MiB] [--runtime 10] [--rebuild-data 256MiB] [--away 30]

Needs fio, nbdkit, qemu-io and qemu-nbd (make test installs them as root).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.integration.conftest import free_port
from tests.integration.volumes import Engine, VolumeRig, run, wait_until

JOBS = {
    "seq write 1M QD8": ["--rw=write", "--bs=1M", "--iodepth=8"],
    "rand write 4k QD32": ["--rw=randwrite", "--bs=4k", "--iodepth=32"],
    "rand read 4k QD32": ["--rw=randread", "--bs=4k", "--iodepth=32"],
    "rand write 4k QD1": ["--rw=randwrite", "--bs=4k", "--iodepth=1"],
}


def fio(uri: str, args: list[str], size: str, runtime: float) -> dict[str, Any]:
    result = run("fio", "--name=bench", "--ioengine=nbd", f"--uri={uri}", f"--size={size}", "--time_based",
                 f"--runtime={runtime}", "--output-format=json", *args, timeout=runtime + 120)
    if result.returncode != 0:
        raise RuntimeError(f"fio failed: {result.stderr[-500:]}")
    job = json.loads(result.stdout[result.stdout.index("{"):])["jobs"][0]  # after its "connected" line
    side = job["read"] if "read" in args[0] else job["write"]
    percentiles = side.get("clat_ns", {}).get("percentile", {})
    return {"iops": side["iops"], "mib_s": side["bw_bytes"] / 2**20,
            "p99_ms": percentiles.get("99.000000", 0) / 1e6}


def wait_for_file(path: Path, proc: subprocess.Popen[bytes], what: str) -> None:
    """Until `proc` created `path` (a socket, a pid file); RuntimeError if it exited instead."""
    wait_until(lambda: path.exists() or proc.poll() is not None, 10)
    if proc.poll() is not None:
        raise RuntimeError(f"{what} exited {proc.returncode}")


def stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        proc.terminate()
    for proc in procs:
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


@contextlib.contextmanager
def nbdkit_file(folder: Path, size: str) -> Iterator[str]:
    image = folder / "nbdkit.img"
    run("truncate", "-s", size.replace("iB", ""), str(image))
    socket = folder / "nbdkit.sock"
    proc = subprocess.Popen(["nbdkit", "-f", "-U", str(socket), "file", str(image)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_file(socket, proc, "nbdkit")
        yield f"nbd+unix:///?socket={socket}"
    finally:
        stop([proc])


@contextlib.contextmanager
def qemu_quorum(folder: Path, size: str) -> Iterator[str]:
    """qemu-nbd's quorum of three `nbdkit file` servers on TCP loopback ports (reads from the first)."""
    procs: list[subprocess.Popen[bytes]] = []
    options = ["driver=quorum", "read-pattern=fifo", "vote-threshold=2"]
    try:
        for index in range(3):
            image, port = folder / f"quorum-{index}.img", free_port()
            run("truncate", "-s", size.replace("iB", ""), str(image))
            procs.append(subprocess.Popen(["nbdkit", "-f", "-i", "127.0.0.1", "-p", str(port), "-P",
                                           str(folder / f"quorum-{index}.pid"), "file", str(image)],
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            wait_for_file(folder / f"quorum-{index}.pid", procs[-1], "nbdkit")
            options += [f"children.{index}.driver=nbd", f"children.{index}.server.type=inet",
                        f"children.{index}.server.host=127.0.0.1", f"children.{index}.server.port={port}"]
        socket = folder / "quorum.sock"
        procs.append(subprocess.Popen(["qemu-nbd", "--persistent", "-k", str(socket), "--image-opts",
                                       ",".join(options)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        wait_for_file(socket, procs[-1], "qemu-nbd")
        yield f"nbd+unix:///?socket={socket}"
    finally:
        stop(procs)


def fill(engine: Engine, data: str) -> None:
    result = run("qemu-io", "-f", "raw", engine.uri, "-c", f"write -P 0x3c 0 {data.replace('iB', '')}",
                 "-c", "flush", timeout=600)
    if result.returncode != 0:
        raise RuntimeError(result.stderr)


def wait_healthy(engine: Engine, count: int, timeout: float) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        status = engine.status()
        if status.get("state") == "healthy" and len(status.get("members", [])) == count:
            return time.monotonic() - started
        time.sleep(0.1)
    raise RuntimeError(f"not healthy within {timeout}s: {engine.status()}")


def show(name: str, results: list[dict[str, Any]]) -> str:
    ours, native, quorum = results
    if "QD1" in name:
        cells = [f"{r['p99_ms']:.3f} ms" for r in results]
        return (f"| {name} p99 latency | {' | '.join(cells)} | x{ours['p99_ms'] / max(native['p99_ms'], 1e-9):.1f} "
                f"| x{ours['p99_ms'] / max(quorum['p99_ms'], 1e-9):.1f} |")
    key, unit = ("mib_s", "MiB/s") if "1M" in name else ("iops", "IOPS")
    cells = [f"{r[key]:.0f} {unit}" for r in results]
    return (f"| {name} | {' | '.join(cells)} | {100 * ours[key] / native[key]:.0f} % "
            f"| {100 * ours[key] / quorum[key]:.0f} % |")


def throughput(folder: Path, size: str, runtime: float) -> None:
    print("\n| workload | nodeorch 3 replicas | nbdkit file (1 copy) | QEMU quorum of 3 nbdkit (C) "
          "| ours / nbdkit | ours / QEMU quorum |")
    print("|---|---|---|---|---|---|")
    rig = VolumeRig(folder / "tp")
    try:
        engine = rig.start_engine(size=size)
        with nbdkit_file(folder, size) as native, qemu_quorum(folder, size) as quorum:
            for name, args in JOBS.items():
                results = [fio(uri, args, size, runtime) for uri in (engine.uri, native, quorum)]
                print(show(name, results), flush=True)
    finally:
        rig.close()


def foreground_during_rebuild(rig: VolumeRig, engine: Engine, folder: Path) -> None:
    """4k random writes at QD8 while replica 2 is rebuilt in full, against the same load on the
    degraded volume just before: IOPS per quarter second from fio's log, split by the rebuild's
    window as the engine's status shows it."""
    rig.replicas[2].kill()
    shutil.rmtree(rig.folder / "r2")
    while engine.status().get("state") != "degraded":
        time.sleep(0.1)
    log = folder / "fg"
    args = ["fio", "--name=fg", "--ioengine=nbd", f"--uri={engine.uri}", "--rw=randwrite", "--bs=4k",
            "--size=1G", "--iodepth=8", "--time_based", "--runtime=60", "--output-format=json",
            f"--write_iops_log={log}", "--log_avg_msec=250"]
    began = time.monotonic()
    with subprocess.Popen(args, stdout=subprocess.PIPE, text=True) as load:
        time.sleep(3)
        rig.restart_replica(2)
        while not engine.status().get("rebuilds"):
            time.sleep(0.05)
        start = time.monotonic() - began
        while engine.status().get("rebuilds"):
            time.sleep(0.05)
        end = time.monotonic() - began
        load.send_signal(signal.SIGINT)
        load.communicate(timeout=60)
    samples = [(int(f[0]) / 1000, int(f[1])) for f in (line.split(",") for line in
                                                       (folder / "fg_iops.1.log").read_text().splitlines())]
    before = [v for t, v in samples if 0.5 < t < 3]
    during = [v for t, v in samples if start + 0.25 < t < end - 0.25] or [v for t, v in samples if start < t < end]
    print(f"4k random writes QD8 on the degraded volume: {sum(before) / max(len(before), 1):.0f} IOPS; while a "
          f"replica is rebuilt in full ({end - start:.1f} s): {sum(during) / max(len(during), 1):.0f} IOPS")
    wait_healthy(engine, 3, 600)


def repairs(folder: Path, data: str, away: float) -> None:
    rig = VolumeRig(folder / "rb")
    try:
        engine = rig.start_engine(size="1GiB", timeout="2s")
        fill(engine, data)
        rig.replicas[2].kill()
        shutil.rmtree(rig.folder / "r2")
        while engine.status().get("state") != "degraded":
            time.sleep(0.1)
        rig.restart_replica(2)
        seconds = wait_healthy(engine, 3, 600)
        io = engine.status()["io"]
        sent, copying = io.get("rebuild_bytes", 0), io.get("rebuild_ms", 0) / 1000
        print(f"\nfull rebuild of {data} of data into an empty replica (1 GiB volume): copied in {copying:.1f} s, "
              f"{sent / max(copying, 0.001) / 1e6:.0f} MB/s, {sent / 2**20:.0f} MiB sent (holes not read); healthy "
              f"{seconds:.1f} s after the replica came back (the engine retries absent replicas every 2 s)")

        foreground_during_rebuild(rig, engine, folder)

        before = engine.status()["io"].get("rebuild_bytes", 0)
        rig.replicas[1].signal(signal.SIGKILL)
        started = time.monotonic()
        with subprocess.Popen(["fio", "--name=away", "--ioengine=nbd", f"--uri={engine.uri}", "--rw=randwrite",
                               "--bs=4k", "--size=1G", "--rate_iops=500", "--time_based", f"--runtime={away}",
                               "--output-format=json"], stdout=subprocess.PIPE, text=True) as load:
            out, _ = load.communicate(timeout=away + 120)
        written = json.loads(out[out.index("{"):])["jobs"][0]["write"]["io_bytes"]
        while engine.status().get("state") != "degraded" and time.monotonic() - started < 10:
            time.sleep(0.1)
        rig.restart_replica(1)
        wait_healthy(engine, 3, 600)
        caught_up = engine.status()["io"].get("rebuild_bytes", 0) - before
        print(f"replica away {away:.0f} s under 500 random 4k writes/s: {written / 2**20:.1f} MiB written, "
              f"{caught_up / 2**20:.1f} MiB sent to catch up (x{caught_up / max(written, 1):.2f})")

        with subprocess.Popen(["fio", "--name=stall", "--ioengine=nbd", f"--uri={engine.uri}", "--rw=randwrite",
                               "--bs=4k", "--size=1G", "--iodepth=1", "--time_based", "--runtime=6",
                               "--output-format=json", "--write_lat_log=" + str(folder / "lat"),
                               "--log_avg_msec=0"], stdout=subprocess.PIPE, text=True) as load:
            time.sleep(2)
            rig.replicas[0].signal(signal.SIGKILL)
            load.communicate(timeout=120)
        latencies = [int(line.split(",")[1]) / 1e6 for line in (folder / "lat_clat.1.log").read_text().splitlines()]
        print(f"kill -9 of a replica under fio (QD1 4k writes): longest single write {max(latencies):.1f} ms, "
              f"{len(latencies)} writes, no error")
    finally:
        rig.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="512MiB")
    parser.add_argument("--runtime", type=float, default=10.0)
    parser.add_argument("--rebuild-data", default="256MiB")
    parser.add_argument("--away", type=float, default=30.0)
    args = parser.parse_args()
    for tool in ("fio", "nbdkit", "qemu-io", "qemu-nbd"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is missing (apt-get install fio nbdkit qemu-utils)")
    print(f"# volume benchmark, {time.strftime('%Y-%m-%d %H:%M')}, loopback, page cache")
    with tempfile.TemporaryDirectory(prefix="nodeorch-bench-volumes-") as folder:
        throughput(Path(folder), args.size, args.runtime)
        repairs(Path(folder), args.rebuild_data, args.away)


if __name__ == "__main__":
    main()
