"""Workers registered at the master by someone else ("foreign") on real Spark: anyone who
reaches the master's port can register one (Spark's RPC has no authentication). Here two
real Spark Worker processes, started by hand on addresses of their own, join the session's
master beside the scaler's pool: by default they do not shrink it; with
count_foreign_workers they count as idle capacity and the scaler retires its own worker.
"""

from __future__ import annotations

import contextlib
import glob
import os
import signal
import subprocess

import pytest

from jhub_spark_scaler.backends.local import FAST_JVM_OPTIONS, WORKER_CLASS, LocalBackend
from jhub_spark_scaler.model import WorkerState

from .settings import AS_ROOT
from .test_scaling import cycles_until, make_reconciler, with_policy
from .waiting import always

pytestmark = pytest.mark.spark
FOREIGN_HOSTS = ("127.0.9.2", "127.0.9.3")


def start_foreign_worker(backend: LocalBackend, host: str, work_dir: str, log) -> subprocess.Popen:
    """A Spark Worker started by hand against the backend's master, as anyone could."""
    scala = os.path.basename(glob.glob(os.path.join(backend.spark_home, "jars", "spark-core_*.jar"))[0])
    env = {"PATH": os.environ["PATH"], "SPARK_HOME": backend.spark_home, "SPARK_LOCAL_IP": host,
           "SPARK_SCALA_VERSION": scala.removeprefix("spark-core_").split("-")[0]}
    cmd = [backend.java, *FAST_JVM_OPTIONS, "-Xmx128m", "-cp", os.path.join(backend.spark_home, "jars", "*"),
           WORKER_CLASS, "--host", host, "--port", "0", "--webui-port", "0", "--cores", "1",
           "--memory", "512m", "--work-dir", work_dir, backend.master_url]
    return subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


async def test_fake_idle_workers_registered_from_outside_leave_the_pool_unchanged(spark_master, tmp_path):
    backend = LocalBackend(
        **AS_ROOT, start_master=False, master_url=spark_master.master_url,
        master_ui_url=spark_master.master_ui_url,
        state_dir=str(tmp_path / "state"), stop_timeout=5, stop_on_exit=True, worker_memory="512m",
    )
    foreign: list[subprocess.Popen] = []
    log = open(tmp_path / "foreign.log", "w")
    try:
        await backend.setup()
        r = make_reconciler(backend, spark_master, idle_workers=1, scale_down_delay=0)
        assert not r.policy.count_foreign_workers, "off by default"
        await cycles_until(r, lambda s: s.count(WorkerState.IDLE) == 1 and not s.count(WorkerState.STARTING),
                           timeout=90, what="the pool's idle worker")
        [ours] = [w.handle for w in r.last_snapshot.workers if w.ours]

        foreign += [start_foreign_worker(backend, host, str(tmp_path / f"work-{host}"), log)
                    for host in FOREIGN_HOSTS]

        def foreign_idle(s) -> bool:
            return sorted(w.host for w in s.workers if not w.ours and w.state is WorkerState.IDLE) \
                == list(FOREIGN_HOSTS)

        await cycles_until(r, foreign_idle, timeout=90, what="both foreign workers ALIVE and idle")
        assert r.last_plan.demand.foreign_capacity == 0 and r.last_plan.demand.target == 1

        async def unchanged() -> bool:
            await r.cycle()
            s = r.last_snapshot
            return [(w.handle, w.state) for w in s.workers if w.ours] == [(ours, WorkerState.IDLE)] \
                and not r.last_plan.retire and not r.last_plan.stop
        # An absence can only be watched for a while: 5 s is about 15 cycles, each of which
        # would have retired the worker at once (scale_down_delay 0) had the foreign ones counted.
        await always(unchanged, seconds=5, what="the pool kept its idle worker beside 2 foreign idle ones")

        # the same pool with foreign workers counted: they are capacity, and ours is retired
        with_policy(r, count_foreign_workers=True)
        await cycles_until(r, lambda s: r.last_plan.demand.foreign_capacity == 2 and not any(
            w.ours and w.state in (WorkerState.IDLE, WorkerState.BUSY) for w in s.workers),
            timeout=60, what="the scaler, counting foreign workers, to retire its own")
    finally:
        for process in foreign:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        log.close()
        await backend.shutdown()
