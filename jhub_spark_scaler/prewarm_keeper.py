"""The pre-warm history kept in the backend's store, out of the cycle's way.

`load()` reads the store once at start (at most `IO_TIMEOUT`); after that `tick()`, called
from the cycle with every observation, starts at most one read or write in the background
and returns at once: a slow or unreachable store never holds up a cycle. A write happens
only when the record changed, and at most once per the store's `write_interval` (30 s
for a ConfigMap, none for a local file); `flush()` writes the last change at exit.

Whatever goes wrong ends in one warning line per kind of trouble, naming what to fix, and
the scaler goes on with the history it has in memory. A store that cannot be read
(missing, forbidden, unreachable) is read again every interval, and its record merged in
once it can be; until then nothing is written to it, so a stored history is never
replaced by a scaler that did not read it. A store that holds something else than a
record is taken as empty (everyone pre-warms) and replaced by the next write.
"""

from __future__ import annotations

import asyncio
import logging
import math

from .backends.history_store import HistoryStore, StoreError, Unreadable
from .prewarm_history import PrewarmHistory, parse_record

#: seconds a read or write of the store may take; past it, it is tried again next interval
IO_TIMEOUT = 10.0


class PrewarmKeeper:
    """Loads `history` from `store` and saves it there (None: in memory only)."""

    def __init__(self, history: PrewarmHistory, *, store: HistoryStore | None, log: logging.Logger,
                 timeout: float = IO_TIMEOUT):
        self.history = history
        self.store = store
        self.log = log
        self.timeout = timeout
        #: the store was read (or held no record): from now on it may be written
        self.loaded = False
        self._saved: dict | None = None  # the record as last read or written
        self._saved_version = -1
        self._last_try = -math.inf  # when the last read or write began (`tick`'s clock)
        self._task: asyncio.Future | None = None
        self._problems: set[str] = set()  # the kinds of trouble logged: each once

    @property
    def active(self) -> bool:
        return self.store is not None and self.history.keep > 0

    async def load(self) -> None:
        """At start: read the store and take its record in (bounded; never raises)."""
        if self.active:
            await self._guarded(self._load())

    def reread(self) -> None:
        """Another scaler may have written the store while this one stood by: read it
        again (merged with what is in memory) before anything is written."""
        self.loaded = False
        self._last_try = -math.inf

    def tick(self, now: float) -> None:
        """Start a read (the store could not be read yet) or a write (the record changed) in
        the background, at most one per the store's `write_interval`; never waits."""
        if not self.active or self._task is not None and not self._task.done():
            return
        if now - self._last_try < self.store.write_interval:
            return
        if not self.loaded:
            job = self._load()
        elif self.history.version != self._saved_version:
            job = self._save()
        else:
            return
        self._last_try = now
        self._task = asyncio.ensure_future(self._guarded(job))

    async def flush(self) -> None:
        """At exit: let a read or write in flight end, then write the last change (each
        bounded by `timeout`; never raises)."""
        if not self.active:
            return
        if self._task is not None and not self._task.done():
            await asyncio.wait([self._task], timeout=self.timeout)
            self._task.cancel()
        if self.loaded and self.history.version != self._saved_version:
            await self._guarded(self._save())

    async def _load(self) -> None:
        what = self.store.what
        try:
            doc = await asyncio.wait_for(self.store.read(), self.timeout)
            users = parse_record(doc, keep=self.history.keep) if doc is not None else {}
        except (Unreadable, ValueError) as e:
            why = str(e) if isinstance(e, Unreadable) else f"{what} holds no pre-warm history: {e}"
            self._warn("unreadable", "pre-warm history not read: %s; starting with none (everyone "
                       "pre-warms), replaced by the next write", why)
            self.loaded = True
            return
        except (StoreError, asyncio.TimeoutError) as e:
            self._warn(self._kind("read", e), "pre-warm history not read: %s; kept in memory only (a "
                       "restart forgets it), read again every %g s", self._why(e), self.store.write_interval)
            return
        self.history.merge(users)
        self.loaded = True
        # written at the next tick only if the merge changed it
        self._saved, self._saved_version = doc if doc is not None else {"users": {}}, -1
        self._problems.clear()
        self.log.info("pre-warm history of %d users read from %s", len(users), what)

    async def _save(self) -> None:
        version = self.history.version
        record = self.history.record(max_bytes=self.store.max_bytes)
        if record == self._saved:
            self._saved_version = version
            return
        try:
            await asyncio.wait_for(self.store.write(record), self.timeout)
        except (StoreError, asyncio.TimeoutError) as e:
            self._warn(self._kind("write", e), "pre-warm history not saved: %s; kept in memory, "
                       "written again in %g s", self._why(e), self.store.write_interval)
            return
        self._saved, self._saved_version = record, version
        if self._problems - {"unreadable"}:  # a warning said it was not
            self.log.info("pre-warm history saved in %s again", self.store.what)
        self._problems.clear()

    def _why(self, error: Exception) -> str:
        if isinstance(error, asyncio.TimeoutError):
            return f"{self.store.what}: no answer within {self.timeout:g} s"
        return str(error)

    def _kind(self, action: str, error: Exception) -> str:
        """The trouble without its details (an address, a reason that varies between tries)."""
        return f"{action} {type(error).__name__} {self._why(error).split(': ')[0]}"

    def _warn(self, kind: str, message: str, *args) -> None:
        """Log each kind of trouble once, until the store works again."""
        if kind not in self._problems:
            self._problems.add(kind)
            self.log.warning(message, *args)

    async def _guarded(self, job) -> None:
        try:
            await job
        except Exception:  # a bug: logged, and the scaler goes on without the store's help
            self.log.exception("pre-warm history: reading or writing %s failed", self.store.what)
