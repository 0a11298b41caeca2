"""The scaler on a real Spark cluster: a real master (one per session), workers
started by the code under test, and real pyspark drivers reporting what they saw.

Each test drives the Reconciler in-process, so it can change the policy between
cycles and, for the race tests, put a driver's demand between a plan and its
execution: the exact window in which a naive autoscaler kills a busy worker.
"""

from __future__ import annotations

import dataclasses
import logging

import pytest
from tornado.httpclient import AsyncHTTPClient, HTTPRequest

from jhub_spark_scaler.backends.local import LocalBackend
from jhub_spark_scaler.httpjson import fetch_json
from jhub_spark_scaler.model import WorkerState
from jhub_spark_scaler.policy import explain, plan
from jhub_spark_scaler.metrics import ScalerMetrics
from jhub_spark_scaler.reconciler import Action, Reconciler
from jhub_spark_scaler.spark import SparkClient

from .conftest import lost_executors
from .settings import AS_ROOT, DECISION_LOG_SIZE, HTTP_TIMEOUT, make_observe, make_policy
from .waiting import until

pytestmark = pytest.mark.spark


def make_reconciler(backend, spark_master, *, start_timeout: float = 120, held_after: float = 60,
                    **policy) -> Reconciler:
    """A Reconciler for tests: at most 6 workers, no scale-down delay unless given."""
    policy.setdefault("max_workers", 6)
    policy.setdefault("scale_down_delay", 0)
    return Reconciler(
        backend=backend,
        spark=SparkClient(spark_master.master_ui_url, timeout=HTTP_TIMEOUT),
        policy=make_policy(**policy),
        observe=make_observe(start_timeout=start_timeout, held_after=held_after),
        log=logging.getLogger("test.scaler"),
        decision_log_size=DECISION_LOG_SIZE,
    )


@pytest.fixture
async def make_scaler(spark_master, tmp_path):
    """`await make_scaler(idle_workers=2, ...)`: a Reconciler with its own local backend."""
    backends = []

    async def make(*, held_after: float = 60.0, decommission_method="signal", **policy) -> Reconciler:
        backend = LocalBackend(
            **AS_ROOT,
            decommission_method=decommission_method,
            start_master=False,
            master_url=spark_master.master_url,
            master_ui_url=spark_master.master_ui_url,
            state_dir=str(tmp_path / f"scaler-{len(backends)}"),
            stop_timeout=5,
            stop_on_exit=True,
        )
        backends.append(backend)
        await backend.setup()
        return make_reconciler(backend, spark_master, held_after=held_after, **policy)

    yield make
    for backend in backends:
        await backend.shutdown()


def counts(r: Reconciler) -> dict[WorkerState, int]:
    snapshot = r.last_snapshot
    return {s: snapshot.count(s) for s in WorkerState} if snapshot else {}


async def cycles_until(r: Reconciler, predicate, *, timeout: float, what: str):
    async def cycle():
        await r.cycle()
        return predicate(r.last_snapshot)

    try:
        return await until(cycle, timeout=timeout, what=what, interval=0.3)
    except AssertionError as e:
        pool = [(w.handle, w.state.value, w.why) for w in r.last_snapshot.workers]
        raise AssertionError(f"{e}; pool: {pool}") from None


def idle_and_busy(idle: int, busy: int):
    return lambda s: s.count(WorkerState.IDLE) == idle and s.count(WorkerState.BUSY) == busy \
        and s.count(WorkerState.STARTING) == 0


def with_policy(r: Reconciler, **changes) -> None:
    r.policy = dataclasses.replace(r.policy, **changes)


async def test_pool_reaches_idle_target_then_a_plus_i(make_scaler, drivers):
    r = await make_scaler(idle_workers=2)
    await cycles_until(r, idle_and_busy(2, 0), timeout=90, what="2 idle workers")
    master = await r.spark.master()
    ours = {w.host for w in r.last_snapshot.workers}
    live = [m.state for m in master.workers if m.host in ours and m.state != "DEAD"]
    assert live == ["ALIVE", "ALIVE"]
    assert len(ours) == 2, "each worker has a loopback address of its own"

    app = drivers("a-plus-i", "--cores-max", "1", "--task-seconds", "1")
    await app.started()
    await cycles_until(r, idle_and_busy(2, 1), timeout=120, what="A + I = 1 busy + 2 idle")
    assert [d.action for d in r.decisions].count("start") >= 2
    assert not lost_executors(await app.result())


#: A driver that keeps one executor and, on each burst, takes every free worker
#: (two) for a job of 3-second tasks. With a steady one-executor driver beside it,
#: the pool at rest is 2 busy + 2 idle.
BURSTY = ("--bursts", "--dynamic", "--min-executors", "1", "--cores-max", "3", "--tasks", "3",
          "--task-seconds", "3")


