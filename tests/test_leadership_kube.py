"""One active scaler per Kubernetes pool: real `jhub-spark-scaler` processes against the real
kube-apiserver (v1.20.2), as the hub's service account holding only helm-values/rbac.yaml's
Role, with the test kubelet running the worker pods as real Spark workers.

The pool is "notebooks", the one whose Lease rbac.yaml names. Short lease timings
(3 s, 2 s, 0.5 s) keep the takeovers quick.
"""

from __future__ import annotations

import asyncio
import signal
import socket
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest
from kubernetes_asyncio import client

from jhub_spark_scaler.backends.lease import lease_name
from jhub_spark_scaler.backends.worker_pod import ANNOTATION_RETIRING, pool_selector
from jhub_spark_scaler.spark import SparkClient

from .scaler_process import ScalerProcess
from .settings import HTTP_TIMEOUT
from .test_leadership_local import acts
from .waiting import always, until

pytestmark = pytest.mark.spark

NAMESPACE = "spark"
POOL = "notebooks"
LEASE = lease_name(POOL)
MAX_WORKERS = 2
DURATION, RENEW_DEADLINE, RETRY = 3.0, 2.0, 0.5


def command(kube_cluster, spark_master, *args: str, pool: str = POOL) -> list[str]:
    return [
        sys.executable, "-m", "jhub_spark_scaler", "--backend=kubernetes", f"--max-workers={MAX_WORKERS}",
        f"--KubernetesBackend.kubeconfig={kube_cluster.kubeconfig('hub')}",
        f"--KubernetesBackend.namespace={NAMESPACE}", f"--KubernetesBackend.pool={pool}",
        f"--KubernetesBackend.master_url={spark_master.master_url}",
        f"--KubernetesBackend.master_ui_url={spark_master.master_ui_url}",
        f"--master-ui-url={spark_master.master_ui_url}",
        "--KubernetesBackend.cpu_limit=1", "--KubernetesBackend.memory_limit=1280Mi",
        "--KubernetesBackend.stop_grace_period=10",
        f"--KubernetesBackend.lease_duration={DURATION}",
        f"--KubernetesBackend.lease_renew_deadline={RENEW_DEADLINE}",
        f"--KubernetesBackend.lease_retry_period={RETRY}", *args,
    ]


class Scaler(ScalerProcess):
    def __init__(self, argv: list[str], log: Path):
        super().__init__(argv, log)
        self.identity = f"{socket.gethostname()}_{self.process.pid}"


class PodWatch:
    """The pool's pods as the apiserver has them, read as admin every 0.1 s: the most at
    once, and every name ever seen (each one a creation)."""

    def __init__(self, api_client):
        self.core = client.CoreV1Api(api_client)
        self.most, self.names, self.pods = 0, set(), []
        self.task = asyncio.ensure_future(self._watch())

    async def _watch(self) -> None:
        while True:
            listed = await self.core.list_namespaced_pod(NAMESPACE, label_selector=pool_selector(POOL))
            self.pods = listed.items
            self.most = max(self.most, len(self.pods))
            self.names |= {p.metadata.name for p in self.pods}
            await asyncio.sleep(0.1)

    async def close(self) -> None:
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)


def took_over_in(seconds: float) -> None:
    """The standby waited out the lease (it may not act sooner) and no longer than the lease
    and one retry, plus 1.5 s for the test's polling and a loaded machine."""
    print(f"took over after {seconds:.2f} s")  # shown with pytest -s
    assert DURATION - RETRY - 0.3 <= seconds <= DURATION + RETRY + 1.5, f"took over after {seconds:.2f} s"


