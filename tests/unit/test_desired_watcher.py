"""The desired-file watcher: a change is picked up, a refused file keeps the last good state."""

from __future__ import annotations

import os
from pathlib import Path

from nodeorch.spec.desired_watcher import DesiredWatcher
from nodeorch.state.event_log import EventLog


def write(path: Path, text: str, mtime: float) -> None:
    path.write_text(text)
    os.utime(path, (mtime, mtime))


def test_changes_are_loaded_and_a_bad_file_keeps_the_last_good_state(tmp_path: Path) -> None:
    path = tmp_path / "desired.toml"
    write(path, "revision = 1\n", 1000.0)
    events = EventLog()
    watcher = DesiredWatcher("a", path, events)
    assert watcher.reload(force=True) and watcher.status.state is not None and watcher.status.state.revision == 1
    assert not watcher.reload(), "an unchanged file is not read again"
    write(path, "revision = 2\n[[service]]\nname = 7\n", 1001.0)
    assert watcher.reload()
    assert watcher.status.state is not None and watcher.status.state.revision == 1, "the last good state stays"
    assert "service[0]" in watcher.status.error
    write(path, "revision = 2\n", 1002.0)
    assert watcher.reload() and watcher.status.error == ""
    assert watcher.status.state is not None and watcher.status.state.revision == 2
    assert [e["kind"] for e in events.since(0)] == ["desired.loaded", "desired.error", "desired.loaded"]


def test_a_missing_file_is_an_error_not_a_crash(tmp_path: Path) -> None:
    watcher = DesiredWatcher("a", tmp_path / "absent.toml", EventLog())
    assert watcher.reload(force=True)
    assert watcher.status.state is None and "no such file" in watcher.status.error
