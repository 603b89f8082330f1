"""The document store: a node speaks only for itself, and an older version never wins."""

from __future__ import annotations

import pytest

from nodeorch.state.document_store import DocumentStore
from nodeorch.state.node_document import DocumentError, NodeDocument, decode_document, encode_document
from nodeorch.state.records import HealthStatus, InstancePhase


def wire(name: str, version: int, **changes: object) -> bytes:
    return encode_document(NodeDocument(name=name, version=version, boot_id="b").replace(**changes))


def test_a_peer_document_is_stored_and_a_newer_one_replaces_it() -> None:
    store = DocumentStore("me")
    first = store.receive("node-b", wire("node-b", 5, draining=False))
    assert first is not None and store["node-b"].version == 5
    newer = store.receive("node-b", wire("node-b", 6, draining=True))
    assert newer is not None and store["node-b"].draining is True


def test_a_document_claiming_another_nodes_name_is_refused() -> None:
    store = DocumentStore("me")
    store.receive("node-c", wire("node-c", 1))
    assert store.receive("node-b", wire("node-c", 99, draining=True)) is None
    assert store["node-c"].version == 1 and not store["node-c"].draining
    assert "node-b" not in store
    assert store.drops["wrong_owner"] == 1


def test_an_older_or_equal_version_never_replaces_a_newer_one() -> None:
    store = DocumentStore("me")
    store.receive("node-b", wire("node-b", 10, draining=True))
    assert store.receive("node-b", wire("node-b", 9, draining=False)) is None
    assert store.receive("node-b", wire("node-b", 10, draining=False)) is None
    assert store["node-b"].version == 10 and store["node-b"].draining is True


def test_garbage_is_counted_and_dropped() -> None:
    store = DocumentStore("me")
    assert store.receive("node-b", b"\xc1\x00garbage") is None
    assert store.drops["invalid"] == 1 and len(store) == 0


def test_nobody_can_overwrite_this_nodes_own_document() -> None:
    store = DocumentStore("me")
    store.store_own(NodeDocument(name="me", version=3, boot_id="b"))
    assert store.receive("me", wire("me", 1000, draining=True)) is None
    assert store["me"].version == 3 and not store["me"].draining


def test_records_from_a_newer_agent_keep_working() -> None:
    """A mixed-version cluster: extra keys in a record are ignored, and a record whose state this
    agent does not know is skipped (and counted), not the whole document refused."""
    import msgpack

    newer = msgpack.packb({
        "n": "node-b", "v": 1, "b": "x", "future_section": {"k": 1},
        "i": [
            {"service": "web", "slot": "0", "state": "running", "health": "healthy", "cpu_pressure": 0.5},
            {"service": "web", "slot": "1", "state": "hibernating"},
        ],
        "h": [{"service": "web", "slot": "0", "node": "node-b", "ref": "r", "status": "degraded"}],
    })
    store = DocumentStore("me")
    document = store.receive("node-b", newer)
    assert document is not None
    (record,) = document.instances
    assert (record.key, record.state, record.health) == ("web/0", InstancePhase.RUNNING, HealthStatus.HEALTHY)
    assert document.health == () and document.skipped_records == 2 and store.drops["unknown_records"] == 2


def test_a_record_of_the_wrong_type_refuses_the_document_naming_it() -> None:
    import msgpack

    bad = msgpack.packb({"n": "node-b", "v": 1, "b": "x", "i": [{"service": "web", "slot": 0, "state": "running"}]})
    store = DocumentStore("me")
    assert store.receive("node-b", bad) is None and store.drops["invalid"] == 1
    with pytest.raises(DocumentError, match=r"instances\[0\]\.slot: expected str, got int"):
        decode_document(bad)
