"""What the soak measures on the pool, the same way for every strategy: the worker
JVMs on the soak's addresses (processes, so a killed scaler or a blind apiserver
cannot hide one), joined with the master's view of which are busy."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

from .cluster import master_json, worker_processes


@dataclass
class PoolStats:
    worker_seconds: float = 0.0
    idle_worker_seconds: float = 0.0
    peak_workers: int = 0
    arrivals: list[tuple[float, str]] = field(default_factory=list)  # (wall time, host)
    departures: list[tuple[float, str]] = field(default_factory=list)  # (wall time, host)
    #: of the departures, those of a worker the master last showed DECOMMISSIONED: a
    #: retirement finishing (its drain was decided while the pool could be seen)
    drained_departures: list[tuple[float, str]] = field(default_factory=list)
    #: per sample that could read the master: (wall time, workers ready for an app (ALIVE, no
    #: cores in use), worker JVMs the master does not list yet (starting))
    readiness: list[tuple[float, int, int]] = field(default_factory=list)

    @property
    def scale_ups(self) -> int:
        return len(self.arrivals)


class PoolSampler:
    """Samples every `interval` s until stopped: worker processes on `host_prefix`,
    busy = the master shows the worker ALIVE or DECOMMISSIONED with cores in use."""

    def __init__(self, host_prefix: str, master_ui: str, interval: float = 1.0):
        self.host_prefix, self.master_ui, self.interval = host_prefix, master_ui, interval
        self.stats = PoolStats()
        self.members: dict[int, str] = {}
        self.busy: set[str] = set()
        self.decommissioned: set[str] = set()

    def sample(self) -> None:
        now = time.time()
        members = worker_processes(self.host_prefix)
        try:
            doc = master_json(self.master_ui, 2)
            workers = doc.get("workers", [])
            self.busy = {w["host"] for w in workers
                         if w.get("state") in ("ALIVE", "DECOMMISSIONED") and w.get("coresused", 0) > 0}
            self.decommissioned = {w["host"] for w in workers if w.get("state") == "DECOMMISSIONED"}
            ready = {w["host"] for w in workers if w.get("state") == "ALIVE" and w.get("coresused", 0) == 0}
            listed = {w["host"] for w in workers if w.get("state") in ("ALIVE", "DECOMMISSIONED")}
            hosts = members.values()
            self.stats.readiness.append((now, sum(1 for h in hosts if h in ready),
                                         sum(1 for h in hosts if h not in listed)))
        except (OSError, ValueError):
            pass  # the master is down: the last busy and decommissioned sets stand
        stats = self.stats
        stats.arrivals += [(now, host) for pid, host in members.items() if pid not in self.members]
        gone = [(now, host) for pid, host in self.members.items() if pid not in members]
        stats.departures += gone
        stats.drained_departures += [(at, host) for at, host in gone if host in self.decommissioned]
        self.members = members
        stats.peak_workers = max(stats.peak_workers, len(members))
        busy = sum(1 for host in members.values() if host in self.busy)
        stats.worker_seconds += self.interval * len(members)
        stats.idle_worker_seconds += self.interval * (len(members) - busy)

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            started = time.monotonic()
            await asyncio.to_thread(self.sample)
            try:
                await asyncio.wait_for(stop.wait(), max(0.0, self.interval - (time.monotonic() - started)))
            except asyncio.TimeoutError:
                pass
