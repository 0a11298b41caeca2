"""The worker pod's preStop hook, run for real: the hook of the manifest (`worker_pod`), as a
kubelet runs it, in the PID namespace of a real Spark worker that is PID 1 there, as in its
container.

The stand-in kubelet (tests/kubelet.py) runs no hooks, so here each worker runs as the pod
says (its command and environment from the manifest, /opt/spark mapped to the local Spark)
under `unshare --pid --fork --mount-proc`, and the hook runs under `nsenter` into that PID
and mount namespace. A driver has an executor on the worker; the hook decommissions the
worker (SIGPWR to PID 1), returns once the executor has left, and the app loses no executor.
Needs root (new PID namespaces), as the suite's machines give it.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from jhub_spark_scaler.backends.worker_pod import WORKER_UI_PORT, WorkerPodTemplate, worker_pod

from .conftest import lost_executors
from .kubelet import IMAGE_SPARK_HOME, expand
from .test_worker_pod import resources
from .waiting import until

pytestmark = [pytest.mark.spark,
              pytest.mark.skipif(os.geteuid() != 0, reason="new PID namespaces need root")]

HOSTS = ("127.0.5.1", "127.0.5.2")


class NamespacedWorker:
    """A worker pod's container as a process that is PID 1 of a PID namespace of its own."""

    def __init__(self, pod: dict, *, host: str, workdir: Path, spark_home: str, java_home: str):
        (container,) = pod["spec"]["containers"]
        self.hook = container["lifecycle"]["preStop"]["exec"]["command"]
        workdir.mkdir(parents=True, exist_ok=True)
        env = {"PATH": os.environ["PATH"], "JAVA_HOME": java_home, "SPARK_HOME": spark_home,
               "HOME": str(workdir)}
        for var in container["env"]:
            value = host if "valueFrom" in var else expand(var["value"], env)
            env[var["name"]] = value.replace("/spark-work", str(workdir))
        argv = [expand(a, env).replace(IMAGE_SPARK_HOME, spark_home) for a in container["command"]]
        self.log = open(workdir / "worker.log", "wb")
        self.unshare = subprocess.Popen(["unshare", "--pid", "--fork", "--mount-proc", *argv], env=env,
                                        stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        self.ui = f"http://{host}:{WORKER_UI_PORT}"

    @property
    def pid(self) -> int:
        """The host's pid of the namespace's PID 1 (unshare's child)."""
        children = Path(f"/proc/{self.unshare.pid}/task/{self.unshare.pid}/children").read_text().split()
        return int(children[0])

    def state(self) -> dict:
        with urllib.request.urlopen(f"{self.ui}/json/", timeout=5) as answer:
            return json.load(answer)

    def pre_stop(self) -> subprocess.CompletedProcess:
        """The hook, in the container's PID and mount namespaces, as the kubelet execs it."""
        return subprocess.run(["nsenter", "-t", str(self.pid), "-p", "-m", *self.hook],
                              capture_output=True, text=True, timeout=120)

    def stop(self) -> None:
        if self.unshare.poll() is None:
            os.killpg(self.unshare.pid, signal.SIGKILL)
            self.unshare.wait(timeout=30)
        self.log.close()


@pytest.fixture
def namespaced_workers(tmp_path, spark_master):
    started: list[NamespacedWorker] = []
    spark_home = os.path.dirname(importlib.util.find_spec("pyspark").origin)  # as tests/kubelet.py
    java = os.environ.get("JAVA_HOME") and os.path.join(os.environ["JAVA_HOME"], "bin", "java")
    java_home = os.path.dirname(os.path.dirname(os.path.realpath(java or shutil.which("java") or "java")))

    def start(host: str, drain_seconds: int) -> NamespacedWorker:
        template = WorkerPodTemplate(
            namespace="spark", pool="prestop", image="apache/spark:4.3.0", master_url=spark_master.master_url,
            resources=resources(cpu_limit="1", memory_limit="1536Mi"), run_as_user=185,
            drain_seconds=drain_seconds)
        worker = NamespacedWorker(worker_pod(template), host=host, workdir=tmp_path / host,
                                  spark_home=spark_home, java_home=java_home)
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.stop()


async def timed_pre_stop(worker):
    """Run the worker's preStop hook as the kubelet does; it must succeed. The seconds it took."""
    began = time.monotonic()
    hook = await asyncio.to_thread(worker.pre_stop)
    assert hook.returncode == 0, hook.stderr
    return time.monotonic() - began


async def test_the_pre_stop_hook_drains_the_worker_before_it_stops(namespaced_workers, spark_master, drivers):
    leaving, staying = (namespaced_workers(host, drain_seconds=120) for host in HOSTS)

    async def registered():
        master = await asyncio.to_thread(lambda: json.load(urllib.request.urlopen(
            f"{spark_master.master_ui_url}/json/", timeout=5)))
        return {w["host"] for w in master["workers"] if w["state"] == "ALIVE"} >= set(HOSTS)

    await until(registered, timeout=120, what="both namespaced workers to register")
    assert Path(f"/proc/{leaving.pid}/exe").resolve().name == "java", "PID 1 is the worker JVM"
    app = drivers("pre-stop", "--cores-max", "2", "--tasks", "2", "--task-seconds", "2")
    await app.started()
    await until(lambda: leaving.state()["executors"], timeout=120, what="an executor on the worker",
                ignore=(OSError,))

    took = await timed_pre_stop(leaving)
    assert leaving.state()["executors"] == [], "the hook returned once the executors had left"
    assert took < 120, "not by its bound"
    master = json.load(urllib.request.urlopen(f"{spark_master.master_ui_url}/json/", timeout=5))
    assert {w["host"]: w["state"] for w in master["workers"] if w["host"] in HOSTS}[HOSTS[0]] == \
        "DECOMMISSIONED"
    # the kubelet's SIGTERM once the hook has returned: the worker exits
    os.kill(leaving.pid, signal.SIGTERM)
    await until(lambda: leaving.unshare.poll() is not None, timeout=30, what="the worker to exit")

    await app.jobs_done(app.jobs() + 2, timeout=120)  # the app goes on, on the other worker
    assert staying.state()["executors"]
    result = await app.result()
    assert not lost_executors(result), result
    assert result["tasks_failed"] == 0 and result["jobs_failed"] == 0, result
    print(f"preStop hook returned {took:.1f} s after it began")


async def test_the_pre_stop_hook_gives_up_at_its_bound(namespaced_workers, spark_master, drivers):
    """Executors that do not leave (an app without decommission) keep the hook no longer than
    drain_seconds: then the kubelet's SIGTERM comes, as without a hook."""
    held = namespaced_workers(HOSTS[0], drain_seconds=3)
    await until(lambda: held.state(), timeout=120, what="the worker's UI", ignore=(OSError,))
    app = drivers("pre-stop-held", "--no-decommission", "--cores-max", "1", "--task-seconds", "1")
    await app.started()
    await until(lambda: held.state()["executors"], timeout=120, what="an executor on the worker",
                ignore=(OSError,))
    took = await timed_pre_stop(held)
    assert 3 <= took < 10, took
    assert held.state()["executors"], "still there: the hook only waited"
