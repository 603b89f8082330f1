"""This node's own document: the agent fills its header (labels, draining, desired state), each
reconciler contributes its section (instances and health today, replicas next), and every publish
bumps the version and hands the encoded document to gossip.

Versions never go back, even across restarts: a version is at least the wall clock in
milliseconds, so a restarted agent's first document replaces the one its previous run left.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from nodeorch.state.document_store import DocumentStore
from nodeorch.state.event_log import EventLog
from nodeorch.state.node_document import DocumentError, NodeDocument, encode_document

log = logging.getLogger(__name__)


class DocumentPublisher:
    def __init__(self, first: NodeDocument, store: DocumentStore, events: EventLog,
                 send: Callable[[bytes], Awaitable[None]], clock: Callable[[], float] = time.time) -> None:
        self._document = first
        self._store = store
        self._events = events
        self._send = send
        self._clock = clock
        self._lock = asyncio.Lock()

    @property
    def document(self) -> NodeDocument:
        """The latest document this node published (or will publish first)."""
        return self._document

    async def publish(self, **changes: Any) -> None:
        """Apply `changes` (document fields) and gossip the new version; an oversized document is
        refused, logged and counted, and the previous one stays in force."""
        async with self._lock:
            now = self._clock()
            version = max(self._document.version + 1, int(now * 1000))
            document = dataclasses.replace(self._document, version=version, updated_at=now, **changes)
            try:
                data = encode_document(document)
            except DocumentError as error:
                self._store.drops["oversized_own"] += 1
                log.error("%s: not publishing: %s", document.name, error)
                self._events.append("document.refused", node=document.name, error=str(error))
                return
            self._document = document
            self._store.store_own(document)
            await self._send(data)
