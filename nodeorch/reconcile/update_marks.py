"""This node's marks on rolling updates (paused, rollback, resumed), one per service: in its
document for every node to see, and in `data_dir/services/updates.json`, so a pause outlives an
agent restart."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path

from nodeorch.state.json_file import load_json, save_json
from nodeorch.state.records import RecordError, UpdateMark

log = logging.getLogger(__name__)


class UpdateMarks:
    def __init__(self, path: Path | None) -> None:
        self._path = path
        self._marks: dict[str, UpdateMark] = {}
        raw = load_json(path) if path is not None else None
        try:
            for entry in raw or ():
                mark = UpdateMark.from_wire(entry)
                self._marks[mark.service] = mark
        except (RecordError, TypeError, AttributeError) as error:
            log.error("%s: unreadable, ignored: %s", path, error)

    @property
    def marks(self) -> tuple[UpdateMark, ...]:
        return tuple(self._marks[name] for name in sorted(self._marks))

    def leave(self, mark: UpdateMark) -> None:
        self._marks[mark.service] = mark
        self._save()

    def prune(self, desired: Iterable[tuple[str, str]]) -> None:
        """Forget marks on updates no longer desired: `desired` is (service, digest) pairs."""
        keep = set(desired)
        stale = [name for name, mark in self._marks.items() if (name, mark.digest) not in keep]
        for name in stale:
            del self._marks[name]
        if stale:
            self._save()

    def _save(self) -> None:
        if self._path is not None:
            save_json(self._path, [m.to_wire() for m in self.marks])
