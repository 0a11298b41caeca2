"""A restart is not a shutdown: on real Spark processes (and a real hub).

- a worker stopped by a cycle while the scaler shuts down is stopped once, and the class
  data archive its stop writes is kept, not marked failed;
- a hub restarted while a driver runs jobs: the hub SIGINTs its managed service, which
  leaves the master and workers running (stop_on_exit is False by default); the next
  scaler adopts the same processes, and the driver loses no executor and no task.
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from jupyterhub.utils import random_port
from traitlets.config import Config

from jhub_spark_scaler.backends import state_files
from jhub_spark_scaler.backends.local import MASTER_CLASS, WORKER_CLASS, LocalBackend
from jhub_spark_scaler.backends.processes import Daemon, is_ours
from jhub_spark_scaler.backends.state_files import worker_records
from jhub_spark_scaler.constants import SERVICE_NAME
from jhub_spark_scaler.spark import SparkClient

from .conftest import Driver, lost_executors
from .real_hub import configure_scaler, hub_config
from .settings import AS_ROOT, AS_ROOT_FLAG, HTTP_TIMEOUT
from .waiting import always, until

pytestmark = pytest.mark.spark


def read_json(path: str) -> dict | None:
    """A state file as the scaler reads it (never through a symlink)."""
    return state_files.read_json(path, root=os.path.dirname(path), log=logging.getLogger("test"))


async def _alive_at(master_ui_url: str, host: str) -> bool:
    master = await SparkClient(master_ui_url, timeout=HTTP_TIMEOUT).master()
    return any(m.host == host and m.state == "ALIVE" for m in master.workers)


def kill_pool(state_dir: str) -> None:
    """SIGKILL what a state dir's records name, by pid and start time: the last resort of a teardown."""
    master = read_json(f"{state_dir}/master.json")
    for rec in [*worker_records(state_dir, logging.getLogger("teardown")), master]:
        if rec and any(is_ours(rec, Daemon(main, ())) for main in (WORKER_CLASS, MASTER_CLASS)):
            os.killpg(rec["pid"], signal.SIGKILL)


async def test_a_stop_and_shutdown_at_once_stop_the_worker_once_and_keep_its_archive(
    spark_master, tmp_path, caplog
):
    """The cycle stopping the worker that writes the class data archive, and shutdown with
    stop_on_exit stopping every worker, at the same time: one stop, the archive written
    and used, no `.failed` mark."""
    state = str(tmp_path / "state")
    backend = LocalBackend(
        **AS_ROOT, start_master=False, master_url=spark_master.master_url,
        master_ui_url=spark_master.master_ui_url,
        state_dir=state, stop_on_exit=True, class_data_sharing=True, cds_dump_timeout=60,
    )
    try:
        await backend.setup()
        [worker] = await backend.start(1)
        assert read_json(f"{state}/workers/{worker.handle}.json").get("cds_dump"), "it writes the archive"
        await until(lambda: _alive_at(spark_master.master_ui_url, worker.host), timeout=90,
                    what="the worker ALIVE")
        caplog.set_level(logging.INFO)
        await asyncio.wait_for(asyncio.gather(backend.stop(worker), backend.shutdown()), timeout=120)
        ends = ("LocalBackend: stopped worker", "LocalBackend: forgot worker")
        stops = [r.getMessage() for r in caplog.records if r.getMessage().startswith(ends)]
        assert stops == [f"LocalBackend: stopped worker {worker.handle}"]
        cds = sorted(os.path.basename(p) for p in glob.glob(f"{state}/cds/worker-*"))
        assert len(cds) == 1 and cds[0].endswith(".jsa"), cds  # the archive, no .failed, no dump left
        # and the next worker starts from it
        [after] = await backend.start(1)
        pid = read_json(f"{state}/workers/{after.handle}.json")["pid"]
        with open(f"/proc/{pid}/cmdline") as f:
            assert f"-XX:SharedArchiveFile={state}/cds/{cds[0]}" in f.read().split("\0")
    finally:
        await backend.shutdown()
        kill_pool(state)


async def test_sigterm_while_a_cycle_stops_a_worker_waits_for_that_stop(spark_master, tmp_path):
    """The real command, with stop_on_exit: SIGTERM while its cycle stops the worker that
    writes the class data archive (a worker that cannot register: unschedulable after
    start_timeout). The exit waits for that stop; shutdown does not stop the worker again."""
    state = tmp_path / "state"
    with open(tmp_path / "scaler.log", "w") as out:
        scaler = subprocess.Popen(
            [sys.executable, "-m", "jhub_spark_scaler", "--max-workers=1", "--idle-workers=1",
             "--poll-interval=0.5", "--start-timeout=3", f"--state-dir={state}",
             "--LocalBackend.start_master=False",
             f"--LocalBackend.master_url=spark://127.0.0.1:{random_port()}",  # nothing listens there
             f"--LocalBackend.master_ui_url={spark_master.master_ui_url}",
             "--LocalBackend.stop_on_exit=True", "--LocalBackend.cds_dump_timeout=60", AS_ROOT_FLAG],
            stdout=out, stderr=subprocess.STDOUT,
        )
    try:
        def stop_in_flight() -> bool:
            """The JVM runs a signal's handlers on a thread it names after it; then the worker
            exits, dumping its classes, for a few seconds."""
            pid = read_json(str(state / "workers" / "local-1.json"))["pid"]
            threads = glob.glob(f"/proc/{pid}/task/*/comm")
            return any(open(comm).read().strip() == "SIGTERM handler" for comm in threads)

        await until(stop_in_flight, timeout=90, interval=0.01, ignore=(OSError, TypeError),
                    what="the cycle to stop the unschedulable worker", process=scaler,
                    log=tmp_path / "scaler.log")
        scaler.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(scaler.wait, 90) == 0
        log = (tmp_path / "scaler.log").read_text()
        assert log.count("LocalBackend: stopped worker local-1") == 1, log
        cds = sorted(os.path.basename(p) for p in glob.glob(f"{state}/cds/worker-*"))
        assert len(cds) == 1 and cds[0].endswith(".jsa"), (cds, log)  # the archive; no .failed, no dump
        assert not worker_records(str(state), logging.getLogger("test"))
    finally:
        if scaler.poll() is None:
            scaler.kill()
            scaler.wait()
        kill_pool(str(state))


