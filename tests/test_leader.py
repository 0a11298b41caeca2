"""`Leader` on a pool held by a Leadership that the test takes away and gives back: while
lost it stands by (`leading` False), and holding it again calls `on_regain` once. The
command's processes on a real Lease: tests/test_leadership_kube.py."""

from __future__ import annotations

import asyncio
import logging

from jhub_spark_scaler.backends import Leadership
from jhub_spark_scaler.leader import Leader


class Taken(Leadership):
    """Held until `lose()`; `acquire(wait=True)` then waits for `give_back()`."""

    what = "the test's pool"

    def __init__(self):
        self.held = True
        self.free = asyncio.Event()

    def lose(self) -> None:
        self.held = False
        self.free.clear()

    def give_back(self) -> None:
        self.free.set()

    async def acquire(self, *, wait: bool) -> None:
        await self.free.wait()
        self.held = True

    async def still_held(self) -> bool:
        return self.held


async def test_the_pool_held_again_is_announced_once_and_standing_by_is_not_leading():
    pool = Taken()
    leader = Leader(pool, log=logging.getLogger("test-leader"))
    regained = []
    leader.on_regain.append(lambda: regained.append(True))
    assert await leader.may_act() and leader.leading
    pool.lose()
    assert not await leader.may_act() and not leader.leading
    assert not await leader.may_act() and regained == []
    pool.give_back()
    await asyncio.sleep(0)  # the standby's acquire ends
    assert await leader.may_act() and leader.leading and regained == [True]
    assert await leader.may_act() and regained == [True]
    await leader.resign()
