"""The attach seam."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol


class AttachError(Exception):
    """A volume could not be attached or detached; the message says which step failed and why."""


class Attacher(Protocol):
    async def attach(self, volume: str, export: Path) -> Path:
        """Mount `volume`, served over NBD on the Unix socket `export`, and return where it is
        mounted. Makes an ext4 filesystem on first use and checks it after an unclean detach;
        returns at once when it is mounted already (after an agent restart)."""

    async def detach(self, volume: str) -> None:
        """Unmount and release it, flushing everything to the engine; no error if not attached.
        AttachError when something still uses it (it stays attached)."""

    def attached(self) -> dict[str, Path]:
        """Every volume mounted on this host by this attacher: volume -> mount point."""
