"""The pool size by state over the last hour: a bounded ring of samples, pure data.

One sample per cycle, `(at, counts)`: `counts` maps each state with at least one
of our workers to how many there are. A cycle that could not see the pool
(`Snapshot.blind`) is kept as a gap (`counts` is None), so the chart breaks
there instead of drawing a pool that dropped to zero.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping
from types import MappingProxyType
from typing import NamedTuple

from ..model import Snapshot, WorkerState


class Sample(NamedTuple):
    at: float  # snapshot.taken_at, epoch seconds
    counts: Mapping[WorkerState, int] | None  # None: a blind cycle (gap)


class PoolHistory:
    """The last `window` seconds of samples taken every `interval` seconds.

    The ring holds `window / interval` samples (+1 for the edge). Cycles run more
    often than the poll interval (pushed hub events trigger extra ones): a sample
    less than half an interval after the previous one replaces it, so the ring
    still covers the whole window.
    """

    def __init__(self, *, interval: float, window: float = 3600.0):
        if interval <= 0 or window <= 0:
            raise ValueError("interval and window must be positive")
        self.window = window
        self.interval = interval
        self._samples: deque[Sample] = deque(maxlen=math.ceil(window / interval) + 1)

    @property
    def maxlen(self) -> int:
        return self._samples.maxlen or 0

    def __len__(self) -> int:
        return len(self._samples)

    def add(self, at: float, snapshot: Snapshot) -> None:
        """Record the pool as `snapshot` saw it at `at`."""
        counts: Mapping[WorkerState, int] | None = None
        if not snapshot.blind:
            tally: dict[WorkerState, int] = {}
            for w in snapshot.workers:
                if w.backend is not None:  # ours only, as the metrics count them
                    tally[w.state] = tally.get(w.state, 0) + 1
            counts = MappingProxyType(tally)
        if self._samples and 0 <= at - self._samples[-1].at < self.interval / 2:
            self._samples.pop()
        self._samples.append(Sample(at, counts))

    def samples(self, now: float) -> list[Sample]:
        """The samples of the last `window` seconds before `now`, oldest first."""
        start = now - self.window
        return [s for s in self._samples if start <= s.at <= now]
