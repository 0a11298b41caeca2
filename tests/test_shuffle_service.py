"""Retirement with an external shuffle service, on real parts: a real master, workers the
local backend starts, Spark's own external shuffle service, the real reconciler cycling in
the background, and a real dynamic-allocation driver (tests/drivers/shuffle_driver.py).

The scenario: the driver's first job writes shuffle files on worker W through its one
executor, which dynamic allocation then removes: W is idle at the master. A second idle
worker X is started later (an idle override of 1, then back), so W is the longest idle and
the one a plain scale-down retires. The driver's second job reads W's shuffle files.

The local backend's workers share one machine, where Spark's shuffle service binds its port
on every address: the test runs one for the machine, as an admin would
(sbin/start-shuffle-service.sh), and each executor registers its files with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from jhub_spark_scaler.backends.local import FAST_JVM_OPTIONS, LocalBackend
from jhub_spark_scaler.backends.processes import free_port
from jhub_spark_scaler.model import WorkerState
from jhub_spark_scaler.reconciler import Action, CycleReport, Reconciler
from jhub_spark_scaler.spark import SparkClient
from jhub_spark_scaler.web.view import pool_view

from .settings import AS_ROOT, DECISION_LOG_SIZE, HTTP_TIMEOUT, make_observe, make_policy
from .waiting import until

pytestmark = pytest.mark.spark

DRIVER = Path(__file__).resolve().parent / "drivers" / "shuffle_driver.py"
SCALE_DOWN_DELAY = 2.0


@pytest.fixture
async def shuffle_service(spark_master, tmp_path):
    """Spark's external shuffle service (org.apache.spark.deploy.ExternalShuffleService) for
    this machine, on a free port; ended by its pid at teardown."""
    port = free_port("127.0.0.1")
    jars = os.path.join(spark_master.spark_home, "jars", "*")
    log = open(tmp_path / "shuffle-service.log", "w")
    process = subprocess.Popen(
        [spark_master.java, *FAST_JVM_OPTIONS, "-Xmx256m", "-cp", jars,
         f"-Dspark.shuffle.service.port={port}",
         "-Dspark.shuffle.service.db.enabled=false", "org.apache.spark.deploy.ExternalShuffleService"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def listening():
        assert process.poll() is None, (tmp_path / "shuffle-service.log").read_text()[-2000:]
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.2", port), timeout=1):
            return True  # any loopback address: the service binds its port on every address

    try:
        await until(listening, timeout=120, what="the external shuffle service to listen")
        yield port
    finally:
        if process.poll() is None:
            os.killpg(process.pid, 9)
            process.wait()
        log.close()


class Scaler:
    """The real reconciler with its own local backend, cycling every 0.3 s in the background;
    each cycle's report is kept with the time it ended."""

    def __init__(self, backend: LocalBackend, spark_master):
        self.reports: list[tuple[float, CycleReport]] = []
        self.r = Reconciler(
            backend=backend, spark=SparkClient(spark_master.master_ui_url, timeout=HTTP_TIMEOUT),
            policy=make_policy(max_workers=2, min_workers=0, idle_workers=0,
                               scale_down_delay=SCALE_DOWN_DELAY),
            observe=make_observe(start_timeout=120, held_after=60), log=logging.getLogger("test.scaler"),
            decision_log_size=DECISION_LOG_SIZE, on_cycle=lambda rep: self.reports.append((time.time(), rep)))
        self.task = asyncio.create_task(self._run())

    async def _run(self):
        while True:
            try:
                await self.r.cycle()
            except Exception:
                logging.getLogger("test.scaler").exception("cycle failed")
            await asyncio.sleep(0.3)

    def worker(self, host: str):
        snapshot = self.r.last_snapshot
        return next((w for w in snapshot.workers if w.host == host), None) if snapshot else None

    def retired(self, handle: str) -> float | None:
        """When `handle` was decommissioned (None: not yet)."""
        return next((at for at, rep in self.reports if handle in rep.retired), None)


@pytest.fixture
async def scaler(spark_master, tmp_path):
    started = []

    async def start(*, external_shuffle_service: bool) -> Scaler:
        backend = LocalBackend(**AS_ROOT, start_master=False, master_url=spark_master.master_url,
                               master_ui_url=spark_master.master_ui_url, state_dir=str(tmp_path / "scaler"),
                               stop_timeout=5, stop_on_exit=True,
                               external_shuffle_service=external_shuffle_service)
        await backend.setup()
        started.append(Scaler(backend, spark_master))
        return started[-1]

    yield start
    for s in started:
        s.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await s.task
        await s.r.backend.shutdown()