async def race_rounds(r: Reconciler, burst_driver, rounds: int, kill) -> list[str]:
    """Grow the pool to 2 idle workers, plan their retirement, let a driver's burst
    take them, then carry the plan out with `kill(reconciler, plan, snapshot)`.
    Returns the handles retired."""
    retired = []
    for n in range(1, rounds + 1):
        with_policy(r, idle_workers=2)
        await cycles_until(r, idle_and_busy(2, 2), timeout=120, what=f"round {n}: 2 idle workers")
        snapshot = await r.observe()
        decided = plan(snapshot, dataclasses.replace(r.policy, idle_workers=0), r.history)
        assert len(decided.retire) == 2, explain(decided)
        chosen = {w.handle: w.backend.host for w in snapshot.workers if w.handle in decided.retire}

        burst_driver.burst(n)

        async def taken():
            busy = {m.host for m in (await r.spark.master()).workers if m.cores_used and m.state == "ALIVE"}
            return set(chosen.values()) <= busy

        await until(taken, timeout=90, what=f"round {n}: the burst to take the chosen workers")
        with_policy(r, idle_workers=0)
        await kill(r, decided, snapshot)
        await cycles_until(
            r, lambda s: not set(chosen) & {w.handle for w in s.workers},
            timeout=120, what=f"round {n}: the chosen workers to be gone",
        )
        await burst_driver.jobs_done(n)
        retired += list(chosen)
    return retired


async def never_loses_an_executor(r: Reconciler, drivers, name: str) -> None:
    """The guarantee scenario, on any backend: 10 retirements of workers that a driver
    took after the plan was made, while another driver runs jobs throughout; no
    executor lost, no task failed."""
    steady = drivers(f"{name}-steady", "--cores-max", "1", "--task-seconds", "1")
    bursty = drivers(f"{name}-bursty", *BURSTY)
    await steady.started()
    await bursty.started()

    async def carry_out(r, decided, snapshot):
        await r.act(decided, snapshot)

    retired = await race_rounds(r, bursty, rounds=5, kill=carry_out)
    assert len(retired) == 10
    assert [d.action for d in r.decisions].count("retire") >= 10
    steady_result, bursty_result = await steady.result(), await bursty.result()
    drained = [e for e in bursty_result["executors"] if "decommission" in e["reason"].lower()]
    assert len(drained) >= 10, "every retired worker was running the burst's executor"
    for result in (steady_result, bursty_result):
        assert result["jobs"] > 0
        assert lost_executors(result) == []
        assert result["tasks_failed"] == 0 and result["jobs_failed"] == 0


async def test_scale_in_never_loses_an_executor(make_scaler, drivers):
    await never_loses_an_executor(await make_scaler(idle_workers=1), drivers, "local")


async def test_naive_scale_in_loses_executors(make_scaler, drivers):
    """Same scenario, but the plan is carried out the way the original autoscaler
    did: kill workers that had coresused == 0. The test above would see this."""
    r = await make_scaler(idle_workers=1)
    steady = drivers("steady-naive", "--cores-max", "1", "--task-seconds", "1")
    # tasks of 10 s: the burst's new executors get some even on a slow day
    bursty = drivers("bursty-naive", *BURSTY[:-1], "10")
    await steady.started()
    app = await bursty.started()

    async def naive_kill(r, decided, snapshot):
        stale_idle = [w for w in snapshot.workers
                      if w.master is not None and w.master.cores_used == 0 and w.ours]
        hosts = {w.backend.host for w in stale_idle}

        # the master counts an executor's cores from its launch; killed before it registers
        # with its driver, it dies unseen (CI, 2026-11-27): wait until one runs a task
        async def running_there():
            url = f"{app['ui']}/api/v1/applications/{app['app_id']}/executors"
            try:  # a busy driver's UI can be slow to answer: ask again
                executors = await fetch_json(AsyncHTTPClient(), HTTPRequest(url, request_timeout=10),
                                             what="the burst's driver", error=OSError)
            except OSError:
                return False
            return any(e["activeTasks"] and e["hostPort"].rpartition(":")[0] in hosts for e in executors)

        await until(running_there, timeout=90, what="a burst task on a worker the stale view had idle")
        for w in stale_idle:
            await r.backend.stop(w.backend)

    await race_rounds(r, bursty, rounds=1, kill=naive_kill)
    result = await bursty.result()
    assert lost_executors(result), result
    assert result["tasks_failed"] > 0
    assert lost_executors(await steady.result()) == [], "the naive kill spared the busy worker"


def held(handle: str):
    return lambda s: any(w.handle == handle and w.state is WorkerState.HELD for w in s.workers)


async def hold_a_worker(r: Reconciler, drivers, name: str):
    """A driver without decommission takes the idle worker just chosen for retirement, which is
    then decommissioned and held. Returns its handle and the driver."""
    await cycles_until(r, idle_and_busy(1, 0), timeout=90, what="1 idle worker")
    snapshot = await r.observe()
    decided = plan(snapshot, dataclasses.replace(r.policy, idle_workers=0), r.history)
    (handle,) = decided.retire
    host = next(w.host for w in snapshot.workers if w.handle == handle)

    app = drivers(name, "--no-decommission", "--cores-max", "1", "--task-seconds", "1")
    await app.started()

    async def taken():
        return any(m.host == host and m.cores_used for m in (await r.spark.master()).workers)

    await until(taken, timeout=90, what="the app to take the chosen worker")
    with_policy(r, idle_workers=0)
    await r.act(decided, snapshot)
    await cycles_until(r, held(handle), timeout=60, what="the worker to be held")
    return handle, app


