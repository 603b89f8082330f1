"""An attacher in memory for unit tests: a volume's "filesystem" is a plain directory that keeps
its files across detach and attach, and an instance holding it keeps it from detaching."""

from __future__ import annotations

from pathlib import Path

from drivers.attach._types import AttachError


class MemoryAttacher:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._mounted: dict[str, Path] = {}
        self.busy: set[str] = set()
        """Volumes something still uses: detaching them fails, as a busy unmount does."""
        self.formatted: list[str] = []
        self.checked: list[str] = []
        self._unclean: set[str] = set()

    async def attach(self, volume: str, export: Path) -> Path:
        if volume in self._mounted:
            return self._mounted[volume]
        if not _exists(export):
            raise AttachError(f"volume {volume}: no NBD export at {export}")
        where = self.folder / volume
        if not where.exists():
            where.mkdir(parents=True)
            self.formatted.append(volume)
        elif volume in self._unclean:
            self.checked.append(volume)
        self._unclean.add(volume)
        self._mounted[volume] = where
        return where

    async def detach(self, volume: str) -> None:
        if volume not in self._mounted:
            return
        if volume in self.busy:
            raise AttachError(f"volume {volume}: {self._mounted[volume]} is still in use")
        del self._mounted[volume]
        self._unclean.discard(volume)

    def attached(self) -> dict[str, Path]:
        return dict(self._mounted)

    def lose_host(self) -> None:
        """The host dies: nothing is detached cleanly, so the next attach checks the filesystem."""
        self._mounted.clear()


def _exists(path: Path) -> bool:
    return path.exists()
