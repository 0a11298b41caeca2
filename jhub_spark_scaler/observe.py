"""Join what the backend runs with what the master sees, and name each worker's state.

Pure functions: the reconciler does the I/O and hands the answers in. Besides the
retiring workers, whose own /json/ is read every cycle, a few busy workers are read
each cycle for the page (which apps run where); `pick_reads` chooses them and
`next_reads` keeps what was read while it can still be true.
A backend worker and a master entry are the same worker when they share the
host and (where the backend knows it) the port: every worker has a host of
its own, because Spark's decommission matches by host.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import NamedTuple

from .model import (
    BackendWorker,
    Executor,
    MasterStatus,
    MasterWorker,
    NodeWait,
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
    #: instead of start_timeout, for a worker a node is being added for (`NodeWait.COMING`)
    node_wait_timeout: float
    #: a decommissioned worker whose executors stay this long is "held"
    held_after: float


Joined = tuple[list[tuple[BackendWorker, MasterWorker | None]], list[MasterWorker]]


#: the busy workers by handle: (ours, or None for a foreign one; the master's entry)
Busy = dict[str, tuple[BackendWorker | None, MasterWorker]]


class ExecutorRead(NamedTuple):
    """What a busy worker's own /json/ listed when it was last read (or tried)."""

    read_at: float
    cores_used: int  # the master's cores_used for the worker when it was read
    executors: tuple[Executor, ...] | None  # None: the read failed, or cores_used changed since


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


def webui_url(b: BackendWorker | None, m: MasterWorker | None) -> str:
    """Where a worker's own /json/ is: the backend's address for it, else the master's."""
    return (b.webui_url if b else "") or (m.webui_address if m else "")


def busy_workers(joined: Joined) -> Busy:
    """The workers the master says are busy (ALIVE, cores used), ours not retiring and foreign:
    the same test as `classify`'s and `foreign_worker`'s for BUSY. Ours keep `join`'s pairs:
    no new object per worker each cycle, for the garbage collector to count."""
    paired, foreign = joined
    busy: Busy = {}
    for pair in paired:
        b, m = pair
        if m is not None and m.cores_used and m.state == ALIVE and b.running and b.retiring_since is None:
            busy[b.handle] = pair
    for m in foreign:
        if m.cores_used and m.state == ALIVE:
            busy[foreign_handle(m)] = (None, m)
    return busy


def pick_reads(busy: Busy, reads: Mapping[str, ExecutorRead], budget: int) -> list[str]:
    """The handles of the busy workers to read this cycle, at most `budget`: first those never
    read, then those whose cores_used changed since their read (their apps probably did), then
    the oldest reads. A failed read counts as a read: an unreadable worker starves no other."""

    def rank(handle: str) -> tuple[int, float]:
        read = reads.get(handle)
        if read is None:
            return 0, 0.0
        return (1 if read.cores_used != busy[handle][1].cores_used else 2), read.read_at

    return heapq.nsmallest(budget, busy, key=rank)  # stable: ties keep the master's order


def next_reads(
    busy: Busy, reads: Mapping[str, ExecutorRead], results: Mapping[str, WorkerStatus | str], now: float,
) -> dict[str, ExecutorRead]:
    """The reads to keep after this cycle: one per worker still busy (the gone and idle ones
    dropped), this cycle's `results` (a worker's /json/ or the error reading it) as read at
    `now`. A failed read keeps nothing to show; so does an older read once the worker's
    cores_used has changed, even if it changes back (its apps may have changed meanwhile)."""
    kept = {}
    for handle, (_, m) in busy.items():
        result = results.get(handle)
        if result is not None:
            executors = result.executors if isinstance(result, WorkerStatus) else None
            kept[handle] = ExecutorRead(now, m.cores_used, executors)
        elif (read := reads.get(handle)) is not None:
            kept[handle] = read if read.cores_used == m.cores_used else read._replace(executors=None)
    return kept


#: no busy worker's reads (the default of `classify` and `foreign_worker`)
NO_READS: Mapping[str, ExecutorRead] = MappingProxyType({})


def _busy(b: BackendWorker, m: MasterWorker, busy_reads: Mapping[str, ExecutorRead]) -> Worker:
    """A busy worker, with its last read's executors while its cores_used is as it was then."""
    read = busy_reads.get(b.handle)
    if read is None or read.executors is None or read.cores_used != m.cores_used:
        return Worker(b.handle, b.host, WorkerState.BUSY, b, m)
    return Worker(b.handle, b.host, WorkerState.BUSY, b, m, read.executors, "", read.read_at)


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


