"""The command's side of "one active scaler per pool".

The backend says what is shared and how it is held (`Backend.leadership()`: a lock on
the local state dir, a Kubernetes Lease). `Leader` uses it: acquire before anything
is adopted, renew before every cycle, and, once it is lost, act on nothing and stand
by until it is held again.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from .backends import Leadership
from .errors import first_line


class Leader:
    """Holds the pool's `Leadership` for the command."""

    def __init__(self, leadership: Leadership, *, log: logging.Logger):
        self.leadership = leadership
        self.log = log
        self._standing_by: asyncio.Future | None = None
        #: called when the pool is held again after a loss: what another scaler may have
        #: changed meanwhile (the pre-warm history's store) must be read again
        self.on_regain: list[Callable[[], None]] = []

    @property
    def leading(self) -> bool:
        """Not standing by: the pool was held at the last renewal."""
        return self._standing_by is None

    async def lead(self, *, wait: bool, stopping: asyncio.Event) -> bool:
        """Become the pool's active scaler (standing by first if `wait`); False if
        `stopping` is set before that. Raises what `acquire` raises."""
        acquiring = asyncio.ensure_future(self.leadership.acquire(wait=wait))
        stopped = asyncio.ensure_future(stopping.wait())
        try:
            await asyncio.wait([acquiring, stopped], return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopped.cancel()
            if not acquiring.done():
                acquiring.cancel()
            await asyncio.gather(acquiring, return_exceptions=True)
        if acquiring.cancelled() or acquiring.exception():
            await self.leadership.release()
            if acquiring.cancelled():
                return False
            raise acquiring.exception()
        self.log.debug("the active scaler of %s", self.leadership.what)
        return True

    async def may_act(self) -> bool:
        """Before a cycle acts: renew. Once lost, stand by (one log line) until held
        again; False meanwhile."""
        if self._standing_by is not None:
            if not self._standing_by.done():
                return False
            error = None if self._standing_by.cancelled() else self._standing_by.exception()
            self._standing_by = None
            if error is not None:  # tried again at the next cycle
                self.log.error("cannot take over %s again: %s", self.leadership.what, first_line(error))
                return False
            self.log.info("the active scaler of %s again", self.leadership.what)
            for regained in self.on_regain:
                regained()
        if await self.leadership.still_held():
            return True
        self.log.warning("no longer the active scaler of %s: standing by, acting on nothing",
                         self.leadership.what)
        self._standing_by = asyncio.ensure_future(self.leadership.acquire(wait=True))
        return False

    async def resign(self) -> None:
        """At exit: stop standing by, and let the next scaler take over at once."""
        if self._standing_by is not None:
            self._standing_by.cancel()
            await asyncio.gather(self._standing_by, return_exceptions=True)
            self._standing_by = None
        await self.leadership.release()
