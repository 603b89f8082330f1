"""Node documents, the keyring file, the desired-state file and the event log."""

from __future__ import annotations

import asyncio
import os
import stat
from pathlib import Path

import msgpack
import pytest

from gossip import generate_key
from nodeorch.spec.desired import parse_desired
from nodeorch.spec.secret_files import KeyringFileError, load_keyring, write_keyring
from nodeorch.spec.toml_tables import ConfigFileError
from nodeorch.state.event_log import EventLog
from nodeorch.state.node_document import (
    MAX_DOCUMENT_SIZE,
    DocumentError,
    NodeDocument,
    boot_of,
    decode_document,
    decode_labels,
    encode_document,
    encode_labels,
    of_current_life,
)
from nodeorch.state.records import (
    EngineRecord,
    EngineState,
    InstancePhase,
    InstanceRecord,
    ReplicaMode,
    ReplicaRecord,
)


def document(**changes: object) -> NodeDocument:
    base = NodeDocument(name="node-a", version=7, boot_id="b00t", labels={"zone": "z1"}, desired_revision=3,
                        desired_digest="abc", instances=(InstanceRecord("web", "1", InstancePhase.RUNNING),))
    return base.replace(**changes)


def test_a_document_round_trips() -> None:
    assert decode_document(encode_document(document())) == document()


def test_an_oversized_document_is_refused_by_its_owner() -> None:
    big = tuple(InstanceRecord("x" * 4000, str(i), InstancePhase.RUNNING) for i in range(10))
    with pytest.raises(DocumentError, match="limit"):
        encode_document(document(instances=big))


def test_receivers_refuse_oversized_malformed_and_mistyped_documents() -> None:
    with pytest.raises(DocumentError, match="limit"):
        decode_document(b"\x00" * (MAX_DOCUMENT_SIZE + 1))
    with pytest.raises(DocumentError, match="not a document"):
        decode_document(b"\xc1garbage")
    with pytest.raises(DocumentError, match="version"):
        decode_document(msgpack.packb({"n": "a", "v": "seven", "b": "x"}))
    with pytest.raises(DocumentError, match="instances"):
        decode_document(msgpack.packb({"n": "a", "v": 1, "b": "x", "i": [{"k": {"nested": 1}}]}))


def test_replicas_and_engines_round_trip_and_a_newer_mode_is_skipped_not_refused() -> None:
    replicas = (ReplicaRecord("db", 1 << 30, ReplicaMode.MEMBER, 4, 4, 2, 90, used=5 << 20),
                ReplicaRecord("cache-0", 1 << 20, ReplicaMode.REBUILDING, 4, 1, 1, progress=0.25))
    engines = (EngineRecord("db", EngineState.DEGRADED, 4, ("node-a", "node-b")),)
    full = document(replicas=replicas, engines=engines)
    assert decode_document(encode_document(full)) == full
    raw = msgpack.unpackb(encode_document(full))
    raw["r"].append({"volume": "db", "size": 1, "mode": "mirroring", "newer": True})
    decoded = decode_document(msgpack.packb(raw))
    assert decoded.replicas == replicas and decoded.skipped_records == 1
    raw["e"][0]["epoch"] = "four"
    with pytest.raises(DocumentError, match=r"engines\[0\].epoch"):
        decode_document(msgpack.packb(raw))


def test_fields_of_newer_agents_are_ignored() -> None:
    data = msgpack.packb({"n": "a", "v": 1, "b": "x", "future_field": [1, 2]})
    assert decode_document(data).name == "a"


def test_keygen_writes_a_private_keyring_and_refuses_to_overwrite(tmp_path: Path) -> None:
    path = tmp_path / "etc" / "keyring"
    write_keyring(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(load_keyring(path).keys) == 1
    with pytest.raises(KeyringFileError, match="already exists"):
        write_keyring(path)


def test_a_keyring_readable_by_others_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "keyring"
    path.write_text(generate_key() + "\n")
    os.chmod(path, 0o644)
    with pytest.raises(KeyringFileError, match=r"readable by others \(mode 0644\).*chmod 600"):
        load_keyring(path)


def test_a_bad_key_line_is_named(tmp_path: Path) -> None:
    path = tmp_path / "keyring"
    path.write_text(f"# rotated 2026-11\n{generate_key()}\nnot-a-key\n")
    os.chmod(path, 0o600)
    with pytest.raises(KeyringFileError, match=r"keyring:3: key is not valid base64"):
        load_keyring(path)


def test_desired_state_needs_a_revision_and_known_keys() -> None:
    assert parse_desired(b"revision = 2\n").revision == 2
    with pytest.raises(ConfigFileError, match=r"desired\.toml:1: revision: must be a non-negative integer"):
        parse_desired(b"revision = -1\n")
    with pytest.raises(ConfigFileError, match=r"desired\.toml:2: servce: unknown key"):
        parse_desired(b"revision = 1\nservce = 3\n")
    with pytest.raises(ConfigFileError, match="not UTF-8"):
        parse_desired(b"revision = 1\n\xff")
    a, b = parse_desired(b"revision = 1\n"), parse_desired(b"revision = 1\n# comment\n")
    assert a.digest != b.digest, "the digest is of the file's bytes"


async def test_event_log_resumes_after_a_seq_and_wakes_waiters() -> None:
    log = EventLog(capacity=3)
    for i in range(5):
        log.append("tick", i=i)
    assert [e["seq"] for e in log.since(0)] == [3, 4, 5], "the oldest were dropped from the ring"
    assert [e["seq"] for e in log.since(4)] == [5]
    waiter = asyncio.create_task(log.wait_after(5, timeout=2))
    await asyncio.sleep(0.01)
    log.append("tock")
    assert [e["kind"] for e in await waiter] == ["tock"]
    assert await log.wait_after(6, timeout=0.05) == []


def test_the_boot_id_rides_in_the_gossip_metadata_but_is_no_label() -> None:
    meta = encode_labels({"zone": "z1"}, "b00t")
    assert decode_labels(meta) == {"zone": "z1"} and boot_of(meta) == "b00t"
    assert boot_of(encode_labels({"zone": "z1"})) == "" and boot_of(b"not json") == ""


def test_a_document_from_an_agent_s_previous_run_is_told_from_its_current_one() -> None:
    document = NodeDocument(name="node-a", version=7, boot_id="b00t")
    assert of_current_life(encode_labels({}, "b00t"), document)
    assert not of_current_life(encode_labels({}, "r3start"), document), "the agent restarted since"
    assert of_current_life(encode_labels({}), document), "an agent that does not say is taken at its word"
