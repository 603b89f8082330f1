"""Which changes of a node's replicas go into its document at once, and which wait."""

from __future__ import annotations

import dataclasses

from nodeorch.reconcile.replica_server_keeper import USAGE_REFRESH, worth_publishing
from nodeorch.state.records import ReplicaMode, ReplicaRecord

DATA = ReplicaRecord("data", 1 << 30, ReplicaMode.DETACHED, epoch=3, set_epoch=3, set_version=2, seq=100,
                     used=4096, volume_id="v1")


def test_writes_alone_are_published_only_every_usage_refresh() -> None:
    written = dataclasses.replace(DATA, seq=250, used=8192)
    assert not worth_publishing((DATA,), (written,), since_published=1.0)
    assert not worth_publishing((DATA,), (written,), since_published=USAGE_REFRESH - 0.1)
    assert worth_publishing((DATA,), (written,), since_published=USAGE_REFRESH)


def test_what_the_cluster_decides_on_is_published_at_once() -> None:
    for changed in (dataclasses.replace(DATA, epoch=4, seq=101), dataclasses.replace(DATA, set_version=3),
                    dataclasses.replace(DATA, size=2 << 30)):
        assert worth_publishing((DATA,), (changed,), since_published=0.5), changed
    assert worth_publishing((DATA,), (DATA, dataclasses.replace(DATA, volume="logs")), since_published=0.5)
    assert worth_publishing((DATA,), (), since_published=0.5), "a replica gone"


def test_nothing_new_is_not_published() -> None:
    assert not worth_publishing((DATA,), (DATA,), since_published=3600.0)
