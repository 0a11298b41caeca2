"""One cycle: observe, plan, act. Owns the retirement state machine.

    idle --decommission--> draining --(worker's own executors empty)--> drained --stop--> gone
                                 \\--(executors stay: app without decommission)--> held (waited on)

With `drain_timeout` set, a draining or held worker retiring for that long is stopped anyway
(a "drain-timeout" decision naming the apps that lose executors, and a warning logged).

No state of its own survives a restart: the backend persists which workers are
retiring, the master and workers say the rest, so a new process resumes drains.

Errors: blind, or a bug
-----------------------

Blind (the pool cannot be seen whole, so nothing is started, retired or stopped;
the cycle goes on, the page and the metrics say why, one "blind" decision is
recorded and a warning logged when it begins):

- the master cannot be read: `SparkError` from `SparkClient.master()` (unreachable,
  timeout, an HTTP error, an answer that is not the master's JSON, not ALIVE);
- the backend cannot list its workers: `BACKEND_UNREADABLE` from `Backend.list()`
  (`BackendError`, e.g. the pod cache while its watch fails or RBAC is missing;
  `OSError` and `TimeoutError`). A backend turns its platform's own errors into
  `BackendError` (the pod cache does), so this module knows no platform.

When the master answers again after it could not be read, or another master answers (a
new URL: its pod was replaced), a running worker of ours it does not list has start_timeout
from then to register with it before it counts as never registered and is stopped.

A retiring worker whose own /json/ cannot be read (`SparkError`) stays
draining: it is never stopped while its executors are unknown, unless drain_timeout
is set and has passed.

A few busy workers' own /json/ are read each cycle too (`BUSY_READS_PER_CYCLE`),
for the page only: which apps run where. Their state stays the master's and the
plan never looks at what they list. A busy worker that cannot be read, or does not
answer within `BUSY_READ_TIMEOUT`, shows as unread (nothing older is kept for it)
and the cycle goes on; a bug reading one is logged with its traceback, as below,
and changes nothing else.

With a shuffle service on the workers (`Backend.external_shuffle_service`), up to
`SHUFFLE_READS_PER_CYCLE` of our idle workers' own /json/ are read each cycle too, to
learn whose shuffle files they serve (`shuffle.py`). The plan keeps one not read yet,
or whose reads fail (an error or no answer within `BUSY_READ_TIMEOUT`), for up to
scale_down_delay of failures; a bug reading one is logged as below.

A bug (any other exception from the master client, the backend's `list()` or a
worker read, e.g. a KeyError in a parser) is loud: logged with its traceback on
every cycle it happens, and the cycle is blind with the reason "bug reading ...",
so it never retires anything and never hides as a quiet endless blindness. The
backends catch their own parsers' bugs where one bad item must not hide the rest:
the pod cache logs a pod it cannot read with its traceback (once per distinct
error) and its `list()` then raises `BackendError`, so the cycle is blind.
Anything else that fails inside a cycle (the pre-warm credit, building the
snapshot, planning) ends that cycle before it acts; the caller logs it with its
traceback (`SparkScalerApp.reconcile`) and the next cycle starts afresh.
`CancelledError` (and other BaseExceptions) always propagate.

A failed action (start, retire, stop, a resent decommission) is logged with its
traceback and recorded as an "error" decision; the other actions of the pass go on.

A saturated pool (more workers wanted than max_workers, `policy.SaturatedNote`) is
recorded and logged once when it begins ("saturated": wanted, max_workers, the apps
waiting and the longest wait) and once when it ends ("unsaturated": how long it lasted
and the longest an app waited); blind cycles neither begin nor end one.

Admin controls (`pause`, `resume`, `set_idle_override`) change what later cycles
do; each is recorded with who did it.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import replace
from types import MappingProxyType

from . import clock, shuffle
from .backends import Backend, BackendError
from .decisions import Action, CycleReport, Decision
from .model import AppStart, BackendWorker, ShuffleRead, Snapshot, WorkerState, WorkerStatus
from .observe import (
    Busy,
    ExecutorRead,
    ObserveSettings,
    build_snapshot,
    busy_workers,
    is_retiring,
    join,
    next_reads,
    pick_reads,
    webui_url,
)
from .policy import History, Plan, PolicySettings, describe, explain, plan, saturated_words, saturation
from .shuffle import kept_words
from .spark import SparkClient, SparkError

__all__ = ["Action", "CycleReport", "Decision", "Reconciler"]  # the records live in decisions.py

#: how many worker /json/ reads run at once
WORKER_READ_CONCURRENCY = 16

#: busy workers whose own /json/ is read each cycle, besides every retiring one, to name the
#: apps on them for the page. 8 keeps a cycle with up to 8 retiring workers within one round
#: of WORKER_READ_CONCURRENCY (one worker round trip, about 5 ms), while at the default
#: poll_interval (2 s) it is 240 reads a minute: a worker newly busy, or whose cores changed,
#: is read in the next cycle unless more than 8 are, and every one of 1,000 busy workers is
#: read again within about 4 minutes.
BUSY_READS_PER_CYCLE = 8
#: seconds a busy worker's read may take (http_timeout still applies): the reads are for the
#: page, so an unreachable worker (a foreign one on another network, say) delays a cycle by
#: at most this, not by http_timeout. A local worker answers in about 5 ms (at most 14 ms in
#: 40 reads on a loaded 2-CPU machine).
BUSY_READ_TIMEOUT = 1.0
#: with a shuffle service, our idle workers whose own /json/ is read each cycle to learn whose
#: shuffle files they keep (`shuffle.py`), within BUSY_READ_TIMEOUT: one round of
#: WORKER_READ_CONCURRENCY. An idle worker not yet read is kept; with more than 16 idle
#: workers new at once, the last of them is read within a cycle per 16.
SHUFFLE_READS_PER_CYCLE = 16

#: what `Backend.list()` raises when the workers cannot be listed: blind, not a bug
BACKEND_UNREADABLE = (BackendError, OSError, asyncio.TimeoutError)


class Reconciler:
    def __init__(
        self,
        *,
        backend: Backend,
        spark: SparkClient,
        policy: PolicySettings,
        observe: ObserveSettings,
        log: logging.Logger,
        decision_log_size: int,
        prewarm_credit: Callable[[tuple[AppStart, ...]], int] = lambda app_starts: 0,
        on_cycle: Callable[[CycleReport], None] = lambda report: None,
    ):
        self.backend = backend
        self.spark = spark
        #: the policy as configured; an idle override replaces idle_workers in what is planned with
        self.policy = policy
        self.observe_settings = observe
        self.log = log
        self.prewarm_credit = prewarm_credit
        self.on_cycle = on_cycle
        self._pass: list[Decision] = []  # recorded during the running pass
        self.history = History()
        self.decisions: deque[Decision] = deque(maxlen=decision_log_size)
        self._decisions_recorded = 0  # the last Decision.seq given
        self.last_snapshot: Snapshot | None = None
        self.last_plan: Plan | None = None
        self._lock = asyncio.Lock()
        #: busy workers' last reads, by handle (`observe.next_reads`): shown on the page only
        self._busy_reads: dict[str, ExecutorRead] = {}
        #: with a shuffle service, our idle workers' last reads, by handle (`shuffle.next_reads`)
        self._shuffle_reads: dict[str, ShuffleRead] = {}
        self._spared: dict[str, tuple[str, ...]] = {}  # the kept workers a "keep" decision named
        self._again = False
        self._blind_reason = ""
        #: the master's URL when last read (None: never read, "": unreadable since), and since
        #: when it has answered after an outage or a replacement (a new pod: a new URL)
        self._master_url: str | None = None
        self._master_since = 0.0
        self._saturated_since: float | None = None  # when the saturation seen now began
        self._longest_wait = 0.0  # the longest an app has waited since then, in seconds
        #: who paused the scaler (None: not paused): observe and plan go on, act does nothing
        self.paused_by: str | None = None
        #: idle_workers set by an admin (None: the configured value), and by whom
        self.idle_override: int | None = None
        self.idle_override_by: str | None = None

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
                self._pass, began = [], clock.now()
                snapshot = await self.observe()
                decided = plan(snapshot, self.effective_policy(), self.history)
                self.history = decided.history
                self.last_snapshot, self.last_plan = snapshot, decided
                await self.act(decided, snapshot)
                self.on_cycle(self._report(snapshot, decided, clock.now() - began))
            return decided

    def _report(self, snapshot: Snapshot, decided: Plan, duration: float) -> CycleReport:
        def handles(action: Action) -> tuple[str, ...]:
            return tuple(h for d in self._pass if d.action is action for h in d.handles)

        return CycleReport(
            snapshot, decided, duration, tuple(self._pass),
            started=handles(Action.START), retired=handles(Action.RETIRE),
            stopped=handles(Action.STOP) + handles(Action.DRAIN_TIMEOUT),
            errors=tuple(d for d in self._pass if d.action is Action.ERROR),
        )

    # -- admin controls ----------------------------------------------------------

    @property
    def paused(self) -> bool:
        return self.paused_by is not None

    def pause(self, *, by: str) -> None:
        """Go on observing and planning; start, retire and stop nothing until `resume`."""
        self.paused_by = by
        self.record(Action.PAUSE, f"by {by}: observing and planning, starting and retiring nothing")

    def resume(self, *, by: str) -> None:
        self.paused_by = None
        self.record(Action.RESUME, f"by {by}")

    def set_idle_override(self, value: int | None, *, by: str) -> None:
        """Plan with `value` idle workers instead of the configured idle_workers; None: back to it."""
        configured = self.policy.idle_workers
        self.idle_override, self.idle_override_by = value, (None if value is None else by)
        if value is None:
            detail = f"idle_workers back to the configured {configured}"
        else:
            detail = f"idle_workers {value} (override; configured {configured})"
        self.record(Action.IDLE_TARGET, f"{detail}, by {by}")

    def effective_policy(self) -> PolicySettings:
        """The policy the next plan uses: the configured one, with the idle override if any."""
        if self.idle_override is None:
            return self.policy
        return replace(self.policy, idle_workers=self.idle_override)

    # -- observe -------------------------------------------------------------

    async def observe(self) -> Snapshot:
        master, listed = await asyncio.gather(self.spark.master(), self.backend.list(),
                                              return_exceptions=True)
        master_error = backend_error = ""
        if isinstance(master, BaseException):
            master_error, master = self._failure(master, SparkError, doing="reading the master"), None
        if isinstance(listed, BaseException):
            backend_error = self._failure(listed, BACKEND_UNREADABLE, doing="listing workers",
                                          unreadable="cannot list workers: ")
            listed = []
        backend_workers: list[BackendWorker] = listed
        joined = join(master.workers if master else (), backend_workers)
        statuses: dict[str, WorkerStatus | str] = {}  # the retiring workers'
        results: dict[str, WorkerStatus | str] = {}  # the busy workers read this cycle
        busy: Busy | None = None  # None: the busy reads are kept as they are
        if master is not None:
            retiring = [(b.handle, webui_url(b, m)) for b, m in joined[0] if b.running and is_retiring(b, m)]
            # Blind to the backend, every worker would look foreign: keep the reads for later.
            busy = busy_workers(joined) if not backend_error else None
            chosen = pick_reads(busy or {}, self._busy_reads, BUSY_READS_PER_CYCLE)
            limit = asyncio.Semaphore(WORKER_READ_CONCURRENCY)  # the retiring ones queue first
            statuses, results = await asyncio.gather(
                self._read_workers(retiring, limit=limit),
                self._read_workers([(h, webui_url(*busy[h])) for h in chosen], limit=limit,
                                   timeout=BUSY_READ_TIMEOUT),
            )
        now = clock.now()
        self._note_master(master.url if master else None, now)
        if busy is not None:
            self._busy_reads = next_reads(busy, self._busy_reads, results, now)
        snapshot = build_snapshot(
            now=now,
            master=master,
            joined=joined,
            worker_statuses=statuses,
            busy_reads=self._busy_reads,
            settings=self.observe_settings,
            prewarm_credit=self.prewarm_credit(master.app_starts if master else ()),
            master_error=master_error,
            backend_error=backend_error,
            master_since=self._master_since,
        )
        return await self._read_shuffle(snapshot) if self.backend.external_shuffle_service else snapshot

    def _note_master(self, url: str | None, now: float) -> None:
        """Remember when the master came back or was replaced (`observe.classify`): its workers
        reconnect then. The first read after a start is neither: a worker of ours the master has
        never listed is judged from its own start."""
        if url is None:
            self._master_url = None if self._master_url is None else ""
            return
        if self._master_url is not None and url != self._master_url:
            self._master_since = now
        self._master_url = url

    async def _read_shuffle(self, snapshot: Snapshot) -> Snapshot:
        """With a shuffle service on the workers: read our idle workers' own /json/ for the
        apps that ran there (`shuffle.py`); blind, the reads are kept as they are."""
        if not snapshot.blind:
            targets = shuffle.candidates(snapshot)
            chosen = shuffle.pick(targets, self._shuffle_reads, SHUFFLE_READS_PER_CYCLE)
            results = await self._read_workers([(h, targets[h]) for h in chosen], timeout=BUSY_READ_TIMEOUT,
                                               limit=asyncio.Semaphore(WORKER_READ_CONCURRENCY))
            self._shuffle_reads = shuffle.next_reads(targets, self._shuffle_reads, results, snapshot.taken_at)
        reads = MappingProxyType(dict(self._shuffle_reads))
        return replace(snapshot, shuffle_service=True, shuffle_reads=reads)

    def _failure(self, error: BaseException, expected, *, doing: str, unreadable: str = "") -> str:
        """Why a read failed, in one line. An `expected` error is the part being unreadable
        (its message after `unreadable`); any other Exception is a bug, logged with its
        traceback. Others propagate."""
        if not isinstance(error, Exception):
            raise error
        if isinstance(error, expected):
            return unreadable + (str(error) or type(error).__name__)
        self.log.error("bug %s: %s: %s", doing, type(error).__name__, error, exc_info=error)
        return f"bug {doing}: {type(error).__name__}: {error} (see the scaler's log)"

    async def _read_workers(
        self, targets: list[tuple[str, str]], *, limit: asyncio.Semaphore, timeout: float | None = None
    ) -> dict[str, WorkerStatus | str]:
        """Each (handle, web UI address)'s own /json/ (or the error reading it), as many at a
        time as `limit` lets; `timeout`: seconds to wait for one answer, once its turn came."""

        async def read(handle: str, url: str) -> WorkerStatus | str:
            if not url:
                return "no web UI address known"
            async with limit:
                try:
                    return await asyncio.wait_for(self.spark.worker(url), timeout)  # None: no limit
                except Exception as e:
                    if timeout is not None and isinstance(e, asyncio.TimeoutError):
                        return f"no answer from {url} within {timeout:g} s"
                    return self._failure(e, SparkError, doing=f"reading worker {handle}")

        results = await asyncio.gather(*(read(handle, url) for handle, url in targets))
        return {handle: result for (handle, _), result in zip(targets, results)}

    # -- act -----------------------------------------------------------------

    def record(self, action: Action, detail: str, reasons: tuple[str, ...] = (),
               handles: tuple[str, ...] = ()) -> Decision:
        self._decisions_recorded += 1
        decision = Decision(clock.now(), action, detail, reasons, handles, self._decisions_recorded)
        self.decisions.append(decision)
        self._pass.append(decision)
        self.log.info("%s: %s", action.value, detail)
        return decision

    def _note_blindness(self, snapshot: Snapshot) -> None:
        reason = snapshot.master_error or snapshot.backend_error
        if reason and not self._blind_reason:
            self.record(Action.BLIND, f"retiring nothing until the pool can be seen again: {reason}")
            self.log.warning("blind: %s", reason)
        elif not reason and self._blind_reason:
            self.record(Action.SEEING, "master and backend readable again")
        self._blind_reason = reason

    def _note_saturation(self, decided: Plan, snapshot: Snapshot) -> None:
        """One decision (and log line) when the pool becomes saturated, one when it no longer
        is; a blind cycle changes neither, as what is wanted is then unknown."""
        if snapshot.blind:
            return
        note = saturation(decided)
        if note is not None:
            if self._saturated_since is None:
                self._saturated_since, self._longest_wait = snapshot.taken_at, 0.0
                self.record(Action.SATURATED, saturated_words(note))
            self._longest_wait = max(self._longest_wait, note.longest_wait)
        elif self._saturated_since is not None:
            lasted = snapshot.taken_at - self._saturated_since
            waited = (f"the longest an app waited: {self._longest_wait:.0f} s" if self._longest_wait
                      else "no app waited")
            self.record(Action.UNSATURATED,
                        f"wanted {decided.demand.wanted} workers, max_workers {self.policy.max_workers}, "
                        f"after {lasted:.0f} s saturated; {waited}")
            self._saturated_since = None

    def _note_kept(self, decided: Plan, snapshot: Snapshot) -> None:
        """One "keep" decision when a due scale-down first spares a worker for the shuffle files
        it serves (again if its apps change), remembered while the worker stays kept."""
        if snapshot.blind:
            return
        for h in decided.spared:
            keep = decided.kept[h]
            if self._spared.get(h) != keep.apps:
                self.record(Action.KEEP, f"{h}, {kept_words(keep)}", (describe(keep),), (h,))
                self._spared[h] = keep.apps
        self._spared = {h: apps for h, apps in self._spared.items() if h in decided.kept}

    async def act(self, decided: Plan, snapshot: Snapshot) -> None:
        self._note_blindness(snapshot)
        self._note_saturation(decided, snapshot)
        self._note_kept(decided, snapshot)
        if snapshot.blind or self.paused:
            return
        by_handle = {w.handle: w for w in snapshot.workers}
        timed_out = decided.timed_out
        await asyncio.gather(
            self._each(Action.STOP, [h for h in decided.stop if h not in timed_out],
                       lambda h: self.backend.stop(by_handle[h].backend), decided),
            self._each(Action.DRAIN_TIMEOUT, timed_out, lambda h: self.backend.stop(by_handle[h].backend),
                       decided),
        )
        await self._each(Action.RETIRE, decided.retire, lambda h: self._decommission(by_handle[h].backend),
                         decided)
        # A retiring worker the master still calls ALIVE never got (or lost) its
        # decommission, e.g. the scaler died between marking and signalling: resend.
        unacknowledged = [
            w.handle for w in snapshot.workers
            if w.state is WorkerState.DRAINING and w.master is not None and w.master.state == "ALIVE"
        ]
        await self._each(Action.REDECOMMISSION, unacknowledged,
                         lambda h: self._decommission(by_handle[h].backend), None)
        if decided.start:
            await self._start(decided)

    async def _start(self, decided: Plan) -> None:
        try:
            started = await self.backend.start(decided.start)
        except Exception as e:
            self.log.exception("start %d workers failed", decided.start)
            self.record(Action.ERROR, f"starting {decided.start} workers failed: {e}")
        else:
            handles = tuple(b.handle for b in started)
            self.record(Action.START, f"started {len(started)} ({', '.join(handles)})", explain(decided),
                        handles)

    async def _decommission(self, worker: BackendWorker) -> None:
        await self.backend.decommission(worker)  # marks it retiring first: survives our death
        if self.backend.decommission_via_master:
            await self.spark.decommission_host(worker.host)

    async def _each(self, action: Action, handles, call, decided: Plan | None) -> None:
        """Run `call(handle)` for each handle concurrently; one failure never stops the rest.
        Successes go to the decision log with the plan's reason for the handle; without a
        plan (a resent decommission) they are not recorded."""

        async def one(handle: str) -> None:
            try:
                await call(handle)
            except Exception as e:
                self.log.exception("%s %s failed", action.value, handle)
                self.record(Action.ERROR, f"{action.value} {handle} failed: {e}", handles=(handle,))
            else:
                if decided is not None:
                    reason = describe(decided.why[handle])
                    self.record(action, handle, (reason,), (handle,))
                    if action is Action.DRAIN_TIMEOUT:  # apps lost executors: the admin's to know
                        self.log.warning("%s", reason)

        await asyncio.gather(*(one(h) for h in handles))