async def test_one_active_scaler_per_pool_and_the_standby_finishes_the_drains(
        kube_cluster, kube_rbac, kubelet, spark_master, tmp_path):
    scalers: list[Scaler] = []
    admin = await kube_cluster.api_client("admin")
    watch = PodWatch(admin)

    def start(name: str, *args: str) -> Scaler:
        scalers.append(Scaler(command(kube_cluster, spark_master, *args), tmp_path / f"{name}.log"))
        return scalers[-1]

    async def ready_pods(n: int) -> bool:
        return len(watch.pods) == n and all(p.status.pod_ip for p in watch.pods) and \
            {p.status.pod_ip for p in watch.pods} <= alive_hosts(await spark_workers(spark_master))

    try:
        first = start("first", "--idle-workers=2", "--poll-interval=0.5")
        await first.logged(f"Kubernetes backend: pool '{POOL}'", timeout=60)
        await until(lambda: ready_pods(2), timeout=120, what="2 worker pods ALIVE at the master")
        names = set(watch.names)

        # a second scaler without --standby: one line naming the active one, exit 2
        refused = subprocess.run(command(kube_cluster, spark_master, "--idle-workers=0"),
                                 capture_output=True, text=True, timeout=60)
        assert refused.returncode == 2, refused.stderr
        assert refused.stderr.splitlines()[-1] == (
            f"jhub-spark-scaler: error: another jhub-spark-scaler ({first.identity}) is the active scaler "
            f"of Lease {NAMESPACE}/{LEASE}: stop it, or start this one with --standby to take over when "
            "it exits")

        # a standby that would retire both waits, touching nothing; once active it retires
        # both at its first cycle, then sleeps a minute: killed mid-drain
        second = start("second", "--standby", "--idle-workers=0", "--scale-down-delay=0",
                       "--poll-interval=60")
        await second.logged(f"standing by: {first.identity} is the active scaler", timeout=60)
        await always(lambda: watch.names == names and not acts(second.text()), seconds=3,
                     what="the standby touches nothing")

        killed = time.monotonic()
        first.stop(signal.SIGKILL)  # no release: the standby must wait the lease out
        took_over_in(await second.logged("now the active scaler of", timeout=30) - killed)

        def retiring() -> bool:
            return len(watch.pods) == 2 and all(
                ANNOTATION_RETIRING in (p.metadata.annotations or {}) for p in watch.pods)

        await until(retiring, timeout=30, what="both pods marked retiring", process=second.process,
                    log=second.log_path)

        third = start("third", "--standby", "--idle-workers=0", "--poll-interval=0.5")
        await third.logged(f"standing by: {second.identity} is the active scaler", timeout=60)
        killed = time.monotonic()
        second.stop(signal.SIGKILL)
        took_over_in(await third.logged("now the active scaler of", timeout=30) - killed)
        await until(lambda: not watch.pods, timeout=90, what="the standby to finish the drains",
                    process=third.process, log=third.log_path)
        log = third.text()
        assert log.count(" stop: ") == 2 and " start: " not in log and " retire: " not in log, acts(log)
        assert " stop: " not in second.text() and " retire: " in second.text()

        # at exit the holder empties the Lease: the next one need not wait it out
        assert third.stop(signal.SIGTERM) == 0
        lease = await client.CoordinationV1Api(admin).read_namespaced_lease(LEASE, NAMESPACE)
        assert not lease.spec.holder_identity
        assert watch.most <= MAX_WORKERS and watch.names == names, (watch.most, watch.names - names)
    finally:
        await watch.close()
        for scaler in scalers:
            scaler.stop(signal.SIGKILL)
        coordination = client.CoordinationV1Api(admin)
        try:
            await coordination.delete_namespaced_lease(LEASE, NAMESPACE)
        except client.ApiException:
            pass
        await admin.close()


