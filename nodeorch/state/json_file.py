"""Small JSON state files an agent keeps across restarts (deletions, update marks, spec history):
written whole and atomically (temp file, fsync, rename), so a crash leaves the old or the new."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def load_json(path: Path) -> Any:
    """The file's content, or None when it is missing or unreadable (said once in the log)."""
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as error:
        log.error("%s: unreadable, ignored: %s", path, error)
        return None


def save_json(path: Path, value: Any) -> None:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    temp = path.with_suffix(".tmp")
    with temp.open("w") as out:
        json.dump(value, out)
        out.flush()
        os.fsync(out.fileno())
    temp.replace(path)
