"""Which chunks of a volume a replica has missed: one bit per CHUNK bytes (DRBD keeps one per
4 KiB; 64 KiB keeps the map of a 1 TiB volume at 2 MiB). Pure."""

from __future__ import annotations

from collections.abc import Iterator

CHUNK = 64 * 1024


class DirtyMap:
    def __init__(self, size: int, *, all_dirty: bool = False) -> None:
        self.size = size
        self.chunks = (size + CHUNK - 1) // CHUNK
        self._bits = bytearray(b"\xff" if all_dirty else b"\x00") * ((self.chunks + 7) // 8)
        if all_dirty and self.chunks % 8:
            self._bits[-1] = (1 << (self.chunks % 8)) - 1

    def mark(self, offset: int, length: int) -> None:
        """The range [offset, offset + length) changed without this replica."""
        if length <= 0:
            return
        for chunk in range(offset // CHUNK, (offset + length - 1) // CHUNK + 1):
            self._bits[chunk >> 3] |= 1 << (chunk & 7)

    def clear(self, chunk: int) -> None:
        self._bits[chunk >> 3] &= ~(1 << (chunk & 7)) & 0xFF

    def is_dirty(self, chunk: int) -> bool:
        return bool(self._bits[chunk >> 3] & (1 << (chunk & 7)))

    def dirty(self) -> Iterator[int]:
        """Dirty chunks in order (a chunk marked while iterating is seen if it lies ahead)."""
        for index, byte in enumerate(self._bits):
            if byte:
                for bit in range(8):
                    if byte & (1 << bit):
                        yield index * 8 + bit

    def count(self) -> int:
        return sum(bin(byte).count("1") for byte in self._bits)

    def span(self, chunk: int) -> tuple[int, int]:
        """(offset, length) of a chunk; the last one may be short."""
        offset = chunk * CHUNK
        return offset, min(CHUNK, self.size - offset)
