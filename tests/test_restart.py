"""A restart is not a shutdown: on real Spark processes (and a real hub).

- a worker stopped by a cycle while the scaler shuts down is stopped once, and the class
  data archive its stop writes is kept, not marked failed;
- a hub restarted while a driver runs jobs: the hub SIGINTs its managed service, which
  leaves the master and workers running (stop_on_exit is False by default); the next
  scaler adopts the same processes, and the driver loses no executor and no task.
"""

from __future__ import annotations

import asyncio
import glob
import logging
import os
import signal

import pytest

from jhub_spark_scaler.backends.local import MASTER_CLASS, WORKER_CLASS, LocalBackend
from jhub_spark_scaler.backends.processes import is_ours
from jhub_spark_scaler.backends.state_files import read_json, worker_records

from jhub_spark_scaler.spark import SparkClient

from .settings import HTTP_TIMEOUT
from .waiting import until

pytestmark = pytest.mark.spark


async def _alive_at(master_ui_url: str, host: str) -> bool:
    master = await SparkClient(master_ui_url, timeout=HTTP_TIMEOUT).master()
    return any(m.host == host and m.state == "ALIVE" for m in master.workers)


def kill_pool(state_dir: str) -> None:
    """SIGKILL what a state dir's records name, by pid and start time: the last resort of a teardown."""
    master = read_json(f"{state_dir}/master.json")
    for rec in [*worker_records(state_dir, logging.getLogger("teardown")), master]:
        if rec and (is_ours(rec, WORKER_CLASS) or is_ours(rec, MASTER_CLASS)):
            os.killpg(rec["pid"], signal.SIGKILL)


async def test_a_stop_and_shutdown_at_once_stop_the_worker_once_and_keep_its_archive(
    spark_master, tmp_path, caplog
):
    """The cycle stopping the worker that writes the class data archive, and shutdown with
    stop_on_exit stopping every worker, at the same time: one stop, the archive written
    and used, no `.failed` mark."""
    state = str(tmp_path / "state")
    backend = LocalBackend(
        start_master=False, master_url=spark_master.master_url, master_ui_url=spark_master.master_ui_url,
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
        cds = sorted(os.path.basename(p) for p in glob.glob(f"{state}/cds/*"))
        assert len(cds) == 1 and cds[0].endswith(".jsa"), cds  # the archive, no .failed, no dump left
        # and the next worker starts from it
        [after] = await backend.start(1)
        pid = read_json(f"{state}/workers/{after.handle}.json")["pid"]
        with open(f"/proc/{pid}/cmdline") as f:
            assert f"-XX:SharedArchiveFile={state}/cds/{cds[0]}" in f.read().split("\0")
    finally:
        await backend.shutdown()
        kill_pool(state)
