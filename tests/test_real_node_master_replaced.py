"""The master's pod replaced under running workers, on the real node (tests/kube_node.py) with
its STAND-IN for cluster DNS (tests/node_dns.py; ids carry `stand-in-dns`).

The master is applied as the deployment guide applies it (its Deployment and its two
Services, helm-values' shapes) and the workers are the scaler's KubernetesBackend pods told
`spark://spark-master.spark.svc:7077`, as in production. The master announces its pod IP;
when its pod is replaced the workers must find the new one through the Service's name
(`spark.worker.preferConfiguredMasterAddress`, which the scaler's worker pods set).

The stand-in DNS answers the Service's name with its ready pod's IP (a ClusterIP Service
would answer the ClusterIP, and kube-proxy, which this node cannot run, would forward to
that pod): the workers resolve the name again on every retry, either way they reach the
new pod. The host has no cluster DNS, so the scaler reads the master's UI through
`ServiceForwarder`, a stand-in for kube-proxy on 127.0.0.1 that connects to the UI
Service's ready pod, and drivers are given the new pod's IP.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from types import SimpleNamespace

import pytest
from kubernetes_asyncio import client

from jhub_spark_scaler import clock
from jhub_spark_scaler.backends.kubernetes import KubernetesBackend
from jhub_spark_scaler.backends.master_manifests import MASTER_PORT, MASTER_UI_PORT, master_deployment, \
    master_services, master_url
from jhub_spark_scaler.backends.worker_pod import pool_selector
from jhub_spark_scaler.spark import SparkClient, SparkError

from .conftest import lost_executors
from .node_dns import cluster_dns, service_name  # noqa: F401 (a fixture)
from .test_real_node_spark import MASTER, delete_master, master_pod, node_drivers, node_image, \
    node_scaler, timed  # noqa: F401 (fixtures)
from .test_scaling import cycles_until, idle_and_busy
from .waiting import until

pytestmark = [pytest.mark.spark, pytest.mark.timeout(900)]

#: Spark's own default, which the scaler's worker pods override
UNPREFERRED = {"spark.worker.preferConfiguredMasterAddress": "false"}
#: how long the workers may take to register with the new master after the old pod's deletion:
#: its JVM starts (20-60 s on 2 busy cores), its readiness probe passes (period 10 s), then a
#: worker's next retry (every 5-15 s) resolves the name again (a JVM keeps a missing name 10 s)
BACK_WITHIN = 240
#: the scaler's start_timeout here: how long after the new master answers the workers may take
#: to register with it before the scaler stops them as never registered. A worker retries 6
#: times 5-15 s apart, then every 30-90 s: this covers one of the later retries too
REJOIN_WITHIN = 100


class ServiceForwarder:
    """The host's way to a Service, standing in for kube-proxy: a listener on 127.0.0.1 that
    connects each connection to the first address the stand-in DNS answers for `name`, on
    `port`. As through a ClusterIP, only a ready pod is reached, and a replaced pod's
    successor at the same URL; with no ready pod the connection is closed at once."""

    def __init__(self, dns, name: str, port: int):
        self.dns, self.name, self.port = dns, name, port
        self.server: asyncio.base_events.Server | None = None

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def _handle(self, reader, writer) -> None:
        try:
            ips = await self.dns.lookup(self.name)
            if ips:
                connecting = asyncio.open_connection(ips[0], self.port)
                upstream_reader, upstream = await asyncio.wait_for(connecting, 5)
                await asyncio.gather(_pipe(reader, upstream), _pipe(upstream_reader, writer))
        except (OSError, asyncio.TimeoutError):
            pass  # the client sees its connection closed, as with no ready endpoint
        finally:
            writer.close()

    def close(self) -> None:
        if self.server is not None:
            self.server.close()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except OSError:
        writer.close()


@pytest.fixture
async def service_master(real_node, node_image, cluster_dns):  # noqa: F811 (a fixture)
    """The master Deployment and its Services from helm-values' shapes: `master_url` the
    Service's (what the workers are told), `master_ui_url` the UI Service's through a
    ServiceForwarder, `pod` the master's pod as it first came up."""
    ns = real_node.namespace
    started = time.monotonic()
    async with await real_node.api_client("admin") as admin:
        apps, core = client.AppsV1Api(admin), client.CoreV1Api(admin)
        ui = ServiceForwarder(cluster_dns, service_name(f"{MASTER}-ui", ns), MASTER_UI_PORT)
        try:
            for service in master_services(name=MASTER, namespace=ns):
                await core.create_namespaced_service(ns, service)
            await apps.create_namespaced_deployment(ns, master_deployment(
                name=MASTER, namespace=ns, image=node_image, image_pull_policy="Never", cpu="500m",
                run_as_user=KubernetesBackend.run_as_user.default_value, default_cores=2))
            pod = await master_pod(core, ns, real_node=real_node)
            await until(lambda: _resolves(cluster_dns, service_name(MASTER, ns), pod["status"]["podIP"]),
                        timeout=30, what="the master Service's name to answer the master's pod IP")
            timed("master up, its name answered", started)
            yield SimpleNamespace(master_url=master_url(MASTER, ns), master_ui_url=await ui.start(), pod=pod)
        finally:
            ui.close()
            await delete_master(apps, core, ns)


