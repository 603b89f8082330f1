"""The volume data path's pure parts: NBD option answers and request checks, where an engine
starts from, and the replica store's fencing and metadata."""

from __future__ import annotations

import argparse
import errno
import json
import struct
from pathlib import Path

import pytest

from drivers.volumes import __main__ as engine_main
from drivers.volumes import _nbd
from drivers.volumes._errors import Fenced, NoQuorum, ProtocolError, VolumeError
from drivers.volumes._memory_store import MemoryStore
from drivers.volumes._quorum import majority, plan_start
from drivers.volumes._replica_service import ReplicaService, Store
from drivers.volumes._sizes import parse_seconds, parse_size
from drivers.volumes._store import ReplicaMeta, ReplicaStore
from drivers.volumes._wire import OP_DROP, OP_OPEN, OP_READ, STATUS_ERROR, STATUS_OK, FrameSplitter, frame_head
from nodeorch.reconcile.engine_keeper import EngineKeeper
from nodeorch.reconcile.volume_plan import EngineOrder

EXPORTS = {"db": 1 << 20}


def go(name: str, option: int = _nbd.OPT_GO) -> _nbd.OptionOutcome:
    data = struct.pack(">I", len(name)) + name.encode() + struct.pack(">H", 0)
    return _nbd.handle_option(option, data, EXPORTS, no_zeroes=True)


def test_go_info_and_list_answer_for_the_named_and_the_default_export() -> None:
    assert go("db").export == "db" and go("").export == "db", "the default export is the volume"
    info = go("db", _nbd.OPT_INFO)
    assert info.export is None and struct.pack(">HQH", 0, 1 << 20, _nbd.TRANSMISSION_FLAGS) in info.reply
    listing = _nbd.handle_option(_nbd.OPT_LIST, b"", EXPORTS, True)
    assert b"db" in listing.reply and listing.reply.endswith(_nbd.option_reply(_nbd.OPT_LIST, _nbd.REP_ACK))


def test_bad_and_unknown_options_get_errors_and_keep_the_session() -> None:
    unknown = go("other")
    assert unknown.export is None and not unknown.close
    assert struct.unpack_from(">I", unknown.reply, 12)[0] == _nbd.REP_ERR_UNKNOWN
    truncated = _nbd.handle_option(_nbd.OPT_GO, b"\x00\x00\x00\x09db", EXPORTS, True)
    assert struct.unpack_from(">I", truncated.reply, 12)[0] == _nbd.REP_ERR_INVALID and not truncated.close
    unsupported = _nbd.handle_option(99, b"", EXPORTS, True)
    assert struct.unpack_from(">I", unsupported.reply, 12)[0] == _nbd.REP_ERR_UNSUP
    assert _nbd.handle_option(_nbd.OPT_ABORT, b"", EXPORTS, True).close
    assert _nbd.handle_option(_nbd.OPT_EXPORT_NAME, b"nope", EXPORTS, True).close


def request(command: int, offset: int, length: int, flags: int = 0) -> _nbd.Request:
    return _nbd.Request(flags, command, 7, offset, length)


def test_every_offset_and_length_is_checked() -> None:
    size = 1 << 20
    assert _nbd.check_request(request(_nbd.Command.READ, 0, 4096), size) == 0
    assert _nbd.check_request(request(_nbd.Command.READ, size - 1, 2), size) == errno.EINVAL
    assert _nbd.check_request(request(_nbd.Command.WRITE, size, 1), size) == errno.ENOSPC
    assert _nbd.check_request(request(_nbd.Command.READ, 0, _nbd.MAX_PAYLOAD + 1), size) == errno.EOVERFLOW
    assert _nbd.check_request(request(_nbd.Command.FLUSH, 1, 0), size) == errno.EINVAL
    assert _nbd.check_request(request(9, 0, 0), size) == errno.EINVAL
    assert _nbd.check_request(request(_nbd.Command.WRITE, 0, 1, flags=1 << 7), size) == errno.EINVAL
    with pytest.raises(ValueError, match="magic"):
        _nbd.parse_request(b"\x00" * 28)


