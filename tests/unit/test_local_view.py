"""Direct reads of a replica on the engine's host (drivers/volumes/_local_view.py): the file view
and its in-memory twin pass the same suite, and the file view refuses what is not its file."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from drivers.volumes._local_view import FileView, LocalView, host_boot_id
from drivers.volumes._memory_store import MemoryStore, MemoryView
from drivers.volumes._replica_service import Store
from drivers.volumes._store import Replica, ReplicaStore

SIZE = 1 << 20
Opener = Callable[[Path], tuple[Store, Callable[[Replica], LocalView | None]]]


def file_store(folder: Path) -> tuple[Store, Callable[[Replica], LocalView | None]]:
    return ReplicaStore(folder), lambda replica: FileView.accept(replica.local_offer())


def memory_store(folder: Path) -> tuple[Store, Callable[[Replica], LocalView | None]]:
    store = MemoryStore()
    return store, lambda replica: MemoryView(store.backings[replica.meta.volume])


@pytest.fixture(params=[file_store, memory_store], ids=["file", "memory"])
def opener(request: pytest.FixtureRequest) -> Opener:
    chosen: Opener = request.param
    return chosen


def claimed(store: Store, epoch: int = 3) -> Replica:
    replica = store.open("db", SIZE, create=True)
    replica.fence(epoch, by="engine")
    replica.claim(epoch, ("a:1",), 1, fenced_by_caller=True)
    return replica


def test_a_view_reads_what_the_replica_wrote_at_its_epoch_only(opener: Opener, tmp_path: Path) -> None:
    store, view_of = opener(tmp_path)
    replica = claimed(store)
    replica.write(3, 8192, b"v" * 4096, seq=1, fua=False)
    view = view_of(replica)
    assert view is not None
    assert view.read(8192, 4096, 3) == b"v" * 4096
    assert view.read(0, 4096, 3) == bytes(4096), "a hole reads as zeros"
    assert view.read(8192, 4096, 2) is None and view.read(8192, 4096, 4) is None, "another epoch asks the server"
    view.close()


def test_a_view_stops_serving_once_a_newer_engine_fences_the_replica(opener: Opener, tmp_path: Path) -> None:
    store, view_of = opener(tmp_path)
    replica = claimed(store)
    view = view_of(replica)
    assert view is not None and view.read(0, 512, 3) is not None
    replica.fence(4, by="newer")
    assert view.read(0, 512, 3) is None, "the fenced engine must go to the server, which refuses it"
    view.close()


def test_a_view_stops_serving_once_the_server_closes_the_replica(opener: Opener, tmp_path: Path) -> None:
    store, view_of = opener(tmp_path)
    replica = claimed(store)
    view = view_of(replica)
    assert view is not None
    replica.close()
    assert view.read(0, 512, 3) is None
    view.close()


def test_the_file_view_takes_only_this_hosts_same_file(tmp_path: Path) -> None:
    assert host_boot_id(), "Linux gives every boot an id (/proc/sys/kernel/random/boot_id)"
    replica = claimed(ReplicaStore(tmp_path))
    offered = replica.local_offer()
    assert offered is not None
    assert FileView.accept({**offered, "host": "another-boot"}) is None
    assert FileView.accept({**offered, "inode": int(str(offered["inode"])) + 1}) is None
    assert FileView.accept({**offered, "data": str(tmp_path / "absent.img")}) is None
    assert FileView.accept({**offered, "device": "7"}) is None
    assert FileView.accept("garbage") is None and FileView.accept(None) is None
    replica.close()


def test_the_file_view_leaves_blocks_not_in_memory_to_the_server(tmp_path: Path) -> None:
    replica = claimed(ReplicaStore(tmp_path))
    replica.write(3, 0, b"d" * 65536, seq=1, fua=True)  # durable, so its pages are clean
    view = FileView.accept(replica.local_offer())
    assert view is not None
    fd = os.open(tmp_path / "db.img", os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)
    assert view.read(0, 4096, 3) is None, "a read that would wait for the disk must not block the engine"
    view.close()
    replica.close()
