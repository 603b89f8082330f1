"""This node's document: versions only grow (also across restarts), sections are kept between
publishes, and an oversized document is refused while the previous one stays in force."""

from __future__ import annotations

from nodeorch.state.document_publisher import DocumentPublisher
from nodeorch.state.document_store import DocumentStore
from nodeorch.state.event_log import EventLog
from nodeorch.state.node_document import NodeDocument, decode_document
from nodeorch.state.records import InstancePhase, InstanceRecord


async def test_versions_grow_sections_stay_and_oversized_documents_are_refused() -> None:
    sent: list[bytes] = []

    async def send(data: bytes) -> None:
        sent.append(data)

    now = [1000.0]
    store, events = DocumentStore("a"), EventLog()
    publisher = DocumentPublisher(NodeDocument("a", 0, "boot"), store, events, send, clock=lambda: now[0])
    web = (InstanceRecord("web", "0", InstancePhase.RUNNING),)
    await publisher.publish(instances=web)
    first = decode_document(sent[-1])
    assert first.version == 1_000_000, "at least the wall clock in ms: a restart never goes back"
    await publisher.publish(draining=True)
    second = decode_document(sent[-1])
    assert second.version == first.version + 1 and second.instances == web and second.draining
    assert store["a"] == publisher.document

    huge = tuple(InstanceRecord("x" * 60, str(i), InstancePhase.RUNNING, ref="r" * 100) for i in range(400))
    await publisher.publish(instances=huge)
    assert len(sent) == 2 and publisher.document.instances == web, "the previous document stays in force"
    assert store.drops["oversized_own"] == 1 and events.since(0)[-1]["kind"] == "document.refused"