def meta(epoch: int, set_version: int, seq: int, members: tuple[str, ...], set_epoch: int = -1) -> ReplicaMeta:
    return ReplicaMeta("db", 1 << 20, "id", epoch, members, set_version, seq, set_epoch=set_epoch)


def test_an_engine_starts_from_the_last_member_set_and_claims_a_higher_epoch() -> None:
    a, b, c = "a:1", "b:1", "c:1"
    assert majority(3) == 2 and majority(2) == 2 and majority(5) == 3
    fresh = plan_start([a, b, c], {a: None, b: None})
    assert fresh.create and fresh.members == (a, b) and fresh.epoch == 1
    plan = plan_start([a, b, c], {a: meta(3, 5, 90, (a, c)), b: meta(3, 4, 80, (a, b, c)), c: meta(3, 5, 91, (a, c))})
    assert plan.members == (a, c) and plan.stale == (b,) and plan.epoch == 4 and plan.set_version == 5


def test_a_member_set_change_that_never_reached_a_majority_does_not_count() -> None:
    """A partition cut the engine from b and c: it ejected b and told only a (c never heard), so
    nothing was acknowledged under that set; after the heal the three start again together."""
    a, b, c = "a:1", "b:1", "c:1"
    plan = plan_start([a, b, c], {a: meta(1, 2, 50, (a, c)), b: meta(1, 1, 50, (a, b, c)),
                                  c: meta(1, 1, 50, (a, b, c))})
    assert plan.members == (a, b, c) and plan.set_version == 3 and plan.epoch == 2
    with pytest.raises(NoQuorum, match="Bring back c:1"):  # c unreachable: the change may have reached it
        plan_start([a, b, c], {a: meta(1, 2, 50, (a, c)), b: meta(1, 1, 50, (a, b, c))})
    with pytest.raises(NoQuorum, match="Bring back c:1"):  # c lost its disk: it may have had the change
        plan_start([a, b, c], {a: meta(1, 2, 50, (a, c)), b: meta(1, 1, 50, (a, b, c)), c: None})


def test_a_claim_that_reached_one_replica_is_judged_by_the_set_it_was_claimed_from() -> None:
    """Engine 9 began ejecting a, which only b heard ((9, 8): b, c); engine 13 then planned a and b
    from (9, 7) and claimed (13, 9) on a alone before it was cut off. Nothing was acknowledged
    under either change: a goes back to (9, 7), where it was a member, not to b's (9, 8), which
    had ejected it (a rewrite to that set made no progress, and the planner spun forever)."""
    a, b, c = "a:1", "b:1", "c:1"
    found = {a: meta(13, 9, 637, (a, b), set_epoch=13), b: meta(13, 8, 653, (b, c), set_epoch=9),
             c: meta(13, 7, 634, (a, b, c), set_epoch=9)}
    plan = plan_start([a, b, c], found)
    assert plan.members == (a, b) and plan.stale == (c,) and plan.epoch == 14


def test_without_a_majority_of_the_last_set_the_engine_refuses_naming_the_replicas() -> None:
    a, b, c = "a:1", "b:1", "c:1"
    with pytest.raises(NoQuorum, match=r"Bring back c:1"):
        plan_start([a, b, c], {a: meta(3, 5, 90, (a, c)), b: meta(3, 4, 80, (a, b, c))})
    with pytest.raises(NoQuorum, match="1 of 3 replicas reachable"):
        plan_start([a, b, c], {a: None})


def test_a_replica_refuses_older_epochs_and_keeps_its_metadata_across_reopen(tmp_path: Path) -> None:
    store = ReplicaStore(tmp_path)
    replica = store.open("db", 1 << 20, create=True)
    replica.claim(2, ("a:1",), 1)
    replica.write(2, 0, b"x" * 512, seq=1, fua=True)
    with pytest.raises(Fenced):
        replica.write(1, 0, b"y" * 512, seq=2, fua=False)
    with pytest.raises(Fenced):
        replica.claim(2, ("b:1",), 1)
    with pytest.raises(VolumeError, match="outside"):
        replica.read(2, (1 << 20) - 1, 2)
    replica.zero(2, 0, 512, seq=2)
    assert replica.read(2, 0, 512) == bytes(512)
    replica.close()
    saved = json.loads((tmp_path / "db.meta").read_text())
    assert (saved["epoch"], saved["seq"], saved["clean"]) == (2, 2, True)
    assert not list(tmp_path.glob(".*.tmp")), "no temporary file is left behind"
    again = ReplicaStore(tmp_path).open("db", 1 << 20, create=False)
    assert again.meta.epoch == 2 and again.meta.members == ("a:1",)
    with pytest.raises(VolumeError, match="holds 1048576 bytes"):
        ReplicaStore(tmp_path).open("db", 2 << 20, create=False)


