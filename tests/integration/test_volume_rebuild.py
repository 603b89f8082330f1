"""Online rebuild, as an operator sees it: a replica that comes back catches up on only what it
missed; an empty replacement is rebuilt in full without reading holes; fio keeps verifying while a
rebuild runs; afterwards every replica holds the same blocks."""

from __future__ import annotations

import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

from .test_volume_data_path import fio_with_a_fault
from .volumes import VolumeRig, io_ok, need, volume_rig, wait_until


def healthy_with_all(rig: VolumeRig, engine_status: dict[str, object]) -> bool:
    return engine_status.get("state") == "healthy" and engine_status.get("members") == rig.replica_addresses


def answered_everything(engine_status: dict[str, Any], address: str, since: float) -> bool:
    outstanding: dict[str, int] = engine_status.get("outstanding", {})
    return float(engine_status.get("updated_at", 0)) > since and outstanding.get(address) == 0


def same_blocks(folder: Path, volume: str = "vol") -> bool:
    images = [(folder / f"r{i}" / f"{volume}.img").read_bytes() for i in range(3)]
    return images[0] == images[1] == images[2]


def test_a_returning_replica_gets_only_the_chunks_it_missed(tmp_path: Path) -> None:
    with volume_rig(tmp_path) as rig:
        engine = rig.start_engine(size="64MiB", timeout="2s")
        assert io_ok(engine.qemu_io("write -P 0x01 0 8M", "flush"))
        # The flush is acknowledged once two replicas hold it; the third may still be writing, and
        # what it had not answered when it died is rightly caught up too. Kill it once it has caught up.
        flushed_at = time.time()
        wait_until(lambda: answered_everything(engine.status(), rig.replica_addresses[2], since=flushed_at))
        rig.replicas[2].signal(signal.SIGKILL)
        written = 2 << 20
        assert io_ok(engine.qemu_io("write -P 0x02 16M 1M", "write -P 0x03 40M 1M", "flush"))
        wait_until(lambda: engine.status().get("state") == "degraded")
        rig.restart_replica(2)
        wait_until(lambda: healthy_with_all(rig, engine.status()), 30)
        sent = engine.status()["io"]["rebuild_bytes"]
        print(f"catch-up sent {sent} bytes for {written} bytes written while the replica was away")
        assert 0 < sent <= 2 * written
        assert same_blocks(tmp_path)


def test_an_empty_replacement_is_rebuilt_in_full_without_reading_holes(tmp_path: Path) -> None:
    with volume_rig(tmp_path) as rig:
        engine = rig.start_engine(size="64MiB", timeout="2s")
        assert io_ok(engine.qemu_io("write -P 0x0a 0 2M", "write -P 0x0b 30M 1M", "flush"))
        rig.replicas[2].kill()
        shutil.rmtree(tmp_path / "r2")  # the disk was replaced
        assert io_ok(engine.qemu_io("write -P 0x0c 50M 1M", "flush"))
        wait_until(lambda: engine.status().get("state") == "degraded")
        rig.restart_replica(2)
        wait_until(lambda: healthy_with_all(rig, engine.status()), 30)
        sent = engine.status()["io"]["rebuild_bytes"]
        assert sent == 4 << 20, f"only the 4 MiB of data moved, not the 64 MiB volume ({sent})"
        assert same_blocks(tmp_path)
        rig.replicas[0].kill()  # the rebuilt replica now carries the volume with one other
        check = engine.qemu_io("read -P 0x0a 0 2M", "read -P 0x0b 30M 1M", "read -P 0x0c 50M 1M", "read -P 0 60M 1M")
        assert io_ok(check), check.stdout + check.stderr


def test_fio_verifies_while_a_replica_is_rebuilt(tmp_path: Path) -> None:
    with volume_rig(tmp_path) as rig:
        engine = rig.start_engine(size="64MiB", timeout="3s")
        assert io_ok(engine.qemu_io("write -P 0x5c 0 32M", "flush"))
        rig.replicas[1].kill()
        shutil.rmtree(tmp_path / "r1")
        wait_until(lambda: engine.status().get("state") == "degraded")
        fio = fio_with_a_fault(engine.uri, lambda: rig.restart_replica(1))
        assert fio.returncode == 0 and "err= 0" in fio.stdout, fio.stdout[-3000:] + fio.stderr[-2000:]
        wait_until(lambda: healthy_with_all(rig, engine.status()), 60)
        assert io_ok(engine.qemu_io("flush"))
        assert same_blocks(tmp_path)


def test_after_the_engine_is_killed_mid_write_the_next_one_makes_every_replica_the_same(tmp_path: Path) -> None:
    """Writes in flight when an engine dies may land on one member and not the other (none of
    them acknowledged); the next engine must not let a read's answer depend on which replica
    serves it. Here the volume runs on two of three replicas, one of them stalls, and the engine
    dies with writes that reached only the other (32 MiB in flight: more than the stalled one's
    socket buffers hold)."""
    with volume_rig(tmp_path) as rig:
        engine = rig.start_engine(size="16MiB", timeout="5s")
        assert io_ok(engine.qemu_io("write -P 0x5a 0 16M", "flush"))
        rig.replicas[2].kill()
        assert io_ok(engine.qemu_io("write -P 0x5b 0 64k", "flush"))
        wait_until(lambda: engine.status().get("state") == "degraded")
        load = subprocess.Popen([need("fio"), "--name=load", "--ioengine=nbd", f"--uri={engine.uri}",
                                 "--rw=randwrite", "--bs=1M", "--size=16M", "--iodepth=32", "--time_based",
                                 "--runtime=30"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            time.sleep(1.0)
            rig.replicas[1].signal(signal.SIGSTOP)
            time.sleep(0.5)
            engine.process.signal(signal.SIGKILL)
            load.wait(timeout=30)
        finally:
            load.kill()
            load.wait()
            rig.replicas[1].signal(signal.SIGCONT)
        rig.restart_replica(2)
        again = rig.start_engine(size="16MiB", tag="b")
        wait_until(lambda: healthy_and_settled(rig, again.status()), 60)
        assert same_blocks(tmp_path), "every replica holds the same blocks"
        assert again.status()["io"].get("resyncs") == 1, again.process.output()[-2000:]


def healthy_and_settled(rig: VolumeRig, engine_status: dict[str, Any]) -> bool:
    return (healthy_with_all(rig, engine_status) and not engine_status.get("rebuilds")
            and float(engine_status.get("updated_at", 0)) > time.time() - 0.5)
