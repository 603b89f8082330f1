"""The volume data path as a user meets it: replica servers and engines as real processes, real NBD
clients (nbdinfo, qemu-io, qemu-img, nbdcopy, fio) reading back what they wrote, through replica
failures, a lost majority, a second engine, and garbage on every port."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from nodeorch.spec.secret_files import write_keyring

from .volumes import cut_tcp_ports, io_ok, need, run, volume_rig, wait_until


def test_real_clients_read_back_what_they_wrote(tmp_path: Path) -> None:
    with volume_rig(tmp_path) as rig:
        engine = rig.start_engine(size="64MiB")
        info = run(need("nbdinfo"), "--json", engine.uri)
        assert info.returncode == 0, info.stderr
        assert '"export-size": 67108864' in info.stdout and '"can_flush": true' in info.stdout
        result = engine.qemu_io("write -P 0xaa 0 1M", "write -P 0x55 -f 4M 64k", "flush", "discard 0 64k",
                                "write -z 8M 1M", "read -P 0 0 64k", "read -P 0xaa 64k 960k",
                                "read -P 0x55 4M 64k", "read -P 0 8M 1M")
        assert io_ok(result), result.stdout + result.stderr
        over = engine.qemu_io("write -P 1 64M 4k")
        assert not io_ok(over), "a write beyond the end is refused"
        source = tmp_path / "source.img"
        source.write_bytes(os.urandom(3 << 20))
        converted = run(need("qemu-img"), "convert", "-n", "-f", "raw", "-O", "raw", str(source), engine.tcp_uri)
        assert converted.returncode == 0, converted.stderr
        copy = tmp_path / "copy.img"
        copied = run(need("nbdcopy"), engine.uri, str(copy))
        assert copied.returncode == 0, copied.stderr
        assert copy.read_bytes()[: 3 << 20] == source.read_bytes()
        for index in range(3):  # every replica holds the same blocks
            assert (tmp_path / f"r{index}" / "vol.img").read_bytes()[: 3 << 20] == source.read_bytes()


def fio_with_a_fault(uri: str, fault: Callable[[], None]) -> subprocess.CompletedProcess[str]:
    """fio writing 4k blocks at random for about 4 s and verifying each (crc32c) afterwards, with
    `fault` done a second in, while it writes."""
    args = [need("fio"), "--name=verify", "--ioengine=nbd", f"--uri={uri}", "--rw=randwrite", "--bs=4k",
            "--size=32M", "--rate_iops=2000", "--iodepth=8", "--verify=crc32c", "--verify_fatal=1",
            "--verify_state_save=0", "--do_verify=1"]
    with subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as fio:
        time.sleep(1.0)
        fault()
        out, err = fio.communicate(timeout=180)
        return subprocess.CompletedProcess(args, fio.returncode, out, err)


def test_fio_verifies_through_a_kill_9_of_one_replica(tmp_path: Path) -> None:
    with volume_rig(tmp_path) as rig:
        engine = rig.start_engine(size="64MiB", timeout="3s")
        fio = fio_with_a_fault(engine.uri, lambda: rig.replicas[2].signal(signal.SIGKILL))
        assert fio.returncode == 0 and "err= 0" in fio.stdout, fio.stdout[-3000:] + fio.stderr[-2000:]
        wait_until(lambda: engine.status().get("state") == "degraded")
        status = engine.status()
        assert status["members"] == rig.replica_addresses[:2] and status["set_version"] == 2
        assert status["io"]["ejections"] == 1


def test_without_a_majority_writes_fail_and_nothing_acknowledged_is_lost(tmp_path: Path) -> None:
    with volume_rig(tmp_path) as rig:
        engine = rig.start_engine(size="32MiB")
        assert io_ok(engine.qemu_io("write -P 0x11 0 2M", "flush"))
        rig.replicas[1].kill()
        assert io_ok(engine.qemu_io("write -P 0x22 2M 1M", "flush")), "one of three lost: still a majority"
        rig.replicas[2].kill()
        refused = engine.qemu_io("write -P 0x33 0 64k", timeout=60)
        assert not io_ok(refused), "one of three left: the write must fail, not be acknowledged"
        assert "Input/output error" in refused.stdout + refused.stderr
        wait_until(lambda: engine.status().get("state") == "faulted")
        engine.process.kill()
        rig.restart_replica(1)
        rig.restart_replica(2)
        again = rig.start_engine(size="32MiB", tag="b")
        check = again.qemu_io("read -P 0x11 0 2M", "read -P 0x22 2M 1M")
        assert io_ok(check), check.stdout + check.stderr
        wait_until(lambda: again.status().get("epoch") == 2)
        status = again.status()
        first, missed, last = rig.replica_addresses
        assert status["members"] == [first, last], "the replicas of the last member set serve"
        assert status["stale"] == [missed], "the replica that missed acknowledged writes is not trusted"


def test_an_engine_that_cannot_reach_a_majority_refuses_to_start_and_names_the_replicas(tmp_path: Path) -> None:
    with volume_rig(tmp_path) as rig:
        first = rig.start_engine(size="32MiB")
        assert io_ok(first.qemu_io("write -P 0x44 0 1M", "flush"))
        first.process.kill()
        rig.replicas[0].kill()
        rig.replicas[1].kill()
        refused = rig.start_engine(size="32MiB", tag="b", wait=False)
        assert refused.process.proc.wait(30) == 1
        text = refused.process.log.read_text()
        assert "cannot serve" in text and rig.replica_addresses[0] in text and rig.replica_addresses[1] in text


def test_a_second_engine_fences_the_first_which_can_then_acknowledge_nothing(tmp_path: Path) -> None:
    with volume_rig(tmp_path) as rig:
        old = rig.start_engine(size="32MiB", tag="old")
        assert io_ok(old.qemu_io("write -P 0x66 0 1M", "flush", "read -P 0x66 0 1M"))
        wait_until(lambda: old.status().get("io", {}).get("local_reads", 0) > 0)  # from r0's file directly
        new = rig.start_engine(size="32MiB", tag="new")
        assert not io_ok(old.qemu_io("read 0 64k")), "the fenced engine served a read from its host's replica"
        stale = old.qemu_io("write -P 0x77 0 64k")
        assert not io_ok(stale), "the fenced engine acknowledged a write"
        wait_until(lambda: str(old.status().get("fault", "")).startswith("fenced"))
        check = new.qemu_io("read -P 0x66 0 1M")
        assert io_ok(check), check.stdout + check.stderr
        assert new.status()["epoch"] > old.status()["epoch"]


def test_a_stopped_replica_is_ejected_and_io_resumes(tmp_path: Path) -> None:
    with volume_rig(tmp_path) as rig:
        engine = rig.start_engine(size="32MiB", timeout="2s")
        assert io_ok(engine.qemu_io("write -P 0x12 0 64k"))
        rig.replicas[0].signal(signal.SIGSTOP)
        started = time.monotonic()
        resumed = engine.qemu_io("write -P 0x13 0 64k", "flush", "read -P 0x13 0 64k", timeout=60)
        stall = time.monotonic() - started
        assert io_ok(resumed), resumed.stdout + resumed.stderr
        print(f"I/O resumed {stall:.2f}s after the replica stopped (replica timeout 2s)")
        wait_until(lambda: engine.status().get("members") == rig.replica_addresses[1:])


def test_garbage_on_the_nbd_and_replica_ports_is_refused_and_harmless(tmp_path: Path) -> None:
    with volume_rig(tmp_path) as rig:
        engine = rig.start_engine(size="32MiB")
        host, port = rig.replica_addresses[0].rsplit(":", 1)
        for target in ((host, int(port)), ("127.0.0.1", engine.port)):
            for garbage in (os.urandom(64), b"\x00" * 4096, b"NOVR1" + os.urandom(200), b""):
                with socket.create_connection(target, timeout=5) as conn:
                    conn.sendall(garbage)
                    conn.shutdown(socket.SHUT_WR)
                    conn.settimeout(5)
                    while conn.recv(4096):
                        pass
        assert all(p.proc.poll() is None for p in [*rig.replicas, engine.process])
        assert io_ok(engine.qemu_io("write -P 0x5a 0 64k", "read -P 0x5a 0 64k"))
        assert engine.status()["members"] == rig.replica_addresses, "no replica was ejected by the garbage"
        wait_until(lambda: '"protocol": ' in (tmp_path / "r0.status").read_text())  # refusals are counted


def test_a_client_without_the_cluster_key_cannot_touch_a_replica(tmp_path: Path) -> None:
    with volume_rig(tmp_path) as rig:
        (tmp_path / "other").mkdir()
        other = tmp_path / "other" / "keyring"
        write_keyring(other)
        result = run(sys.executable, "-m", "drivers.volumes", "engine", "--volume", "vol", "--size", "32MiB",
                     *[arg for a in rig.replica_addresses for arg in ("--replica", a)],
                     "--listen", f"unix:{tmp_path / 'intruder.sock'}", "--keyring", str(other), "--cluster", "test",
                     timeout=60)
        assert result.returncode == 1 and "proved no key" not in result.stderr
        assert "cannot serve" in result.stderr
        assert not list(tmp_path.glob("r*/vol.meta")), "nothing was created on any replica"


def test_salvage_is_the_explicit_way_past_a_lost_majority(tmp_path: Path) -> None:
    with volume_rig(tmp_path) as rig:
        first = rig.start_engine(size="32MiB", timeout="2s")
        assert io_ok(first.qemu_io("write -P 0x71 0 1M", "flush"))
        rig.replicas[1].kill()
        assert io_ok(first.qemu_io("write -P 0x73 2M 1M", "flush")), "acknowledged by replicas 0 and 2"
        rig.replicas[2].kill()
        assert not io_ok(first.qemu_io("write -P 0x72 1M 64k")), "no majority: refused"
        first.process.kill()
        shutil.rmtree(tmp_path / "r2")  # replica 2's disk is gone for good; replica 1 is behind
        rig.restart_replica(1)
        rig.restart_replica(2)
        refused = rig.start_engine(size="32MiB", tag="b", wait=False)
        assert refused.process.proc.wait(30) == 1, "without salvage the engine refuses"
        assert f"Bring back {rig.replica_addresses[2]}" in refused.process.output()
        trusted = rig.replica_addresses[0]
        salvage = run(sys.executable, "-m", "drivers.volumes", "salvage", "--volume", "vol", "--size", "32MiB",
                      *[arg for a in rig.replica_addresses for arg in ("--replica", a)], "--from", trusted,
                      "--keyring", str(rig.keyring), "--cluster", "test", timeout=120)
        assert salvage.returncode == 0, salvage.stderr
        engine = rig.start_engine(size="32MiB", tag="c")
        check = engine.qemu_io("read -P 0x71 0 1M", "read -P 0x73 2M 1M")
        assert io_ok(check), check.stdout + check.stderr
        wait_until(lambda: engine.status().get("members") == rig.replica_addresses)
        rig.replicas[0].kill()  # the copies salvage made carry the volume on their own
        assert io_ok(engine.qemu_io("read -P 0x71 0 1M", "read -P 0x73 2M 1M"))


def test_a_partition_from_two_of_three_replicas_fails_writes_and_loses_nothing_acknowledged(tmp_path: Path) -> None:
    with volume_rig(tmp_path) as rig:
        engine = rig.start_engine(size="32MiB", timeout="2s")
        assert io_ok(engine.qemu_io("write -P 0x81 0 2M", "flush"))
        ports = [int(a.rsplit(":", 1)[1]) for a in rig.replica_addresses[1:]]
        with cut_tcp_ports(*ports):
            refused = engine.qemu_io("write -P 0x82 0 64k", "flush", timeout=60)
            assert not io_ok(refused), "cut off from two of three replicas: nothing may be acknowledged"
            wait_until(lambda: engine.status().get("state") == "faulted")
        engine.process.kill()
        again = rig.start_engine(size="32MiB", tag="b")
        check = again.qemu_io("read -P 0x81 64k 1984k")
        assert io_ok(check), check.stdout + check.stderr
        wait_until(lambda: again.status().get("members") == rig.replica_addresses)


def test_after_a_partition_heals_the_same_engine_serves_again(tmp_path: Path) -> None:
    """No restart, no new socket: the client saw errors while the partition lasted, then the same
    export works again, with everything acknowledged before it."""
    with volume_rig(tmp_path) as rig:
        engine = rig.start_engine(size="32MiB", timeout="2s")
        assert io_ok(engine.qemu_io("write -P 0x91 0 2M", "flush"))
        ports = [int(a.rsplit(":", 1)[1]) for a in rig.replica_addresses[1:]]
        with cut_tcp_ports(*ports):
            assert not io_ok(engine.qemu_io("write -P 0x92 0 64k", "flush", timeout=60))
            wait_until(lambda: engine.status().get("state") == "faulted")
            assert not io_ok(engine.qemu_io("read -P 0x91 0 4k")), "faulted: reads fail too"
        wait_until(lambda: engine.status().get("state") == "healthy", 30)
        status = engine.status()
        assert status["io"]["recoveries"] == 1 and status["epoch"] == 2
        check = engine.qemu_io("read -P 0x91 64k 1984k", "write -P 0x93 4M 1M", "flush", "read -P 0x93 4M 1M")
        assert io_ok(check), check.stdout + check.stderr
