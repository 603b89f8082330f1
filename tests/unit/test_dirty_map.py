"""The dirty map: 4 KiB blocks, runs inside regions, all-dirty maps with a short last block."""

from __future__ import annotations

from drivers.volumes._dirty_map import BLOCK, REGION, DirtyMap


def test_small_writes_mark_only_their_blocks_and_come_back_as_runs() -> None:
    dirty = DirtyMap(4 * REGION)
    dirty.mark(10, 1)  # one byte dirties its whole block
    dirty.mark(REGION + 3 * BLOCK, 2 * BLOCK)
    dirty.mark(REGION + 5 * BLOCK, BLOCK)
    assert dirty.count() == 4
    assert list(dirty.dirty_regions()) == [0, 1]
    assert dirty.runs(0) == [(0, BLOCK)]
    assert dirty.runs(1) == [(REGION + 3 * BLOCK, 3 * BLOCK)]
    dirty.clear_region(1)
    assert list(dirty.dirty_regions()) == [0] and dirty.count() == 1


def test_an_all_dirty_map_covers_exactly_the_volume() -> None:
    size = REGION + 3 * BLOCK + 100
    dirty = DirtyMap(size, all_dirty=True)
    assert dirty.count() == REGION // BLOCK + 4
    assert dirty.runs(1) == [(REGION, size - REGION)], "the last run ends at the end of the volume"
    assert list(dirty.dirty_regions()) == [0, 1]
