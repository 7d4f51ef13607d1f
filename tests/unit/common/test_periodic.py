"""Housekeeping jobs outlive a failed round."""
import asyncio

import pytest

from services.common.periodic import periodic


async def test_a_failed_round_is_retried_at_the_next_tick():
    rounds: list[int] = []

    async def step() -> int:
        rounds.append(len(rounds))
        if len(rounds) == 1:
            raise ConnectionError("database restarting")
        return 2

    task = asyncio.create_task(periodic("test purged", 0.01, step)())
    while len(rounds) < 3:
        await asyncio.sleep(0.01)
    assert not task.done()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
