"""The reconciler's error policy, decisions and admin controls, on small in-memory fakes.

The Spark master and the backend are fakes that answer (or raise) what a test sets, so
each path of the error policy in `reconciler.py`'s docstring runs in milliseconds. The
same paths on real Spark are in test_scaling.py and test_bad_input.py.
"""

from __future__ import annotations

import asyncio
import logging

import pytest

from jhub_spark_scaler.app import SparkScalerApp
from jhub_spark_scaler.backends import Backend, BackendError
from jhub_spark_scaler.metrics import ScalerMetrics
from jhub_spark_scaler.model import BackendWorker, MasterStatus, MasterWorker, WorkerState, WorkerStatus
from jhub_spark_scaler.policy import explain
from jhub_spark_scaler.reconciler import Action, CycleReport, Reconciler
from jhub_spark_scaler.spark import SparkError
from jhub_spark_scaler.web.history import PoolHistory

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

    async def master(self) -> MasterStatus:
        if self.error is not None:
            raise self.error
        return MasterStatus("spark://master.invalid:7077", "ALIVE", tuple(self.entries.values()), ())

    async def worker(self, webui_url: str) -> WorkerStatus:
        if self.worker_error is not None:
            raise self.worker_error
        return WorkerStatus("w", ())

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
        del self.spark.entries[worker.handle]


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
