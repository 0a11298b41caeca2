"""The reconciler's error policy, decisions and admin controls, on small in-memory fakes.

The Spark master and the backend are fakes that answer (or raise) what a test sets, so
each path of the error policy in `reconciler.py`'s docstring runs in milliseconds. The
same paths on real Spark are in test_scaling.py and test_bad_input.py.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import replace

import pytest

from jhub_spark_scaler import clock, reconciler
from jhub_spark_scaler.app import SparkScalerApp
from jhub_spark_scaler.backends import Backend, BackendError
from jhub_spark_scaler.metrics import ScalerMetrics
from jhub_spark_scaler.model import (
    BackendWorker,
    Executor,
    MasterApp,
    MasterStatus,
    MasterWorker,
    WorkerState,
    WorkerStatus,
)
from jhub_spark_scaler.policy import explain
from jhub_spark_scaler.reconciler import Action, CycleReport, Reconciler
from jhub_spark_scaler.spark import SparkError
from jhub_spark_scaler.web import problems
from jhub_spark_scaler.web.history import PoolHistory
from jhub_spark_scaler.web.view import STATE_BADGES, pool_view

from .settings import DECISION_LOG_SIZE, make_observe, make_policy

LOG = "test.reconciler"


def master_entry(b: BackendWorker, *, state: str = "ALIVE", cores_used: int = 0) -> MasterWorker:
    return MasterWorker(f"worker-{b.handle}", b.host, 7078, b.webui_url, 2, cores_used, 1024, 0, state, 0)


class FakeSpark:
    master_ui_url = "http://master.invalid:8080"

    def __init__(self):
        self.error: BaseException | None = None
        self.worker_error: BaseException | None = None
        self.entries: dict[str, MasterWorker] = {}
        self.executors: dict[str, tuple[Executor, ...]] = {}  # by web UI address; none unless set
        self.worker_errors: dict[str, BaseException] = {}  # by web UI address
        self.delays: dict[str, float] = {}  # seconds before a worker answers, by web UI address
        self.reads: list[str] = []  # the web UI addresses read, in order
        self.apps: tuple[MasterApp, ...] = ()
        self.url = "spark://master.invalid:7077"  # a replaced master pod announces another

    async def master(self) -> MasterStatus:
        if self.error is not None:
            raise self.error
        return MasterStatus(self.url, "ALIVE", tuple(self.entries.values()), self.apps)

    async def worker(self, webui_url: str) -> WorkerStatus:
        self.reads.append(webui_url)
        await asyncio.sleep(self.delays.get(webui_url, 0))
        error = self.worker_errors.get(webui_url, self.worker_error)
        if error is not None:
            raise error
        return WorkerStatus("w", self.executors.get(webui_url, ()))

    async def decommission_host(self, host: str) -> None:
        pass


class FakeBackend(Backend):
    """Workers in a dict; every worker it starts registers at the fake master at once."""

    def __init__(self, spark: FakeSpark):
        super().__init__()
        self.spark = spark
        self.workers: dict[str, BackendWorker] = {}
        self.list_error: BaseException | None = None
        self.start_error: BaseException | None = None
        self.serial = 0

    def add(self, *, busy: bool = False) -> BackendWorker:
        self.serial += 1
        b = BackendWorker(f"w{self.serial}", f"10.0.0.{self.serial}", created_at=0.0, port=7078,
                          webui_url=f"http://10.0.0.{self.serial}:8081")
        self.workers[b.handle] = b
        self.spark.entries[b.handle] = master_entry(b, cores_used=1 if busy else 0)
        return b

    async def list(self) -> list[BackendWorker]:
        if self.list_error is not None:
            raise self.list_error
        return list(self.workers.values())

    async def start(self, n: int) -> list[BackendWorker]:
        if self.start_error is not None:
            raise self.start_error
        return [self.add() for _ in range(n)]

    async def decommission(self, worker: BackendWorker) -> None:
        self.workers[worker.handle] = worker._replace(retiring_since=1.0)
        self.spark.entries[worker.handle] = master_entry(worker, state="DECOMMISSIONED")

    async def stop(self, worker: BackendWorker) -> None:
        del self.workers[worker.handle]
        self.spark.entries.pop(worker.handle, None)  # a worker the master does not list too


@pytest.fixture
def scaler():
    spark = FakeSpark()
    backend = FakeBackend(spark)
    reports: list[CycleReport] = []
    r = Reconciler(backend=backend, spark=spark, policy=make_policy(max_workers=4, idle_workers=1,
                                                                    scale_down_delay=0),
                   observe=make_observe(), log=logging.getLogger(LOG), decision_log_size=DECISION_LOG_SIZE,
                   on_cycle=reports.append)
    return r, backend, spark, reports


def tracebacks(caplog) -> list[logging.LogRecord]:
    return [rec for rec in caplog.records if rec.name == LOG and rec.exc_info]


def actions(r: Reconciler) -> list[Action]:
    return [d.action for d in r.decisions]


# -- blind: the part cannot be read ------------------------------------------------


@pytest.mark.parametrize("error", [
    BackendError("missing RBAC permission: cannot list pods"),
    OSError("state dir unreadable"),
    asyncio.TimeoutError(),
])
async def test_a_backend_that_cannot_list_makes_the_scaler_blind_quietly(scaler, caplog, error):
    r, backend, spark, reports = scaler
    backend.add(), backend.add()  # one more idle worker than wanted: surplus
    backend.list_error = error
    for _ in range(3):
        await r.cycle()
    assert r.last_snapshot.backend_error.startswith("cannot list workers: ")
    assert "bug" not in r.last_snapshot.backend_error
    assert actions(r) == [Action.BLIND]
    assert len(backend.workers) == 2 and not tracebacks(caplog)


async def test_an_unreadable_master_makes_the_scaler_blind_quietly(scaler, caplog):
    r, backend, spark, reports = scaler
    backend.add(), backend.add()
    spark.error = SparkError("cannot reach Spark master at http://master.invalid:8080: refused")
    await r.cycle()
    await r.cycle()
    assert r.last_snapshot.master_error == str(spark.error)
    assert actions(r) == [Action.BLIND] and len(backend.workers) == 2 and not tracebacks(caplog)
    spark.error = None
    await r.cycle()
    assert actions(r) == [Action.BLIND, Action.SEEING, Action.RETIRE]


@pytest.mark.parametrize("change", ["replaced", "back after an outage"])
async def test_workers_a_new_or_returning_master_does_not_list_get_start_timeout_to_register_again(
        scaler, monkeypatch, change):
    """A worker running far longer than start_timeout, not yet listed by a master that was
    replaced (another URL) or could not be read: starting, not stopped, for start_timeout
    from when the master answered; back at the master, it is idle again. Not back in time,
    it is stopped as never registered."""
    r, backend, spark, reports = scaler
    t = [10_000.0]
    monkeypatch.setattr(reconciler.clock, "now", lambda: t[0])
    timeout = r.observe_settings.start_timeout
    w = backend.add()  # started at 0.0
    await r.cycle()
    for n, attempt in enumerate(("registers again", "does not")):
        del spark.entries[w.handle]  # its master is gone; the one answering now has not heard of it
        if change == "replaced":
            spark.url = f"spark://10.0.1.{n}:7077"
        else:
            spark.error = SparkError("cannot reach Spark master at http://master.invalid:8080: refused")
            await r.cycle()
            spark.error = None
        t[0] += 1
        await r.cycle()
        t[0] += timeout - 2
        await r.cycle()
        assert [(x.handle, x.state) for x in r.last_snapshot.workers] == [(w.handle, WorkerState.STARTING)]
        assert not {Action.STOP, Action.START} & set(actions(r)), attempt
        if attempt == "registers again":
            spark.entries[w.handle] = master_entry(w)
            await r.cycle()
            assert r.last_snapshot.workers[0].state is WorkerState.IDLE
    t[0] += 2
    await r.cycle()
    assert [d.handles for d in r.decisions if d.action is Action.STOP] == [(w.handle,)]


async def test_a_worker_the_master_never_listed_is_judged_from_its_own_start_at_the_first_read(scaler):
    """The scaler's first read of the master is no return: a worker of ours running longer
    than start_timeout that the master does not list is stopped at once."""
    r, backend, spark, reports = scaler
    w = backend.add()  # started at 0.0
    del spark.entries[w.handle]
    await r.cycle()
    assert [d.handles for d in r.decisions if d.action is Action.STOP] == [(w.handle,)]


# -- bugs: loud, and still nothing retired ----------------------------------------------


@pytest.mark.parametrize("part", ["master", "backend"])
async def test_a_bug_reading_the_master_or_backend_is_logged_with_its_traceback_every_cycle(
    scaler, caplog, part
):
    r, backend, spark, reports = scaler
    backend.add(), backend.add()
    bug = KeyError("coresused")
    if part == "master":
        spark.error = bug
    else:
        backend.list_error = bug
    for _ in range(2):
        await r.cycle()
    error = r.last_snapshot.master_error or r.last_snapshot.backend_error
    assert r.last_snapshot.blind and "bug" in error and "KeyError" in error and "coresused" in error
    logged = tracebacks(caplog)
    assert len(logged) == 2 and all(rec.exc_info[1] is bug for rec in logged)
    assert len(backend.workers) == 2, "a bug never leads to a retirement"
    assert actions(r) == [Action.BLIND]
    assert len(reports) == 2 and reports[-1].snapshot.blind  # the page and the metrics see it


async def test_cancellation_is_never_taken_for_blindness(scaler):
    r, backend, spark, reports = scaler
    backend.list_error = asyncio.CancelledError()
    with pytest.raises(asyncio.CancelledError):
        await r.cycle()


async def test_a_bug_reading_a_retiring_worker_keeps_it_draining_and_is_logged(scaler, caplog):
    r, backend, spark, reports = scaler
    b = backend.add()
    await backend.decommission(b)
    spark.worker_error = KeyError("executors")
    await r.cycle()
    (w,) = r.last_snapshot.workers
    assert w.state is WorkerState.DRAINING and "bug reading worker w1: KeyError" in w.why
    assert b.handle in backend.workers and len(tracebacks(caplog)) == 1
    spark.worker_error = SparkError("worker at http://10.0.0.1:8081 answered HTTP 500")
    await r.cycle()
    assert r.last_snapshot.workers[0].state is WorkerState.DRAINING and len(tracebacks(caplog)) == 1


# -- actions -----------------------------------------------------------------------------


async def test_a_failed_start_is_logged_with_its_traceback_and_reported(scaler, caplog):
    r, backend, spark, reports = scaler
    backend.start_error = BackendError("created 0 of 1 worker pods: quota exceeded")
    await r.cycle()
    (error,) = reports[-1].errors
    assert error.action is Action.ERROR
    assert error.detail == "starting 1 workers failed: created 0 of 1 worker pods: quota exceeded"
    assert reports[-1].started == ()
    (logged,) = tracebacks(caplog)
    assert logged.exc_info[1] is backend.start_error and logged.getMessage() == "start 1 workers failed"


async def test_a_failed_retire_or_stop_is_logged_with_its_traceback_and_the_others_go_on(scaler, caplog):
    r, backend, spark, reports = scaler
    for _ in range(3):
        backend.add()  # w1, w2, w3 idle; one wanted: w1 and w2 retired, the longest idle first
    refused = OSError("SIGPWR: operation not permitted")
    decommission = backend.decommission

    async def decommission_but_w1(worker):
        if worker.handle == "w1":
            raise refused
        await decommission(worker)

    backend.decommission = decommission_but_w1
    await r.cycle()
    assert reports[-1].retired == ("w2",)
    (error,) = reports[-1].errors
    assert (error.detail, error.handles) == (f"retire w1 failed: {refused}", ("w1",))

    gone = RuntimeError("the process table is unreadable")

    async def stop_fails(worker):
        raise gone

    backend.decommission = decommission
    backend.stop = stop_fails
    await r.cycle()  # w2 is drained now (its own /json/ lists no executors): stopped, which fails
    assert "w2" in r.last_plan.stop and reports[-1].stopped == ()
    assert [(e.detail, e.handles) for e in reports[-1].errors] == [(f"stop w2 failed: {gone}", ("w2",))]
    logged = [(rec.getMessage(), rec.exc_info[1]) for rec in tracebacks(caplog)]
    assert logged == [("retire w1 failed", refused), ("stop w2 failed", gone)]
    assert set(backend.workers) == {"w1", "w2", "w3"}, "a failed stop leaves the worker for the next cycle"


async def test_decisions_and_the_report_carry_the_handles_and_each_handles_reason(scaler):
    r, backend, spark, reports = scaler
    await r.cycle()
    assert reports[-1].started == ("w1",)
    (start,) = r.decisions
    assert (start.action, start.detail, start.handles) == (Action.START, "started 1 (w1)", ("w1",))
    assert start.reasons == explain(r.last_plan)

    backend.add()  # w2: surplus, idle
    await r.cycle()
    report = reports[-1]
    assert report.retired == ("w1",) and report.started == report.stopped == () and not report.errors
    retire = r.decisions[-1]
    assert (retire.action, retire.detail, retire.handles) == (Action.RETIRE, "w1", ("w1",))
    assert retire.reasons == (f"retiring w1: surplus, idle {r.last_plan.why['w1'].idle_for:.0f} s",)

    await r.cycle()  # w1's own /json/ lists no executors: drained, stopped
    assert reports[-1].stopped == ("w1",)
    stop = r.decisions[-1]
    assert (stop.action, stop.handles, stop.reasons) == (Action.STOP, ("w1",), ("stopping w1: drained",))
    assert [str(a) for a in actions(r)] == ["start", "retire", "stop"]


# -- admin controls ----------------------------------------------------------------------


async def test_pause_and_resume_are_recorded_with_who_and_a_paused_scaler_acts_on_nothing(scaler):
    r, backend, spark, reports = scaler
    r.pause(by="alice")
    assert r.paused and r.paused_by == "alice"
    decided = await r.cycle()
    assert decided.start == 1 and not backend.workers, "planned, not carried out"
    r.resume(by="bob")
    assert not r.paused and r.paused_by is None
    await r.cycle()
    assert list(backend.workers) == ["w1"]
    pause, resume = list(r.decisions)[:2]
    assert (pause.action, pause.detail) == (
        Action.PAUSE, "by alice: observing and planning, starting and retiring nothing")
    assert (resume.action, resume.detail) == (Action.RESUME, "by bob")


async def test_the_idle_override_replaces_the_configured_value_until_cleared(scaler):
    r, backend, spark, reports = scaler
    configured = r.policy
    r.set_idle_override(3, by="alice")
    assert (r.idle_override, r.idle_override_by) == (3, "alice")
    assert r.policy == configured and r.effective_policy().idle_workers == 3
    decided = await r.cycle()
    assert decided.demand.idle_target == 3 and len(backend.workers) == 3
    r.set_idle_override(None, by="bob")
    assert (r.idle_override, r.idle_override_by) == (None, None) and r.effective_policy() == configured
    details = [d.detail for d in r.decisions if d.action is Action.IDLE_TARGET]
    assert details == ["idle_workers 3 (override; configured 1), by alice",
                       "idle_workers back to the configured 1, by bob"]


async def test_the_apps_metrics_count_what_the_reports_carry(scaler):
    r, backend, spark, reports = scaler
    app = SparkScalerApp(max_workers=4)
    app.metrics, app.pool_history = ScalerMetrics(), PoolHistory(interval=2.0)
    app.hub, app.reconciler = None, r
    r.on_cycle = app.observe_cycle
    await r.cycle()  # starts w1
    backend.add()
    await r.cycle()  # retires w1
    await r.cycle()  # stops w1
    backend.start_error = BackendError("quota exceeded")
    r.set_idle_override(2, by="alice")
    await r.cycle()  # a failed start
    body = app.metrics.render()[0].decode()
    for line in ("spark_scaler_workers_started_total 1.0", "spark_scaler_workers_retired_total 1.0",
                 "spark_scaler_workers_stopped_total 1.0", 'spark_scaler_errors_total{kind="action"} 1.0',
                 "spark_scaler_cycle_duration_seconds_count 4.0"):
        assert line in body.splitlines(), line


# -- saturation: more workers wanted than max_workers ----------------------------------------


def waiting_app(app_id: str, *, user: str, waited: float, now: float) -> MasterApp:
    return MasterApp(app_id, "job", 0, "WAITING", user, round((now - waited) * 1000))


async def test_a_saturation_is_recorded_and_logged_once_when_it_begins_and_once_when_it_ends(
        scaler, caplog, monkeypatch):
    r, backend, spark, reports = scaler
    t = [1000.0]
    monkeypatch.setattr(reconciler.clock, "now", lambda: t[0])
    caplog.set_level(logging.INFO, logger=LOG)
    for _ in range(4):  # max_workers 4, all busy
        backend.add(busy=True)
    spark.apps = (waiting_app("app-2", user="bob", waited=5, now=t[0]),
                  waiting_app("app-1", user="alice", waited=40, now=t[0]))
    await r.cycle()  # wanted 4 busy + 2 waiting + 1 idle = 7 > 4
    t[0] += 60
    await r.cycle()
    spark.error = SparkError("master down")  # blind: neither begins nor ends a saturation
    t[0] += 2
    await r.cycle()
    spark.error, spark.apps = None, ()
    t[0] += 2
    await r.cycle()  # 4 busy + 1 idle = 5 > 4: still saturated, no app waiting
    for w in list(backend.workers.values())[:2]:
        spark.entries[w.handle] = master_entry(w)  # two go idle: wanted 2 busy + 1 idle = 3
    t[0] += 10
    await r.cycle()
    await r.cycle()
    logged = [rec.getMessage() for rec in caplog.records if "saturated" in rec.getMessage()]
    assert logged == [
        "saturated: wanted 7 workers, max_workers 4: 2 apps waiting, the longest app-1 of alice for 40 s",
        "unsaturated: wanted 3 workers, max_workers 4, after 74 s saturated; "
        "the longest an app waited: 100 s",
    ]
    assert [d.action for d in r.decisions if "saturated" in d.action.value] == [
        Action.SATURATED, Action.UNSATURATED]
    assert [d.at for d in r.decisions if "saturated" in d.action.value] == [1000.0, 1074.0]


async def test_the_pool_line_names_the_wanted_size_only_past_max_workers(scaler, caplog, monkeypatch):
    r, backend, spark, reports = scaler
    monkeypatch.setattr(reconciler.clock, "now", lambda: 1000.0)
    app = SparkScalerApp(max_workers=4)
    app.reconciler, app.log = r, logging.getLogger(LOG)
    caplog.set_level(logging.INFO, logger=LOG)
    for _ in range(4):
        backend.add(busy=True)
    await r.cycle()  # 4 busy + 1 idle: wanted 5
    app.log_pool(r.last_snapshot)
    spark.apps = (waiting_app("app-1", user="alice", waited=3, now=1000.0),)
    await r.cycle()
    app.log_pool(r.last_snapshot)
    spark.entries = {h: master_entry(w) for h, w in backend.workers.items()}  # all idle: wanted 1 + 1
    await r.cycle()
    app.log_pool(r.last_snapshot)
    lines = [rec.getMessage() for rec in caplog.records if rec.getMessage().startswith("pool:")]
    assert lines[:2] == ["pool: 4 busy; target 4, wanted 5 > max_workers 4, no app waiting",
                         "pool: 4 busy; target 4, wanted 6 > max_workers 4, 1 app waiting"]
    assert lines[2].startswith("pool: ") and "wanted" not in lines[2], lines


# -- busy workers' own /json/: a few each cycle, for the page only ----------------------------


def shown(r: Reconciler) -> dict[str, tuple]:
    """handle -> (state, the apps read on it, when), of the last snapshot."""
    return {w.handle: (w.state, tuple(e.app_id for e in w.executors) if w.executors is not None else None,
                       w.executors_read_at) for w in r.last_snapshot.workers}


def set_cores(spark: FakeSpark, b: BackendWorker, cores_used: int) -> None:
    spark.entries[b.handle] = spark.entries[b.handle]._replace(cores_used=cores_used)


async def test_a_few_busy_workers_are_read_each_cycle_and_every_retiring_one_every_cycle(scaler, monkeypatch):
    r, backend, spark, reports = scaler
    monkeypatch.setattr(reconciler, "BUSY_READS_PER_CYCLE", 2)
    busy = [backend.add(busy=True) for _ in range(5)]
    retiring = backend.add()
    await backend.decommission(retiring)
    spark.executors[retiring.webui_url] = (Executor("app-held", 0, "held"),)  # it stays, held
    for i, b in enumerate(busy):
        spark.executors[b.webui_url] = (Executor(f"app-{i}", 0, "x"),)
    read_at = {}
    for cycle in range(3):
        spark.reads.clear()
        await r.cycle()
        now = r.last_snapshot.taken_at
        assert spark.reads.count(retiring.webui_url) == 1 and len(spark.reads) == 1 + 2
        assert shown(r)[retiring.handle] == (WorkerState.HELD, ("app-held",), now)
        read_at.update({b.handle: now for b in busy if b.webui_url in spark.reads})
    assert len(read_at) == 5, "every busy worker read within 3 cycles of 2 reads"
    assert {h: s for h, s in shown(r).items() if h != retiring.handle} == {
        b.handle: (WorkerState.BUSY, (f"app-{i}",), read_at[b.handle]) for i, b in enumerate(busy)}
    assert not r.last_plan.retire and not r.last_plan.stop

    # a worker whose cores change is read next: its old read is not shown meanwhile
    set_cores(spark, busy[3], 2)
    spark.executors[busy[3].webui_url] += (Executor("app-new", 1, "y"),)
    monkeypatch.setattr(reconciler, "BUSY_READS_PER_CYCLE", 0)
    await r.cycle()
    assert shown(r)[busy[3].handle] == (WorkerState.BUSY, None, None)
    monkeypatch.setattr(reconciler, "BUSY_READS_PER_CYCLE", 1)
    spark.reads.clear()
    await r.cycle()
    assert spark.reads == [retiring.webui_url, busy[3].webui_url]
    assert shown(r)[busy[3].handle] == (WorkerState.BUSY, ("app-3", "app-new"), r.last_snapshot.taken_at)


async def test_a_busy_worker_that_cannot_be_read_shows_unread_and_the_cycle_goes_on(
    scaler, caplog, monkeypatch
):
    r, backend, spark, reports = scaler
    r.pause(by="test")  # observe and plan only: the pool stays as set here
    b = backend.add(busy=True)
    spark.executors[b.webui_url] = (Executor("app-1", 0, "x"),)
    await r.cycle()
    first = r.last_snapshot.taken_at
    assert shown(r)[b.handle] == (WorkerState.BUSY, ("app-1",), first)

    # kept, not read again, while the worker stays busy with the same cores; also through blindness
    monkeypatch.setattr(reconciler, "BUSY_READS_PER_CYCLE", 0)
    backend.list_error = BackendError("the pod cache is not ready")
    await r.cycle()
    backend.list_error = None
    await r.cycle()
    assert shown(r)[b.handle] == (WorkerState.BUSY, ("app-1",), first)

    monkeypatch.setattr(reconciler, "BUSY_READS_PER_CYCLE", 8)
    spark.worker_errors[b.webui_url] = SparkError(f"cannot reach Spark worker at {b.webui_url}: refused")
    await r.cycle()
    assert shown(r)[b.handle] == (WorkerState.BUSY, None, None), "no older read is kept"
    spark.worker_errors[b.webui_url] = KeyError("executors")  # a bug: loud, and nothing else changes
    await r.cycle()
    assert shown(r)[b.handle] == (WorkerState.BUSY, None, None) and not r.last_snapshot.blind
    (logged,) = tracebacks(caplog)
    assert logged.getMessage() == "bug reading worker w1: KeyError: 'executors'"
    assert actions(r) == [Action.PAUSE, Action.BLIND, Action.SEEING], "only the backend's blindness"

    set_cores(spark, b, 0)  # idle: its read is dropped for good
    await r.cycle()
    set_cores(spark, b, 1)
    monkeypatch.setattr(reconciler, "BUSY_READS_PER_CYCLE", 0)
    await r.cycle()
    assert shown(r)[b.handle] == (WorkerState.BUSY, None, None)


async def test_a_busy_worker_that_does_not_answer_delays_a_cycle_by_at_most_the_busy_read_timeout(
    scaler, monkeypatch
):
    r, backend, spark, reports = scaler
    monkeypatch.setattr(reconciler, "BUSY_READ_TIMEOUT", 0.2)
    r.pause(by="test")
    silent, retiring = backend.add(busy=True), backend.add()
    await backend.decommission(retiring)
    spark.delays[silent.webui_url] = 5.0  # what a cycle would wait without the busy read timeout
    spark.delays[retiring.webui_url] = 0.5  # slower than a busy read may be: still waited for
    spark.executors[retiring.webui_url] = (Executor("app-1", 0, "x"),)
    await r.cycle()
    assert 0.5 <= reports[-1].duration < 1.5
    assert shown(r) == {silent.handle: (WorkerState.BUSY, None, None),
                        retiring.handle: (WorkerState.HELD, ("app-1",), r.last_snapshot.taken_at)}
    assert not r.last_snapshot.blind and not reports[-1].errors


# -- drain_timeout: a draining or held worker stopped anyway ----------------------------------


def retiring_since(backend: FakeBackend, spark: FakeSpark, *, seconds_ago: float,
                   apps: tuple[str, ...]) -> BackendWorker:
    """A worker decommissioned `seconds_ago`, with one executor of each of `apps` on it."""
    b = backend.add()._replace(retiring_since=clock.now() - seconds_ago)
    backend.workers[b.handle] = b
    spark.entries[b.handle] = master_entry(b, state="DECOMMISSIONED")
    spark.executors[b.webui_url] = tuple(Executor(a, i, f"name-{a}") for i, a in enumerate(apps))
    return b


async def test_drain_timeout_stops_a_held_worker_records_the_apps_warns_and_counts(scaler, caplog):
    r, backend, spark, reports = scaler
    app = SparkScalerApp(max_workers=4)
    app.metrics, app.pool_history = ScalerMetrics(), PoolHistory(interval=2.0)
    app.hub, app.reconciler = None, r
    r.on_cycle = lambda report: (reports.append(report), app.observe_cycle(report))
    backend.add()  # the idle worker wanted: nothing else to do
    held = retiring_since(backend, spark, seconds_ago=300.0, apps=("app-2", "app-1"))
    young = retiring_since(backend, spark, seconds_ago=5.0, apps=("app-1",))
    await r.cycle()  # off by default: waited on
    states = {w.handle: w.state for w in r.last_snapshot.workers}
    assert (states[held.handle], states[young.handle]) == (WorkerState.HELD, WorkerState.DRAINING)
    assert not r.decisions and set(backend.workers) == {"w1", held.handle, young.handle}

    r.policy = replace(r.policy, drain_timeout=120.0)
    with caplog.at_level(logging.WARNING, logger=LOG):
        await r.cycle()
    (decision,) = r.decisions
    assert (decision.action, decision.detail, decision.handles) == (Action.DRAIN_TIMEOUT, "w2", ("w2",))
    (reason,) = decision.reasons
    assert reason.startswith("stopping w2: held 30") and reason.endswith(
        " s, over drain_timeout 120 s; app-1, app-2 lose executors")
    assert reason in [rec.getMessage() for rec in caplog.records if rec.levelno == logging.WARNING]
    assert reports[-1].stopped == ("w2",) and set(backend.workers) == {"w1", young.handle}
    body = app.metrics.render()[0].decode().splitlines()
    for line in ("spark_scaler_workers_stopped_by_drain_timeout_total 1.0",
                 "spark_scaler_workers_stopped_total 1.0",
                 "spark_scaler_decommission_to_stop_seconds_count 1.0"):
        assert line in body, line

    page = pool_view(snapshot=r.last_snapshot, plan=r.last_plan, decisions=r.decisions, servers=(),
                     hub_healthy=True, hub_error="", paused=False, idle_override=None, now=clock.now(),
                     settings={"max_workers": 4, "min_workers": 0, "idle_workers": 1, "prewarm_window": 600,
                               "prewarm_per_server": 1})
    # the last snapshot was taken before the stop: w2 held in it
    assert [p["kind"] for p in page["problems"]] == ["held", "drain-timeout"]
    found = page["problems"][1]
    assert (found["kind"], found["count"]) == ("drain-timeout", 1) and "drain-timeout" in STATE_BADGES
    assert found["text"].startswith("1 worker stopped by drain_timeout in the last hour (w2): ")
    later = clock.now() + problems.DRAIN_TIMEOUT_SHOWN_FOR + 1
    assert problems.drain_timeouts(r.decisions, later) is None


async def test_a_failed_stop_by_drain_timeout_is_an_error_and_counts_nothing(scaler, caplog):
    r, backend, spark, reports = scaler
    r.policy = replace(r.policy, drain_timeout=60.0)
    backend.add()
    retiring_since(backend, spark, seconds_ago=300.0, apps=("app-1",))
    refused = BackendError("pods is forbidden")

    async def stop_fails(worker):
        raise refused

    backend.stop = stop_fails
    await r.cycle()
    assert r.last_plan.timed_out == ("w2",) and reports[-1].stopped == ()
    assert [(e.detail, e.handles) for e in reports[-1].errors] == [(f"drain-timeout w2 failed: {refused}",
                                                                    ("w2",))]
    metrics = ScalerMetrics()
    metrics.observe_cycle(snapshot=reports[-1].snapshot, plan=reports[-1].plan, duration=0.0,
                          stopped=reports[-1].stopped)
    assert "spark_scaler_workers_stopped_by_drain_timeout_total 0.0" in metrics.render()[0].decode()
