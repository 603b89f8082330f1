"""The document store: a node speaks only for itself, and an older version never wins."""

from __future__ import annotations

from nodeorch.state.document_store import DocumentStore
from nodeorch.state.node_document import NodeDocument, encode_document


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
