"""Watches desired.toml: re-read when its mtime changes (polled) or on SIGHUP; a refused file keeps
the last good desired state in force and shows the error until the file is fixed."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Awaitable, Callable
from pathlib import Path

from nodeorch.core.beat import Beat
from nodeorch.spec.desired import DesiredStatus, load_desired
from nodeorch.spec.toml_tables import ConfigFileError
from nodeorch.spec.volume_spec import check_growth
from nodeorch.state.event_log import EventLog

log = logging.getLogger(__name__)

DESIRED_POLL = 2.0


class DesiredWatcher:
    def __init__(self, node: str, path: Path, events: EventLog, beat: Beat | None = None) -> None:
        self._node = node
        self._beat = beat or Beat()
        self._path = path
        self._events = events
        self._mtime: float | None = None
        self.status = DesiredStatus(None)

    def reload(self, *, force: bool = False) -> bool:
        """Re-read the file if it changed (or when forced); True if the status changed."""
        try:
            mtime: float | None = self._path.stat().st_mtime
        except OSError:
            mtime = None
        if not force and mtime == self._mtime:
            return False
        self._mtime = mtime
        try:
            state = load_desired(self._path)
            if self.status.state is not None:
                check_growth(self.status.state.volumes, state.volumes, self._path)
        except ConfigFileError as error:
            changed = self.status.error != str(error)
            self.status = DesiredStatus(self.status.state, str(error))
            if changed:
                log.error("%s: desired state refused, keeping the last good one: %s", self._node, error)
                self._events.append("desired.error", error=str(error))
            return changed
        if self.status.state == state and not self.status.error:
            return False
        self.status = DesiredStatus(state)
        self._events.append("desired.loaded", revision=state.revision, digest=state.digest)
        log.info("%s: desired state revision %d (%s)", self._node, state.revision, state.digest)
        return True

    async def watch(self, on_change: Callable[[], Awaitable[None]]) -> None:
        """Until cancelled: poll the file, re-read it at once on SIGHUP, and call `on_change` after
        every change of status."""
        loop = asyncio.get_running_loop()
        hangup = asyncio.Event()
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signal.SIGHUP, hangup.set)
        try:
            while True:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self._beat.until_next(DESIRED_POLL)):
                        await hangup.wait()
                forced = hangup.is_set()
                hangup.clear()
                if self.reload(force=forced):
                    await on_change()
        finally:
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.remove_signal_handler(signal.SIGHUP)