async def _resolves(dns, name: str, ip: str) -> bool:
    return await dns.lookup(name) == [ip]


async def pods_of(core, namespace: str, pool: str) -> dict[str, tuple]:
    """The pool's pods: name -> (uid, container ID, restart count)."""
    found = {}
    for pod in (await core.list_namespaced_pod(namespace, label_selector=pool_selector(pool))).items:
        (status,) = pod.status.container_statuses or (None,)
        found[pod.metadata.name] = (pod.metadata.uid, status and status.container_id,
                                    status and status.restart_count)
    return found


def pool_log(real_node, pool: str) -> str:
    """The whole container logs of the pool's worker pods (tests/kube_node.py's `log_dir`)."""
    files = sorted(real_node.log_dir.glob(f"{real_node.namespace}_spark-worker-{pool}-*/*/*.log"))
    return "".join(f.read_text(errors="replace") for f in files)


async def alive_hosts(spark: SparkClient) -> set[str] | None:
    """The hosts of the workers ALIVE at the master, or None while it cannot be read."""
    try:
        return {w.host for w in (await spark.master()).workers if w.state == "ALIVE"}
    except SparkError:
        return None


async def test_a_replaced_master_is_followed_by_its_workers_through_the_service_name(
        real_node, cluster_dns, service_master, node_scaler, node_drivers):  # noqa: F811 (fixtures)
    """Deleting the master's pod (a node drain, an OOM kill, an upgrade): the Deployment's new
    pod has a new IP; the scaler's workers, told the Service's name, register with it within
    BACK_WITHIN, as the same pods with the same containers, while the scaler, cycling all
    along, starts and stops nothing; a driver then runs its jobs on them. A worker with
    Spark's default (preferConfiguredMasterAddress false) keeps retrying the old pod's IP."""
    ns, m = real_node.namespace, service_master
    r = await node_scaler(m, idle_workers=1)
    stale = await node_scaler(m, idle_workers=1, backend_settings={"spark_conf": UNPREFERRED})
    await cycles_until(r, idle_and_busy(1, 0), timeout=300, what="the scaler's worker ALIVE at the master")
    await cycles_until(stale, idle_and_busy(1, 0), timeout=300, what="the unpreferring worker ALIVE")
    # in production the workers have run for hours when their master is replaced, longer than
    # start_timeout (300 s on Kubernetes): here start_timeout is REJOIN_WITHIN, and they are older
    r.observe_settings = dataclasses.replace(r.observe_settings, start_timeout=REJOIN_WITHIN)
    await cycles_until(r, lambda s: all(clock.now() - w.backend.created_at > REJOIN_WITHIN
                                        for w in s.workers if w.ours), timeout=REJOIN_WITHIN + 10,
                       what=f"the workers to be older than {REJOIN_WITHIN} s")
    async with await real_node.api_client("admin") as admin:
        core = client.CoreV1Api(admin)
        ours = await pods_of(core, ns, r.backend.pool)
        hosts = {w.host for w in r.last_snapshot.workers if w.ours}
        stale_hosts = {w.host for w in stale.last_snapshot.workers if w.ours}
        old_ip, seq = m.pod["status"]["podIP"], max((d.seq for d in r.decisions), default=0)

        started = time.monotonic()
        await core.delete_namespaced_pod(m.pod["metadata"]["name"], ns)
        seen = {}

        async def back():
            await r.cycle()  # the scaler goes on all along, as it does between its intervals
            alive = await alive_hosts(r.spark)
            if alive is not None and "master" not in seen:
                seen["master"] = time.monotonic() - started
            return alive is not None and hosts <= alive

        try:
            await until(back, timeout=BACK_WITHIN, interval=1,
                        what="the scaler's workers to register with the new master")
        except AssertionError as e:
            decided = [(d.action.value, d.detail, d.handles) for d in r.decisions if d.seq > seq]
            workers = pool_log(real_node, r.backend.pool)[-3000:]
            raise AssertionError(f"{e}\ndecisions: {decided}\nworkers:{workers}"
                                 f"\nstand-in DNS:{cluster_dns.log_file.read_text()[-2000:]}") from None
        took = time.monotonic() - started
        print(f"new master readable after {seen['master']:.1f} s, workers back after {took:.1f} s")
        print("".join(line for line in pool_log(real_node, r.backend.pool).splitlines(keepends=True)
                      if "master" in line and " at " not in line)[-3000:])
        stale_retries = pool_log(real_node, stale.backend.pool).count("Retrying connection to master")
        new = await master_pod(core, ns, real_node=real_node)
        assert new["status"]["podIP"] != old_ip and new["metadata"]["uid"] != m.pod["metadata"]["uid"]
        assert await pods_of(core, ns, r.backend.pool) == ours, "the same pods, containers never restarted"
        acted = [d for d in r.decisions if d.seq > seq and d.action.value in ("start", "stop", "retire")]
        assert acted == [], acted

        driver = node_drivers(SimpleNamespace(url=f"spark://{new['status']['podIP']}:{MASTER_PORT}"),
                              "after-replacement", "--cores-max", "1", "--task-seconds", "0.5", "--udf")
        await driver.started()
        await driver.jobs_done(2, timeout=180)
        result = await driver.result()
        assert result["jobs"] >= 2 and result["wrong_results"] == 0 and lost_executors(result) == [], result
        # the unpreferring worker may be back too (below)
        assert {e["host"].rpartition(":")[0] for e in result["executors"]} <= hosts | stale_hosts, \
            result["executors"]

        # the worker that prefers the address the old master announced. Spark sends the first
        # attempt after a disconnect to the configured name (Worker.registerWithMaster), so the
        # worker is back when the new master was ready by then (a loaded node: the old master
        # slow to go); every retry after that goes to the old pod's IP, never to the name
        if stale_hosts & await alive_hosts(r.spark):
            since_lost = pool_log(real_node, stale.backend.pool).split("Connection to master failed")[-1]
            first_attempt = since_lost.split("Successfully registered with master", 1)[0]
            assert "Retrying connection to master" not in first_attempt, since_lost[-3000:]
            print("the unpreferring worker was back at its first attempt: the new master was ready")
        else:
            await until(lambda: pool_log(real_node, stale.backend.pool).count("Retrying connection to master")
                        > stale_retries, timeout=120, what="the unpreferring worker to retry once more")
            assert not stale_hosts & await alive_hosts(r.spark)
            stale_log = pool_log(real_node, stale.backend.pool)
            retries = stale_log.split("Retrying connection to master", 1)[-1]
            assert f"Connecting to master {old_ip}:{MASTER_PORT}" in retries, stale_log[-3000:]
            assert "Connecting to master spark-master" not in retries, stale_log[-3000:]
    timed("master replaced", started)
