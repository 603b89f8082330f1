"""The agent's periodic loops wait for shared beats, so one wake-up serves all of them."""

from __future__ import annotations

import asyncio

import pytest

from nodeorch.core.beat import Beat, until_beat


def test_every_interval_wakes_on_the_same_instants_of_the_agent_s_phase() -> None:
    assert until_beat(10.3, 1.0, 0.5) == pytest.approx(0.2)
    assert until_beat(10.5, 1.0, 0.5) == pytest.approx(1.0), "on a beat: the next one, never at once"
    for now in (10.05, 10.7, 11.49):
        one, two = now + until_beat(now, 1.0, 0.5), now + until_beat(now, 2.0, 0.5)
        assert (two - 0.5) % 2.0 == pytest.approx(0.0) and one <= two, "a 2 s beat is also a 1 s beat"
        assert (one - 0.5) % 1.0 == pytest.approx(0.0, abs=1e-9) or (one - 0.5) % 1.0 == pytest.approx(1.0)


async def test_loops_started_at_different_times_wake_together() -> None:
    loop = asyncio.get_running_loop()
    beat = Beat(phase=loop.time(), clock=loop.time)
    woke: list[float] = []

    async def periodic(start_after: float, interval: float) -> None:
        await asyncio.sleep(start_after)
        for _ in range(2):
            await asyncio.sleep(beat.until_next(interval))
            woke.append(loop.time() - beat.phase)

    await asyncio.gather(periodic(0.0, 0.2), periodic(0.07, 0.2), periodic(0.13, 0.4))
    # Each sleeping its interval from its own start, they would wake at six different instants.
    assert sorted(round(t / 0.2) for t in woke) == [1, 1, 2, 2, 2, 4], woke
    assert all(abs(t - round(t / 0.2) * 0.2) < 0.05 for t in woke), woke