def unregistered(b: BackendWorker, age: float, settings: ObserveSettings) -> tuple[WorkerState, str]:
    """The state of a running worker of ours the master does not list, `age` seconds after it
    was started, or after the master came back or was replaced if that was later (`classify`'s
    `master_since`). Starting (its backend's problem, if any, as why) for start_timeout; for
    node_wait_timeout instead when a node was added for it (COMING: its problem then says
    "waiting for a node"; ADDED: placed on that node, its image being pulled). Unschedulable
    past that, or at once when the scheduler cannot place it and the node autoscaler said it
    adds no node for it: removed, and scale-up pauses."""
    if b.node is NodeWait.NEVER:
        return WorkerState.UNSCHEDULABLE, b.problem or "no node will be added for it"
    scaled_up = b.node is NodeWait.COMING or b.node is NodeWait.ADDED
    name = "node_wait_timeout" if scaled_up else "start_timeout"
    bound = settings.node_wait_timeout if scaled_up else settings.start_timeout
    if age >= bound and scaled_up:
        why = f"not registered within {name}"
        return WorkerState.UNSCHEDULABLE, f"{why} ({b.problem})" if b.problem else why
    if age >= bound:
        return WorkerState.UNSCHEDULABLE, b.problem or f"not registered within {name}"
    return WorkerState.STARTING, b.problem


def classify(
    b: BackendWorker, m: MasterWorker | None, status: WorkerStatus | str | None,
    now: float, settings: ObserveSettings, busy_reads: Mapping[str, ExecutorRead] = NO_READS,
    master_since: float = 0.0,
) -> Worker:
    """The state of one of our workers. `status` is its own /json/ read at `now` (or the
    error reading it), needed only when `is_retiring(b, m)`; `busy_reads` the busy workers'
    last reads (`next_reads`), shown only: the state is the master's. `master_since`: when
    the master came back after it could not be read, or a new one (a replaced pod) answered:
    a running worker it does not list has start_timeout from then to register (again) before
    it counts as never registered, as the workers of a replaced master need to find its
    successor."""
    if b.running and m is not None and m.state == ALIVE and b.retiring_since is None:
        # the common case, kept short: it runs for every worker every cycle
        return _busy(b, m, busy_reads) if m.cores_used else Worker(b.handle, b.host, WorkerState.IDLE, b, m)
    if not b.running:
        gone = b.problem or "its process or pod is gone"  # the runtime's reason (OOMKilled), if it gave one
        state, why = WorkerState.LOST, "stopping" if b.stopping else gone
    elif m is not None and m.state == DEAD:
        state, why = WorkerState.LOST, "the master declared it DEAD"
    elif is_retiring(b, m):
        state, why = _retiring_state(b, m, status, now, settings)
    elif m is None:
        state, why = unregistered(b, now - max(b.created_at, master_since), settings)
    else:  # RECOVERING/UNKNOWN after a master failover: we cannot tell, so protect it
        state, why = WorkerState.BUSY, f"the master reports {m.state}"
    if isinstance(status, WorkerStatus):
        return Worker(b.handle, b.host, state, b, m, status.executors, why, now)
    return Worker(b.handle, b.host, state, b, m, None, why)


def foreign_handle(m: MasterWorker) -> str:
    return f"master:{m.id}"


def foreign_worker(m: MasterWorker, busy_reads: Mapping[str, ExecutorRead] = NO_READS) -> Worker:
    """A worker someone else runs; `busy_reads` as for `classify`."""
    handle, why = foreign_handle(m), "not managed by this scaler"
    if m.state != ALIVE:
        return Worker(handle, m.host, WorkerState.DRAINING, None, m, None, why)
    if not m.cores_used:
        return Worker(handle, m.host, WorkerState.IDLE, None, m, None, why)
    read = busy_reads.get(handle)
    if read is None or read.executors is None or read.cores_used != m.cores_used:
        return Worker(handle, m.host, WorkerState.BUSY, None, m, None, why)
    return Worker(handle, m.host, WorkerState.BUSY, None, m, read.executors, why, read.read_at)


def build_snapshot(
    *,
    now: float,
    master: MasterStatus | None,
    joined: Joined,
    worker_statuses: Mapping[str, WorkerStatus | str],
    settings: ObserveSettings,
    busy_reads: Mapping[str, ExecutorRead] | None = None,
    prewarm_credit: int = 0,
    master_error: str = "",
    backend_error: str = "",
    master_since: float = 0.0,
) -> Snapshot:
    """One cycle's view from `join()`'s result. `worker_statuses` maps a handle
    to its worker's /json/ (or the error reading it) for the retiring workers, read
    at `now`; `busy_reads` a handle to a busy worker's last read (`next_reads`); `master_since`
    as for `classify`."""
    paired, foreign = joined
    reads = busy_reads or NO_READS
    workers = [classify(b, m, worker_statuses.get(b.handle), now, settings, reads, master_since)
               for b, m in paired]
    workers += [foreign_worker(m, reads) for m in foreign]
    return Snapshot(
        taken_at=now,
        workers=tuple(workers),
        apps=master.apps if master else (),
        prewarm_credit=prewarm_credit,
        app_starts=master.app_starts if master else (),
        master_error=master_error,
        backend_error=backend_error,
    )