@pytest.fixture
def shuffle_driver(spark_master, shuffle_service, tmp_path):
    control = tmp_path / "driver"
    control.mkdir()
    log = open(control / "driver.log", "w")
    process = subprocess.Popen(
        [sys.executable, str(DRIVER), "--master", spark_master.master_url, "--control", str(control),
         "--shuffle-port", str(shuffle_service)],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def read(name: str):
        path = control / name
        if process.poll() is not None and not path.exists():
            raise AssertionError(f"driver exited: {(control / 'driver.log').read_text()[-3000:]}")
        return json.loads(path.read_text()) if path.exists() else None

    yield process, control, read
    if process.poll() is None:
        os.killpg(process.pid, 9)
        process.wait()
    log.close()


async def _idle_and_alone(s: Scaler, read) -> tuple[dict, str]:
    """Run the first job, wait for W idle, then start X and make it surplus: return the first
    job's report and W's handle."""
    first = await until(lambda: read("first.json"), timeout=300, what="the driver's first job")
    (host,) = first["hosts"]
    await until(lambda: (w := s.worker(host)) is not None and w.state is WorkerState.IDLE, timeout=60,
                what="W idle at the master: its executor removed by dynamic allocation")
    w_handle = s.worker(host).handle
    s.r.set_idle_override(1, by="test")
    await until(lambda: s.r.last_snapshot.count(WorkerState.IDLE) == 2, timeout=120, what="X started, idle")
    s.r.set_idle_override(None, by="test")
    return first, w_handle


async def test_a_worker_serving_a_running_apps_shuffle_files_is_kept_until_the_app_ends(
        scaler, shuffle_driver):
    s = await scaler(external_shuffle_service=True)
    process, control, read = shuffle_driver
    first, w = await _idle_and_alone(s, read)
    x = await until(lambda: next((h for at, rep in s.reports for h in rep.retired), None), timeout=60,
                    what="the surplus worker retired")
    assert x != w, f"{w} serves the running app's shuffle files but was retired"
    keep = next(d for d in s.r.decisions if d.action is Action.KEEP)
    words = f"keeps shuffle files of {first['app_id']} (running)"
    assert keep.handles == (w,) and keep.detail == f"{w}, {words}", keep
    row = next(r for r in pool_view(
        snapshot=s.r.last_snapshot, plan=s.r.last_plan, decisions=s.r.decisions, servers=(), hub_healthy=True,
        hub_error="", paused=False, idle_override=None, now=time.time(),
        settings={"max_workers": 2, "min_workers": 0, "idle_workers": 0, "prewarm_window": 600,
                  "prewarm_per_server": 1})["workers"] if r["handle"] == w)
    assert row["state"] == "idle" and row["why"] == words and row["keeps_shuffle_of"] == [first["app_id"]]

    (control / "go").touch()
    result = await until(lambda: read("result.json"), timeout=300, what="the driver's second job")
    print("with the setting, the driver saw:", json.dumps(result))
    assert result["tasks_failed"] == 0 and result["fetch_failures"] == 0, result
    assert result["stage_attempts_retried"] == 0, result
    # the map stage was skipped: its shuffle files on W were read, not recomputed
    assert result["second_job"]["numSkippedStages"] == 1 and result["second_job"]["status"] == "SUCCEEDED"
    ended = time.time()
    assert s.retired(w) is None, "W retired while the app ran"
    await until(lambda: s.retired(w) is not None, timeout=120, what="W retired once the app ended")
    assert s.retired(w) >= ended


async def test_without_the_setting_the_same_pool_retires_the_worker_serving_shuffle_files(
        scaler, shuffle_driver):
    """The same scenario with external_shuffle_service off (today's behaviour): W is retired
    and stopped while the app runs, and its next job loses W's map outputs."""
    s = await scaler(external_shuffle_service=False)
    process, control, read = shuffle_driver
    first, w = await _idle_and_alone(s, read)
    await until(lambda: s.retired(w) is not None, timeout=60, what="W retired while the app runs")
    await until(lambda: any(w in rep.stopped for _, rep in s.reports), timeout=120,
                what="W drained and stopped")
    assert process.poll() is None, "the app ended before W was retired"
    (control / "go").touch()
    result = await until(lambda: read("result.json"), timeout=300, what="the driver's second job")
    print("without the setting, the driver saw:", json.dumps(result))
    lost = result["second_job"]["numSkippedStages"] == 0 or result["fetch_failures"] > 0
    assert lost, f"the second job read W's shuffle files after all: {result}"
