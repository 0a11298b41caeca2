"""One cycle: observe, plan, act. Owns the retirement state machine.

    idle --decommission--> draining --(worker's own executors empty)--> drained --stop--> gone
                                 \\--(executors stay: app without decommission)--> held (waited on)

No state of its own survives a restart: the backend persists which workers are
retiring, the master and workers say the rest, so a new process resumes drains.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from . import clock
from .backends import Backend
from .model import BackendWorker, MasterWorker, Snapshot, WorkerState, WorkerStatus
from .observe import ObserveSettings, build_snapshot, is_retiring, join
from .policy import History, Plan, PolicySettings, plan
from .spark import SparkClient, SparkError

#: how many worker /json/ reads run at once
WORKER_READ_CONCURRENCY = 16


@dataclass(frozen=True, slots=True)
class Decision:
    """One entry of the decision log: what was done (or seen), when and why."""

    at: float
    action: str  # start, retire, stop, blind, seeing, error
    detail: str
    reasons: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class CycleReport:
    """What one pass saw, decided and did: for metrics and the pool history."""

    snapshot: Snapshot
    plan: Plan
    duration: float  # seconds
    started: int  # workers started
    decisions: tuple[Decision, ...]  # recorded during the pass


class Reconciler:
    def __init__(
        self,
        *,
        backend: Backend,
        spark: SparkClient,
        policy: PolicySettings,
        observe: ObserveSettings,
        log: logging.Logger,
        prewarm_credit: Callable[[tuple[float, ...]], int] = lambda app_starts: 0,
        decision_log_size: int = 500,
        on_cycle: Callable[[CycleReport], None] = lambda report: None,
    ):
        self.backend = backend
        self.spark = spark
        self.policy = policy
        self.observe_settings = observe
        self.log = log
        self.prewarm_credit = prewarm_credit
        self.on_cycle = on_cycle
        self._pass: list[Decision] = []  # decisions of the running pass
        self._started = 0
        self.history = History()
        self.decisions: deque[Decision] = deque(maxlen=decision_log_size)
        self.last_snapshot: Snapshot | None = None
        self.last_plan: Plan | None = None
        self._lock = asyncio.Lock()
        self._again = False
        self._blind_reason = ""
        #: set by the admin page: observe and plan go on, act starts/retires/stops nothing
        self.paused = False

    async def cycle(self) -> Plan | None:
        """Run one pass. Passes never overlap: asked for during one, it returns None
        and the running pass goes round once more, so no request (a pushed hub
        event, say) waits for the next poll."""
        if self._lock.locked():
            self._again = True
            return None
        async with self._lock:
            self._again = True
            while self._again:
                self._again = False
                self._pass, self._started, began = [], 0, clock.now()
                snapshot = await self.observe()
                decided = plan(snapshot, self.policy, self.history)
                self.history = decided.history
                self.last_snapshot, self.last_plan = snapshot, decided
                await self.act(decided, snapshot)
                self.on_cycle(CycleReport(snapshot, decided, clock.now() - began, self._started,
                                          tuple(self._pass)))
            return decided

    # -- observe -------------------------------------------------------------

    async def observe(self) -> Snapshot:
        master_error = backend_error = ""
        master, listed = await asyncio.gather(self.spark.master(), self.backend.list(),
                                              return_exceptions=True)
        if isinstance(master, BaseException):
            if not isinstance(master, SparkError):
                raise master
            master_error, master = str(master), None
        if isinstance(listed, BaseException):  # any failure to list means we are blind
            if isinstance(listed, asyncio.CancelledError):
                raise listed
            backend_error, listed = f"cannot list workers: {listed}", []
        backend_workers: list[BackendWorker] = listed
        joined = join(master.workers if master else (), backend_workers)
        statuses = {}
        if master is not None:
            retiring = [(b, m) for b, m in joined[0] if b.running and is_retiring(b, m)]
            statuses = await self._read_workers(retiring)
        return build_snapshot(
            now=clock.now(),
            master=master,
            joined=joined,
            worker_statuses=statuses,
            settings=self.observe_settings,
            prewarm_credit=self.prewarm_credit(master.app_starts if master else ()),
            master_error=master_error,
            backend_error=backend_error,
        )

    async def _read_workers(self, pairs) -> dict[str, WorkerStatus | str]:
        """Each retiring worker's own /json/ (or the error reading it), a few at a time."""
        limit = asyncio.Semaphore(WORKER_READ_CONCURRENCY)

        async def read(b: BackendWorker, m: MasterWorker | None) -> WorkerStatus | str:
            url = b.webui_url or (m.webui_address if m else "")
            if not url:
                return "no web UI address known"
            async with limit:
                try:
                    return await self.spark.worker(url)
                except SparkError as e:
                    return str(e)

        results = await asyncio.gather(*(read(b, m) for b, m in pairs))
        return {b.handle: result for (b, _), result in zip(pairs, results)}

    # -- act -----------------------------------------------------------------

    def record(self, action: str, detail: str, reasons: tuple[str, ...] = ()) -> None:
        decision = Decision(clock.now(), action, detail, reasons)
        self.decisions.append(decision)
        self._pass.append(decision)
        self.log.info("%s: %s", action, detail)

    def _note_blindness(self, snapshot: Snapshot) -> None:
        reason = snapshot.master_error or snapshot.backend_error
        if reason and not self._blind_reason:
            self.record("blind", f"retiring nothing until the pool can be seen again: {reason}")
            self.log.warning("blind: %s", reason)
        elif not reason and self._blind_reason:
            self.record("seeing", "master and backend readable again")
        self._blind_reason = reason

    async def act(self, decided: Plan, snapshot: Snapshot) -> None:
        self._note_blindness(snapshot)
        if snapshot.blind or self.paused:
            return
        by_handle = {w.handle: w for w in snapshot.workers}
        reasons = decided.reasons
        await self._each("stop", decided.stop, lambda h: self.backend.stop(by_handle[h].backend), reasons)
        await self._each("retire", decided.retire, lambda h: self._decommission(by_handle[h].backend),
                         reasons)
        # A retiring worker the master still calls ALIVE never got (or lost) its
        # decommission, e.g. the scaler died between marking and signalling: resend.
        unacknowledged = [
            w.handle for w in snapshot.workers
            if w.state is WorkerState.DRAINING and w.master is not None and w.master.state == "ALIVE"
        ]
        await self._each("redecommission", unacknowledged, lambda h: self._decommission(by_handle[h].backend),
                         quiet=True)
        if decided.start:
            try:
                started = await self.backend.start(decided.start)
            except Exception as e:
                self.record("error", f"starting {decided.start} workers failed: {e}")
            else:
                self._started = len(started)
                names = ", ".join(b.handle for b in started)
                self.record("start", f"started {len(started)} ({names})", decided.reasons)

    async def _decommission(self, worker: BackendWorker) -> None:
        await self.backend.decommission(worker)  # marks it retiring first: survives our death
        if self.backend.decommission_via_master:
            await self.spark.decommission_host(worker.host)

    async def _each(self, action: str, handles, call, reasons: tuple[str, ...] = (), *, quiet=False) -> None:
        """Run `call(handle)` for each handle concurrently; one failure never stops the rest.
        Successes go to the decision log unless `quiet`."""

        async def one(handle: str) -> None:
            try:
                await call(handle)
            except Exception as e:
                self.log.exception("%s %s failed", action, handle)
                self.record("error", f"{action} {handle} failed: {e}")
            else:
                if not quiet:
                    self.record(action, handle, tuple(r for r in reasons if f" {handle}:" in r))

        await asyncio.gather(*(one(h) for h in handles))
