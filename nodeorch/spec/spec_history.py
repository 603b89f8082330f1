"""The service specs this node has run, by digest: what a rolling update's rollback goes back to
after desired.toml has changed. Kept in `data_dir/services/specs.json`, a few per service."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from nodeorch.spec.service_spec import ServiceSpec, spec_from_json, spec_to_json
from nodeorch.state.json_file import load_json, save_json

log = logging.getLogger(__name__)

KEPT_PER_SERVICE = 5


class SpecHistory:
    def __init__(self, path: Path | None) -> None:
        self._path = path
        raw = load_json(path) if path is not None else None
        self._tables: dict[str, dict[str, dict[str, Any]]] = {}
        if isinstance(raw, dict):
            self._tables = {name: {d: t for d, t in by_digest.items() if isinstance(t, dict)}
                            for name, by_digest in raw.items() if isinstance(by_digest, dict)}

    def remember(self, specs: Iterable[ServiceSpec]) -> None:
        """Keep these specs (the newest KEPT_PER_SERVICE per service); written only when new."""
        changed = False
        for spec in specs:
            kept = self._tables.setdefault(spec.name, {})
            if spec.digest in kept:
                continue
            kept[spec.digest] = spec_to_json(spec)
            while len(kept) > KEPT_PER_SERVICE:
                del kept[next(iter(kept))]
            changed = True
        if changed and self._path is not None:
            save_json(self._path, self._tables)

    def find(self, service: str, digest: str) -> ServiceSpec | None:
        table = self._tables.get(service, {}).get(digest)
        if table is None:
            return None
        try:
            spec = spec_from_json(table)
        except (TypeError, ValueError, AttributeError) as error:
            log.error("%s: the remembered spec %s of %s is unreadable: %s", self._path, digest, service, error)
            return None
        return spec if spec.digest == digest else None