async def hold_lease_as(coordination, holder: str, seconds: float) -> None:
    """Take the Lease and renew it every 0.3 s for `seconds`, as a live scaler would."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        lease = await coordination.read_namespaced_lease(LEASE, NAMESPACE)
        body = coordination.api_client.sanitize_for_serialization(lease)
        body["spec"].update(holderIdentity=holder,
                            renewTime=datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ"))
        try:
            await coordination.replace_namespaced_lease(LEASE, NAMESPACE, body)
        except client.ApiException as e:
            if e.status != 409:  # a conflict: the scaler renewed in between; take it next time
                raise
        await asyncio.sleep(0.3)


async def test_a_scaler_that_loses_the_lease_acts_on_nothing_until_it_holds_it_again(
        kube_cluster, kube_rbac, kubelet, spark_master, tmp_path):
    admin = await kube_cluster.api_client("admin")
    coordination = client.CoordinationV1Api(admin)
    watch = PodWatch(admin)
    scaler = Scaler(command(kube_cluster, spark_master, "--idle-workers=2", "--poll-interval=0.5"),
                    tmp_path / "scaler.log")
    try:
        await until(lambda: len(watch.pods) == 2, timeout=120, what="2 worker pods", process=scaler.process,
                    log=scaler.log_path)
        # another holder takes the Lease (as after a partition) and keeps renewing it
        intruder = asyncio.ensure_future(hold_lease_as(coordination, "intruder", seconds=6))
        await scaler.logged(f"no longer the active scaler of Lease {NAMESPACE}/{LEASE}", timeout=10)
        # a worker lost meanwhile is not replaced: the scaler acts on nothing
        await client.CoreV1Api(admin).delete_namespaced_pod(watch.pods[0].metadata.name, NAMESPACE,
                                                            grace_period_seconds=0)
        await until(lambda: len(watch.pods) == 1, timeout=30, what="the pod deleted")
        before = scaler.text()
        await always(lambda: len(watch.pods) == 1, seconds=3, what="no pod started for a scaler on standby")
        await intruder
        # the intruder stops renewing: the scaler takes over after lease_duration and replaces it
        await scaler.logged(f"the active scaler of Lease {NAMESPACE}/{LEASE} again", timeout=DURATION + 5)
        await until(lambda: len(watch.pods) == 2, timeout=60, what="the lost worker replaced",
                    process=scaler.process, log=scaler.log_path)
        during = scaler.text()[len(before):].split("the active scaler of")[0]
        assert not acts(during), acts(during)
        assert scaler.text().count("no longer the active scaler") == 1
        assert watch.most <= MAX_WORKERS
    finally:
        await watch.close()
        scaler.stop(signal.SIGKILL)
        try:
            await coordination.delete_namespaced_lease(LEASE, NAMESPACE)
        except client.ApiException:
            pass
        await admin.close()


async def test_the_lease_of_a_pool_rbac_does_not_name_is_refused(kube_cluster, kube_rbac, spark_master,
                                                                 tmp_path):
    """rbac.yaml grants get and update of the "notebooks" pool's Lease only: another pool's
    scaler stops at start with one line naming what to grant, before it touches anything."""
    done = subprocess.run(command(kube_cluster, spark_master, pool="other"), capture_output=True,
                          text=True, timeout=60, cwd=tmp_path)
    assert done.returncode == 2
    other = lease_name("other")
    assert done.stderr.strip().splitlines()[-1] == (
        f"jhub-spark-scaler: error: missing RBAC permissions in namespace 'spark': get leases/{other}, "
        f"update leases/{other}; grant them to the scaler's service account (helm-values/rbac.yaml)")


async def spark_workers(spark_master):
    try:
        return (await SparkClient(spark_master.master_ui_url, timeout=HTTP_TIMEOUT).master()).workers
    except Exception:  # the master's JSON between two states
        return []


def alive_hosts(workers) -> set[str]:
    return {w.host for w in workers if w.state == "ALIVE"}


@pytest.mark.parametrize("setting, message", [
    ("lease_renew_deadline=20", "KubernetesBackend.lease_duration (15) must be greater than "
                                "KubernetesBackend.lease_renew_deadline (20)"),
    ("lease_retry_period=9", "KubernetesBackend.lease_renew_deadline (10) must be greater than 1.2 x "
                             "KubernetesBackend.lease_retry_period (9)"),
])
def test_lease_timings_that_cannot_keep_two_holders_apart_are_one_line(setting, message, tmp_path):
    """Refused before any connection: no cluster needed."""
    done = subprocess.run(
        [sys.executable, "-m", "jhub_spark_scaler", "--backend=kubernetes", "--max-workers=2",
         "--master-ui-url=http://spark-master-ui:8080", f"--KubernetesBackend.{setting}"],
        capture_output=True, text=True, timeout=60, cwd=tmp_path,
    )
    assert done.returncode == 2
    assert done.stderr.splitlines() == [f"jhub-spark-scaler: error: {message}"]