async def test_worker_of_app_without_decommission_is_held(make_scaler, drivers):
    r = await make_scaler(idle_workers=1, held_after=2.0)
    handle, app = await hold_a_worker(r, drivers, "no-decommission")
    held_worker = next(w for w in r.last_snapshot.workers if w.handle == handle)
    app_id = (await app.started())["app_id"]
    assert app_id in held_worker.why
    for _ in range(5):  # it stays held, never stopped, while the app runs
        await r.cycle()
        assert held(handle)(r.last_snapshot)
        assert any(b.handle == handle and b.running for b in await r.backend.list())

    result = await app.result()
    assert lost_executors(result) == [] and result["tasks_failed"] == 0
    await cycles_until(r, lambda s: handle not in {w.handle for w in s.workers},
                       timeout=90, what="the held worker to be stopped once its app ended")


async def test_drain_timeout_stops_a_held_worker_naming_the_app_that_loses_executors(make_scaler, drivers):
    """The admin's exception, on real Spark: with drain_timeout set, the held worker is stopped
    while its app runs, the decision names the app, the counter counts 1, the app loses the
    executor on it and gets a new one on a new worker."""
    r = await make_scaler(idle_workers=1, held_after=2.0)
    assert r.policy.drain_timeout == 0, "off by default"
    metrics = ScalerMetrics()
    r.on_cycle = lambda report: metrics.observe_cycle(snapshot=report.snapshot, plan=report.plan,
                                                      duration=report.duration, stopped=report.stopped)
    handle, app = await hold_a_worker(r, drivers, "drain-timeout")
    app_id = (await app.started())["app_id"]
    host = next(w.host for w in r.last_snapshot.workers if w.handle == handle)
    with_policy(r, drain_timeout=5.0)
    await cycles_until(r, lambda s: handle not in {w.handle for w in s.workers},
                       timeout=60, what="the held worker to be stopped by drain_timeout")
    (decision,) = [d for d in r.decisions if d.action is Action.DRAIN_TIMEOUT]
    assert decision.handles == (handle,)
    (reason,) = decision.reasons
    assert reason.startswith(f"stopping {handle}: held ")
    assert reason.endswith(f" s, over drain_timeout 5 s; {app_id} lose executors")
    body = metrics.render()[0].decode().splitlines()
    assert "spark_scaler_workers_stopped_by_drain_timeout_total 1.0" in body

    await cycles_until(r, lambda s: s.count(WorkerState.BUSY) == 1, timeout=90,
                       what="a new worker for the app")
    await app.jobs_done(app.jobs() + 1)
    result = await app.result()
    # The price, as the decision said: the executor on the stopped worker is gone while the app
    # ran. Spark records it as "Executor decommission: worker decommissioned" (the master had
    # marked the worker decommissioned), so lost_executors() cannot tell it from a drain.
    gone = [e for e in result["executors"] if e["host"].rpartition(":")[0] == host]
    assert gone and not any(e["active"] for e in gone), result
    assert any(e["active"] for e in result["executors"] if e not in gone), result
    assert result["jobs_failed"] == 0


async def test_master_unreachable_retires_nothing(make_scaler):
    r = await make_scaler(idle_workers=2)
    await cycles_until(r, idle_and_busy(2, 0), timeout=90, what="2 idle workers")
    with_policy(r, idle_workers=0)
    real_url = r.spark.master_ui_url
    r.spark.master_ui_url = "http://127.0.0.1:9"  # discard port: nothing listens
    for _ in range(3):
        decided = await r.cycle()
        assert not decided.acts and r.last_snapshot.blind
    assert "blind" in [d.action for d in r.decisions]
    assert sum(b.running for b in await r.backend.list()) == 2

    r.spark.master_ui_url = real_url
    await cycles_until(r, lambda s: not s.workers, timeout=60, what="scale-in after the master returns")
    assert "seeing" in [d.action for d in r.decisions]
    assert [d.action for d in r.decisions].count("retire") == 2


async def test_decommission_through_the_master(make_scaler):
    r = await make_scaler(idle_workers=2, decommission_method="master")
    await cycles_until(r, idle_and_busy(2, 0), timeout=90, what="2 idle workers")
    hosts = {w.host for w in r.last_snapshot.workers}
    with_policy(r, idle_workers=0)
    await r.cycle()
    assert len(r.last_plan.retire) == 2

    async def decommissioned():
        states = [m.state for m in (await r.spark.master()).workers if m.host in hosts]
        return "DECOMMISSIONED" in states or "DEAD" in states

    await until(decommissioned, timeout=30, what="the master to decommission the workers")
    await cycles_until(r, lambda s: not s.workers, timeout=60, what="the drained workers to be stopped")
