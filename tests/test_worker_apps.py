"""Which apps run on a busy worker, read from the worker's own /json/ on a real Spark cluster.

The master's /json/ does not say which app runs where, so the reconciler reads a few busy
workers' own /json/ each cycle (for the page only). Two real drivers, one executor each,
on workers started by the local backend: each busy worker names the app it runs.
"""

from __future__ import annotations

import logging

import pytest

from jhub_spark_scaler.backends.local import LocalBackend
from jhub_spark_scaler.model import Snapshot, WorkerState
from jhub_spark_scaler.reconciler import Reconciler
from jhub_spark_scaler.spark import SparkClient

from .conftest import lost_executors
from .settings import AS_ROOT, DECISION_LOG_SIZE, HTTP_TIMEOUT, make_observe, make_policy
from .waiting import until

pytestmark = pytest.mark.spark


@pytest.fixture
async def reconciler(spark_master, tmp_path):
    """A Reconciler with a local backend of its own: no idle workers, at most two."""
    backend = LocalBackend(
        **AS_ROOT, start_master=False, master_url=spark_master.master_url,
        master_ui_url=spark_master.master_ui_url, state_dir=str(tmp_path / "scaler"),
        stop_timeout=5, stop_on_exit=True,
    )
    await backend.setup()
    try:
        yield Reconciler(
            backend=backend, spark=SparkClient(spark_master.master_ui_url, timeout=HTTP_TIMEOUT),
            policy=make_policy(max_workers=2, idle_workers=0, scale_down_delay=0),
            observe=make_observe(), log=logging.getLogger("test.worker_apps"),
            decision_log_size=DECISION_LOG_SIZE,
        )
    finally:
        await backend.shutdown()


def apps_read(snapshot: Snapshot) -> dict[str, set[str]]:
    """Our busy workers -> the app ids read on them (workers not read yet are left out)."""
    return {w.handle: {e.app_id for e in w.executors} for w in snapshot.workers
            if w.ours and w.state is WorkerState.BUSY and w.executors}


async def test_each_busy_worker_names_the_app_it_runs_within_a_few_cycles(reconciler, drivers):
    r = reconciler
    first, second = (drivers(name, "--cores-max", "1", "--task-seconds", "1") for name in ("first", "second"))
    ids = {(await d.started())["app_id"] for d in (first, second)}
    cycles: list[Snapshot] = []

    async def both_named():
        await r.cycle()
        cycles.append(r.last_snapshot)
        return sorted(map(sorted, apps_read(r.last_snapshot).values())) == sorted([i] for i in ids)

    await until(both_named, timeout=180, what=f"two busy workers naming {sorted(ids)}", interval=0.3)
    snapshot = r.last_snapshot
    busy = [w for w in snapshot.workers if w.ours and w.state is WorkerState.BUSY]
    assert len(busy) == 2 and all(snapshot.taken_at - 30 <= w.executors_read_at <= snapshot.taken_at
                                  for w in busy)
    assert {e.app_name for w in busy for e in w.executors} == {"first", "second"}
    # read within a few cycles of the master calling both busy (one cycle but for the race
    # between the master granting the cores and the worker launching the executor)
    both_busy = next(i for i, s in enumerate(cycles) if s.count(WorkerState.BUSY) == 2)
    assert len(cycles) - 1 - both_busy <= 3, [apps_read(s) for s in cycles[both_busy:]]
    for d in (first, second):
        assert not lost_executors(await d.result())
