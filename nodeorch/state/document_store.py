"""The documents this node holds: its own, and the latest one received from each peer.

Receiving is pure (no I/O): a document is accepted only from its owner and only when its version
is newer than the one held, so a replayed or relayed old version never replaces a newer one, and
a node can never speak for another. Refusals are counted by reason for /metrics.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterator, Mapping

from nodeorch.state.node_document import DocumentError, NodeDocument, decode_document

log = logging.getLogger(__name__)


class DocumentStore(Mapping[str, NodeDocument]):
    """Node name -> the newest document held for it (this node's own included)."""

    def __init__(self, own_name: str) -> None:
        self.own_name = own_name
        self._documents: dict[str, NodeDocument] = {}
        self.drops: Counter[str] = Counter()

    def __getitem__(self, name: str) -> NodeDocument:
        return self._documents[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._documents)

    def __len__(self) -> int:
        return len(self._documents)

    def store_own(self, document: NodeDocument) -> None:
        self._documents[self.own_name] = document

    def receive(self, sender: str, data: bytes) -> NodeDocument | None:
        """The document `sender` gossiped, if it is valid, its own, and newer than the one held;
        None when it is refused or brings nothing new."""
        if sender == self.own_name:
            return None
        try:
            document = decode_document(data)
        except DocumentError as error:
            self.drops["invalid"] += 1
            log.warning("%s: refused the document of %s: %s", self.own_name, sender, error)
            return None
        if document.name != sender:
            self.drops["wrong_owner"] += 1
            log.warning("%s: %s published a document claiming to be %s; refused",
                        self.own_name, sender, document.name)
            return None
        previous = self._documents.get(sender)
        if previous is not None and previous.version >= document.version:
            return None
        if document.skipped_records:
            self.drops["unknown_records"] += document.skipped_records
        self._documents[sender] = document
        return document