def test_an_engine_recovering_in_place_never_fences_back_a_newer_engine(tmp_path: Path) -> None:
    replica = ReplicaStore(tmp_path).open("db", 1 << 20, create=True)
    replica.fence(5, by="old")
    replica.claim(5, ("a:1",), 1, fenced_by_caller=True)
    replica.fence(6, by="old")  # its own earlier attempt to recover
    assert replica.fence(7, by="old", served=5).epoch == 6, "its own fences are no newer engine"
    replica.fence(8, by="new")
    replica.claim(8, ("a:1",), 2, fenced_by_caller=True)
    with pytest.raises(Fenced, match="a newer engine took the volume at epoch 8"):
        replica.fence(9, by="old", served=5)
    assert replica.meta.epoch == 8 and replica.meta.fenced_by == "new"
    assert replica.fence(9, by="third").epoch == 8, "a starting engine (no served epoch) still takes over"


def test_a_fence_freezes_a_replica_until_its_engine_claims_it(tmp_path: Path) -> None:
    replica = ReplicaStore(tmp_path).open("db", 1 << 20, create=True)
    replica.claim(2, ("a:1", "b:1"), 3)
    replica.write(2, 0, b"x" * 512, seq=7, fua=False)  # applied, not yet durable
    before = replica.fence(3)
    assert (before.epoch, before.set_id, before.seq) == (2, (2, 3), 7), "the fence reports what it froze"
    with pytest.raises(Fenced):
        replica.write(2, 0, b"y" * 512, seq=8, fua=False)
    with pytest.raises(Fenced):
        replica.fence(3)
    with pytest.raises(Fenced, match="does not exceed"):
        replica.claim(3, ("a:1",), 4)  # another engine of the same epoch
    assert replica.meta.set_id == (2, 3) and replica.meta.members == ("a:1", "b:1")
    replica.claim(3, ("a:1", "c:1"), 1, fenced_by_caller=True)
    assert replica.meta.set_id == (3, 1), "a newer epoch's set wins whatever its version"
    with pytest.raises(VolumeError, match="older than"):
        replica.set_members(3, ("a:1",), 0)
    replica.close()
    saved = json.loads((tmp_path / "db.meta").read_text())
    del saved["set_epoch"]  # written before the field existed: the set is of the replica's epoch
    assert ReplicaMeta.from_json(saved).set_id == (3, 1)


def test_a_fenced_replica_is_judged_by_the_set_it_last_joined() -> None:
    """a was fenced at epoch 5 by an engine that died before claiming: its data is that of set 3/5."""
    a, b, c = "a:1", "b:1", "c:1"
    fenced = ReplicaMeta("db", 1 << 20, "id", 5, (a, c), 5, 90, set_epoch=3)
    plan = plan_start([a, b, c], {a: fenced, b: meta(3, 4, 95, (a, b, c)), c: meta(3, 5, 91, (a, c))})
    assert plan.members == (a, c) and plan.stale == (b,) and plan.epoch == 6


def test_sizes_and_durations() -> None:
    assert parse_size("512MiB") == 512 << 20 and parse_size("2GiB") == 2 << 30 and parse_size("4096") == 4096
    for bad in ("10GB", "-1MiB", "100", "0"):
        with pytest.raises(VolumeError):
            parse_size(bad)
    assert parse_seconds("8s") == 8.0 and parse_seconds("500ms") == 0.5


