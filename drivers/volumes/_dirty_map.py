"""Which blocks of a volume a replica has missed: one bit per 4 KiB block, as DRBD keeps it (a
1 TiB volume needs 32 MiB of map), so a replica back from a short absence receives about what was
written meanwhile, not whole chunks around each small write. Copies and locks work on regions of
REGION bytes: a run of dirty blocks inside a region moves as one piece. Pure."""

from __future__ import annotations

from collections.abc import Iterator

BLOCK = 4096
REGION = 256 * 1024
_PER_REGION = REGION // BLOCK


class DirtyMap:
    def __init__(self, size: int, *, all_dirty: bool = False) -> None:
        self.size = size
        self.blocks = (size + BLOCK - 1) // BLOCK
        self.regions = (size + REGION - 1) // REGION
        self._bits = bytearray(b"\xff" if all_dirty else b"\x00") * ((self.blocks + 7) // 8)
        if all_dirty and self.blocks % 8:
            self._bits[-1] = (1 << (self.blocks % 8)) - 1

    def _set(self, block: int) -> None:
        self._bits[block >> 3] |= 1 << (block & 7)

    def is_dirty(self, block: int) -> bool:
        return bool(self._bits[block >> 3] & (1 << (block & 7)))

    def mark(self, offset: int, length: int) -> None:
        """The range [offset, offset + length) changed without this replica."""
        if length <= 0:
            return
        for block in range(offset // BLOCK, (offset + length - 1) // BLOCK + 1):
            self._set(block)

    def dirty_regions(self) -> Iterator[int]:
        """Regions holding at least one dirty block, in order."""
        step = _PER_REGION // 8
        for region in range(self.regions):
            if any(self._bits[region * step:(region + 1) * step]):
                yield region

    def runs(self, region: int) -> list[tuple[int, int]]:
        """(offset, length) of each run of dirty blocks in a region."""
        found: list[tuple[int, int]] = []
        first = region * _PER_REGION
        start = None
        for block in range(first, min(first + _PER_REGION, self.blocks) + 1):
            dirty = block < min(first + _PER_REGION, self.blocks) and self.is_dirty(block)
            if dirty and start is None:
                start = block
            elif not dirty and start is not None:
                found.append((start * BLOCK, min(block * BLOCK, self.size) - start * BLOCK))
                start = None
        return found

    def clear_region(self, region: int) -> None:
        for block in range(region * _PER_REGION, min((region + 1) * _PER_REGION, self.blocks)):
            self._bits[block >> 3] &= ~(1 << (block & 7)) & 0xFF

    def count(self) -> int:
        """Dirty blocks."""
        return sum(bin(byte).count("1") for byte in self._bits)

    def region_span(self, region: int) -> tuple[int, int]:
        offset = region * REGION
        return offset, min(REGION, self.size - offset)
