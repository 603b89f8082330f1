"""A filesystem on a replicated volume, through the kernel: nbdfuse + a loop device + ext4. Files
written with fsync survive a replica's kill -9, and fsck finds nothing wrong."""

from __future__ import annotations

import hashlib
import os
import signal
from pathlib import Path

from .volumes import block_device, mounted, need, run, volume_rig, wait_until


def write_synced(path: Path, data: bytes) -> None:
    with path.open("wb") as out:
        out.write(data)
        out.flush()
        os.fsync(out.fileno())


def test_ext4_on_a_volume_survives_a_replica_kill_and_checks_clean(tmp_path: Path) -> None:
    with volume_rig(tmp_path) as rig:
        engine = rig.start_engine(size="128MiB", timeout="2s")
        with block_device(engine, tmp_path) as device:
            made = run(need("mkfs.ext4"), "-q", device)
            assert made.returncode == 0, made.stderr
            digests = {}
            with mounted(device, tmp_path / "mnt") as mnt:
                for i in range(40):
                    if i == 20:
                        rig.replicas[2].signal(signal.SIGKILL)  # half-way through, a replica dies
                    data = os.urandom(256 * 1024)
                    write_synced(mnt / f"file-{i}", data)
                    digests[f"file-{i}"] = hashlib.sha256(data).hexdigest()
            checked = run("fsck.ext4", "-n", "-f", device)
            assert checked.returncode == 0, checked.stdout + checked.stderr
            with mounted(device, tmp_path / "mnt") as mnt:
                for name, digest in digests.items():
                    assert hashlib.sha256((mnt / name).read_bytes()).hexdigest() == digest, name
        wait_until(lambda: engine.status().get("members") == rig.replica_addresses[:2])