def test_requests_and_frames_split_the_same_whatever_the_chunks() -> None:
    stream = (_nbd.REQUEST.pack(_nbd.REQUEST_MAGIC, 0, _nbd.Command.WRITE, 7, 4096, 5) + b"hello"
              + _nbd.REQUEST.pack(_nbd.REQUEST_MAGIC, 0, _nbd.Command.READ, 8, 0, 512))
    for size in (1, 3, 28, 33, len(stream)):
        splitter = _nbd.RequestSplitter()
        got = [r for i in range(0, len(stream), size) for r in splitter.feed(stream[i:i + size])]
        assert [(r.cookie, r.command, data) for r, data in got] == [(7, _nbd.Command.WRITE, b"hello"),
                                                                    (8, _nbd.Command.READ, b"")], size
    with pytest.raises(_nbd.OversizedWrite):
        _nbd.RequestSplitter().feed(_nbd.REQUEST.pack(_nbd.REQUEST_MAGIC, 0, _nbd.Command.WRITE, 1, 0, 1 << 30))
    with pytest.raises(ValueError, match="magic"):
        _nbd.RequestSplitter().feed(bytes(28))

    frames = frame_head(1, 3, {"volume": "db", "seq": 9}, 4) + b"data" + frame_head(2, 5, {}, 0)
    for size in (1, 7, len(frames)):
        frame_splitter = FrameSplitter()
        got_frames = [f for i in range(0, len(frames), size) for f in frame_splitter.feed(frames[i:i + size])]
        assert got_frames == [(1, 3, {"volume": "db", "seq": 9}, b"data"), (2, 5, {}, b"")], size
    with pytest.raises(ProtocolError, match="out of bounds"):
        FrameSplitter().feed(struct.pack(">IQBH", 1 << 31, 1, 3, 0))
    with pytest.raises(ProtocolError, match="must be a table"):
        FrameSplitter().feed(frame_head(1, 3, {}, 0)[:-1] + b"\x01")


@pytest.mark.parametrize("kind", ["files", "memory"])
def test_a_dropped_replica_is_gone_but_only_the_volume_id_named(kind: str, tmp_path: Path) -> None:
    store: Store = ReplicaStore(tmp_path) if kind == "files" else MemoryStore()
    service = ReplicaService(store)
    status, answer, _ = service.answer(OP_OPEN, {"volume": "db", "size": 1 << 20, "create": True}, b"")
    assert status == STATUS_OK
    volume_id = answer["meta"]["volume_id"]
    status, answer, _ = service.answer(OP_DROP, {"volume": "db", "volume_id": "another"}, b"")
    assert status == STATUS_ERROR and "not another" in answer["error"], "a volume reusing the name is kept"
    assert store.meta("db") is not None
    assert service.answer(OP_DROP, {"volume": "db", "volume_id": volume_id}, b"")[1] == {"dropped": True}
    assert store.meta("db") is None and store.volumes() == []
    assert not list(tmp_path.iterdir()), "no file of it is left"
    assert service.answer(OP_DROP, {"volume": "db", "volume_id": volume_id}, b"")[1] == {"dropped": False}
    status, answer, _ = service.answer(OP_READ, {"volume": "db", "epoch": 0, "offset": 0, "length": 1}, b"")
    assert status == STATUS_ERROR and "not open" in answer["error"]


def test_the_replica_list_the_agent_writes_is_what_the_engine_reads(tmp_path: Path) -> None:
    keeper = EngineKeeper(tmp_path, "test", None)
    order = EngineOrder("db", 1 << 20, ("10.0.0.1:7948", "10.0.0.2:7948", "10.0.0.3:7948"), held=("10.0.0.3:7948",))
    assert keeper._write_replicas(order) and not keeper._write_replicas(order), "rewritten only when it changes"
    args = argparse.Namespace(replica=None, replicas_file=str(keeper._replicas("db")))
    assert engine_main._replica_list(args) == (list(order.replicas), {"10.0.0.3:7948"})
    keeper._replicas("db").write_text("10.0.0.1:7948 later\n")
    with pytest.raises(VolumeError, match="expected HOST:PORT \\[hold\\]"):
        engine_main._replica_list(args)