def pool_pids(state: Path) -> dict[str, int]:
    """The pids of the master and workers a state dir's records name, by handle ("master")."""
    master = read_json(str(state / "master.json")) or {}
    workers = {r["handle"]: r["pid"] for r in worker_records(str(state), logging.getLogger("test"))}
    return {"master": master.get("pid"), **workers}


async def restart_hub(app, c: Config, hub_app):
    """What SIGTERM does to a hub, in process (a real SIGTERM would end the test's process):
    its cleanup stops the managed services (SIGINT, SIGTERM after 10 s) and the proxy. Then a
    new hub from the same config; the scaler's state dir is the same."""
    for callback in app._periodic_callbacks.values():
        callback.stop()
    app.http_server.stop()
    await asyncio.wait_for(app.cleanup(), timeout=60)
    return await asyncio.wait_for(hub_app(c), timeout=60)


async def test_a_hub_restart_under_a_running_driver_loses_no_executor(hub_app, spark_master, tmp_path, capfd):
    """The scaler as the hub's managed service on the local backend, with its own master,
    at the default stop_on_exit (False). A driver runs jobs on it; the hub is restarted:
    the new scaler adopts the same master and workers, and the driver's jobs go on."""
    state = tmp_path / "scaler"
    c = hub_config(tmp_path)
    configure_scaler(c, spark_master, state, idle_workers=1, LocalBackend__start_master=True,
                     LocalBackend__master_url="", LocalBackend__master_ui_url="",
                     LocalBackend__master_port=0, LocalBackend__master_webui_port=0,
                     LocalBackend__stop_on_exit=False)
    driver, app = None, None
    try:
        app = await hub_app(c)
        master = await until(lambda: read_json(str(state / "master.json")), timeout=90,
                             what="the scaler to start its master")
        driver = Driver(tmp_path / "driver", ["--master", f"spark://{master['host']}:{master['port']}",
                                              "--name", "restart", "--cores-max", "1", "--task-seconds", "1"])
        await driver.started()
        await until(lambda: len(worker_records(str(state), logging.getLogger("test"))) == 2, timeout=90,
                    what="a busy and an idle worker")
        await driver.jobs_done(2)
        before = pool_pids(state)
        old_service = app._service_map[SERVICE_NAME].proc.pid
        capfd.readouterr()
        log: list[str] = []  # the scalers' log (they inherit the test's stderr) from here on

        def scaler_log() -> str:
            log.append(capfd.readouterr().err)
            return "".join(log)

        app = await restart_hub(app, c, hub_app)
        jobs = driver.jobs()
        service = app._service_map[SERVICE_NAME]
        assert service.proc.pid != old_service and service.proc.returncode is None
        await until(lambda: "LocalBackend: adopted" in scaler_log(), timeout=60,
                    what="the new scaler to adopt the pool")
        assert pool_pids(state) == before
        assert "leaving the workers and master running for the next scaler" in scaler_log()
        assert f"adopting the Spark master, pid {before['master']}" in scaler_log()
        assert "adopted 2 running worker(s) and 0 dead one(s)" in scaler_log()
        # An absence can only be watched for a while: 5 s is 10 of the new scaler's cycles
        # and 5 of the driver's jobs.
        await always(lambda: pool_pids(state) == before and service.proc.returncode is None, seconds=5,
                     what="the same master and workers, under the new scaler")
        await driver.jobs_done(jobs + 3, timeout=60)
        result = await driver.result()
        assert result["jobs_failed"] == 0 and result["tasks_failed"] == 0, result
        assert not lost_executors(result), result
        assert [e["active"] for e in result["executors"]] == [True], "one executor, never removed"
        assert "stopped worker" not in scaler_log()
    finally:
        if driver is not None:
            driver.kill()
        if app is not None:
            await app._service_map[SERVICE_NAME].stop()
        # stop_on_exit is False for the service: the teardown stops the pool it left
        cleanup = LocalBackend(**AS_ROOT, state_dir=str(state), master_port=0, master_webui_port=0,
                               stop_timeout=5,
                               stop_on_exit=True)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(cleanup.setup(), timeout=60)
        await asyncio.wait_for(cleanup.shutdown(), timeout=60)
        kill_pool(str(state))
