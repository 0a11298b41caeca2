"""Join what the backend runs with what the master sees, and name each worker's state.

Pure functions: the reconciler does the I/O and hands the answers in.
A backend worker and a master entry are the same worker when they share the
host and (where the backend knows it) the port: every worker has a host of
its own, because Spark's decommission matches by host.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from .model import (
    BackendWorker,
    MasterStatus,
    MasterWorker,
    Snapshot,
    Worker,
    WorkerState,
    WorkerStatus,
)

ALIVE, DECOMMISSIONED, DEAD = "ALIVE", "DECOMMISSIONED", "DEAD"


@dataclass(frozen=True, slots=True)
class ObserveSettings:
    """How workers are classified; the defaults are the command's (`SparkScalerApp`)."""

    #: a worker not registered this long after it was started is unschedulable
    start_timeout: float
    #: a decommissioned worker whose executors stay this long is "held"
    held_after: float


Joined = tuple[list[tuple[BackendWorker, MasterWorker | None]], list[MasterWorker]]


def _newest(entries: Iterable[MasterWorker]) -> MasterWorker | None:
    """Prefer a live entry; among equals the latest heartbeat (DEAD entries linger)."""
    return max(entries, key=lambda m: (m.state != DEAD, m.last_heartbeat, m.id), default=None)


def join(
    master_workers: Iterable[MasterWorker], backend_workers: Iterable[BackendWorker]
) -> Joined:
    """Pair each backend worker with its master entry; also return the unpaired
    master entries that are not DEAD (workers someone else runs)."""
    by_host: dict[str, list[MasterWorker]] = {}
    for m in master_workers:
        entries = by_host.get(m.host)
        if entries is None:
            by_host[m.host] = [m]
        else:
            entries.append(m)
    paired = []
    for b in backend_workers:
        entries = by_host.get(b.host) if b.host else None
        if not entries:
            m = None
        elif len(entries) == 1:  # the common case, kept cheap
            m = entries[0] if not b.port or entries[0].port == b.port else None
        else:
            m = _newest(e for e in entries if not b.port or e.port == b.port)
        if m is not None and m.state == DEAD and m.last_heartbeat < b.created_at * 1000:
            # Addresses are reused (pod IPs, 127.0.0.N): a DEAD entry last heard of
            # before this worker was created is an earlier worker's, not this one's.
            m = None
        paired.append((b, m))
    matched = {id(m) for _, m in paired if m is not None}
    foreign = [m for ms in by_host.values() for m in ms if m.state != DEAD and id(m) not in matched]
    return paired, foreign


def is_retiring(b: BackendWorker, m: MasterWorker | None) -> bool:
    """A worker whose own /json/ must be read: it is on its way out."""
    return b.retiring_since is not None or (m is not None and m.state == DECOMMISSIONED)


def _retiring_state(
    b: BackendWorker, m: MasterWorker | None, status: WorkerStatus | str | None,
    now: float, settings: ObserveSettings,
) -> tuple[WorkerState, str]:
    if not isinstance(status, WorkerStatus):
        return WorkerState.DRAINING, f"cannot read the worker: {status}" if status else ""
    if status.executors:
        apps = ", ".join(sorted({e.app_id for e in status.executors}))
        since = b.retiring_since if b.retiring_since is not None else b.created_at
        if now - since >= settings.held_after:
            return WorkerState.HELD, (
                f"executors of {apps} still running {settings.held_after:.0f} s after decommission "
                "(app without spark.decommission.enabled?)"
            )
        return WorkerState.DRAINING, f"waiting for executors of {apps}"
    if m is not None and m.state == ALIVE:
        return WorkerState.DRAINING, "the master has not yet marked it DECOMMISSIONED"
    return WorkerState.DRAINED, ""


def classify(
    b: BackendWorker, m: MasterWorker | None, status: WorkerStatus | str | None,
    now: float, settings: ObserveSettings,
) -> Worker:
    """The state of one of our workers. `status` is its own /json/ (or the error
    reading it), needed only when `is_retiring(b, m)`."""
    if b.running and m is not None and m.state == ALIVE and b.retiring_since is None:
        # the common case, kept short: it runs for every worker every cycle
        return Worker(b.handle, b.host, WorkerState.BUSY if m.cores_used else WorkerState.IDLE, b, m)
    if not b.running:
        state, why = WorkerState.LOST, "stopping" if b.stopping else "its process or pod is gone"
    elif m is not None and m.state == DEAD:
        state, why = WorkerState.LOST, "the master declared it DEAD"
    elif is_retiring(b, m):
        state, why = _retiring_state(b, m, status, now, settings)
    elif m is None and now - b.created_at >= settings.start_timeout:
        state, why = WorkerState.UNSCHEDULABLE, b.problem or "not registered within start_timeout"
    elif m is None:
        state, why = WorkerState.STARTING, b.problem
    else:  # RECOVERING/UNKNOWN after a master failover: we cannot tell, so protect it
        state, why = WorkerState.BUSY, f"the master reports {m.state}"
    executors = status.executors if isinstance(status, WorkerStatus) else None
    return Worker(b.handle, b.host, state, b, m, executors, why)


def foreign_worker(m: MasterWorker) -> Worker:
    if m.state == ALIVE:
        state = WorkerState.BUSY if m.cores_used else WorkerState.IDLE
    else:
        state = WorkerState.DRAINING
    return Worker(f"master:{m.id}", m.host, state, None, m, None, "not managed by this scaler")


def build_snapshot(
    *,
    now: float,
    master: MasterStatus | None,
    joined: Joined,
    worker_statuses: Mapping[str, WorkerStatus | str],
    settings: ObserveSettings,
    prewarm_credit: int = 0,
    master_error: str = "",
    backend_error: str = "",
) -> Snapshot:
    """One cycle's view from `join()`'s result. `worker_statuses` maps a handle
    to its worker's /json/ (or the error reading it) for the retiring workers."""
    paired, foreign = joined
    workers = [classify(b, m, worker_statuses.get(b.handle), now, settings) for b, m in paired]
    workers += [foreign_worker(m) for m in foreign]
    return Snapshot(
        taken_at=now,
        workers=tuple(workers),
        apps=master.apps if master else (),
        prewarm_credit=prewarm_credit,
        app_starts=master.app_starts if master else (),
        master_error=master_error,
        backend_error=backend_error,
    )
