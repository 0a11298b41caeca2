"""The scaler and real Spark on the real node (tests/kube_node.py): the master and the
workers are pods of the tests' Spark image (tests/spark_image.py) run by containerd, with
pod IPs from the CNI bridge and memory limits in real cgroups. Most drivers run on the host,
bound to the node's host address, where the executors in the worker pods reach them; one runs
in a notebook pod of the same image (tests/node_notebook.py).

The scaler is a Reconciler on a KubernetesBackend, as in tests/test_kubernetes_backend.py,
authenticated as z2jh's hub service account holding only helm-values/rbac.yaml's Role.
The node has no kube-proxy, and its DNS is a stand-in (tests/node_dns.py): the workers here
are given the master's pod IP; tests/test_real_node_master_replaced.py gives them its Service.
"""

from __future__ import annotations

import asyncio
import ipaddress
import itertools
import time
from types import SimpleNamespace

import aiohttp
import pytest
from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

from jhub_spark_scaler.backends.kubernetes import KubernetesBackend
from jhub_spark_scaler.backends.master_manifests import LABEL_COMPONENT, MASTER_PORT, MASTER_UI_PORT, \
    master_deployment, master_services, master_url
from jhub_spark_scaler.backends.worker_pod import pool_selector

from .conftest import Driver, apply_rbac, lost_executors
from .node_dns import cluster_dns  # noqa: F401  (a fixture)
from .node_logs import PodLogFollower
from .node_notebook import run_cell, values_master_url
from .spark_image import spark_image
from .test_scaling import BURSTY, cycles_until, idle_and_busy, make_reconciler, race_rounds, with_policy
from .waiting import WaitTimeout, until

pytestmark = [pytest.mark.spark, pytest.mark.timeout(600)]

MASTER = "spark-master"  # the Deployment rbac.yaml lets the scaler read: the workers' owner
MASTER_PODS = f"{LABEL_COMPONENT}=spark-master"
SCALER_USER = "hub"
_pools = itertools.count(1)


def timed(name: str, started: float) -> None:
    print(f"{name}: {time.monotonic() - started:.1f} s")  # shown with pytest -s


@pytest.fixture(scope="session")
async def node_image(real_node):
    """The Spark image imported into the node's containerd once per session; its reference."""
    image = spark_image()
    name, _, tag = image.containerd_name.rpartition(":")
    started = time.monotonic()
    ref = await real_node.import_image(image.archive, name, tag=tag)
    timed("Spark image import", started)
    async with await real_node.api_client("admin") as admin:
        await apply_rbac(admin, real_node.namespace)
    return ref


def container_logs(real_node, pod_prefix: str) -> str:
    """The end of the container logs (tests/kube_node.py's `log_dir`) of pods named `pod_prefix`*."""
    logs = sorted(real_node.log_dir.glob(f"{real_node.namespace}_{pod_prefix}*/*/*.log"))
    return "".join(f"\n== {f}:\n{f.read_text(errors='replace')[-2000:]}" for f in logs[-3:])


async def master_pod(core, namespace: str, timeout: float = 180, real_node=None) -> dict:
    """The master Deployment's pod once it is ready (its readiness probe answered); on a
    timeout the master's container logs are shown."""
    async def ready():
        pods = (await core.list_namespaced_pod(namespace, label_selector=MASTER_PODS)).items
        for pod in pods:
            conditions = pod.status.conditions or ()
            if not pod.metadata.deletion_timestamp and any(
                    c.type == "Ready" and c.status == "True" for c in conditions):
                return core.api_client.sanitize_for_serialization(pod)
        return None

    try:
        return await until(ready, timeout=timeout, what="the master pod to be ready", interval=0.5)
    except AssertionError as e:
        raise AssertionError(f"{e}{container_logs(real_node, MASTER) if real_node else ''}") from None


async def delete_master(apps, core, namespace: str) -> None:
    """Delete the master Deployment (its ReplicaSet and pods go with it) and its Services; wait
    until the Deployment is gone and its pods' deletion requested (their final removal is the
    kubelet's: tests/kube_node.py)."""
    try:
        await apps.delete_namespaced_deployment(MASTER, namespace, propagation_policy="Foreground")
    except ApiException as e:
        if e.status != 404:
            raise

    async def gone():
        pods = (await core.list_namespaced_pod(namespace, label_selector=MASTER_PODS)).items
        deployments = (await apps.list_namespaced_deployment(namespace, label_selector=MASTER_PODS)).items
        return not deployments and all(p.metadata.deletion_timestamp for p in pods)

    # the Deployment itself too: one still being deleted would be adopted by manage_master
    await until(gone, timeout=60, what="the master Deployment and its pods to be deleted", interval=0.5)
    for service in master_services(name=MASTER, namespace=namespace):
        try:
            await core.delete_namespaced_service(service["metadata"]["name"], namespace)
        except ApiException as e:
            if e.status != 404:
                raise


@pytest.fixture(scope="module")
async def node_master(real_node, node_image):
    """The master applied as the deployment guide does (helm-values/spark-master.yaml's
    Deployment), from the Spark image; `url`, `ui` at its pod IP, `deployment`."""
    ns = real_node.namespace
    started = time.monotonic()
    async with await real_node.api_client("admin") as admin:
        apps, core = client.AppsV1Api(admin), client.CoreV1Api(admin)
        manifest = master_deployment(name=MASTER, namespace=ns, image=node_image, image_pull_policy="Never",
                                     run_as_user=KubernetesBackend.run_as_user.default_value, cpu="500m",
                                     default_cores=2)
        # the Services first, as when a master pod is replaced: the kubelet gives a new pod
        # the link variables of every Service in its namespace (unless enableServiceLinks is off)
        for service in master_services(name=MASTER, namespace=ns):
            await core.create_namespaced_service(ns, service)
        deployment = await apps.create_namespaced_deployment(ns, manifest)
        try:
            ip = (await master_pod(core, ns, real_node=real_node))["status"]["podIP"]
            timed("master up", started)
            yield SimpleNamespace(url=f"spark://{ip}:{MASTER_PORT}", master_url=f"spark://{ip}:{MASTER_PORT}",
                                  master_ui_url=f"http://{ip}:{MASTER_UI_PORT}", ip=ip, deployment=deployment)
        finally:
            await delete_master(apps, core, ns)


@pytest.fixture
async def node_scaler(real_node, node_image, tmp_path):
    """`await node_scaler(master, idle_workers=1, ...)`: a Reconciler on a KubernetesBackend
    whose worker pods run the Spark image on the real node; at teardown its pods are deleted
    through the API."""
    backends = []

    async def make(master, *, backend_settings: dict | None = None, **policy):
        settings = {"cpu_limit": "1", "cpu_guarantee": "100m", "memory_limit": "1280Mi",
                    "stop_grace_period": 30, **(backend_settings or {})}
        backend = KubernetesBackend(
            kubeconfig=str(real_node.kubeconfig(SCALER_USER)), namespace=real_node.namespace,
            pool=f"n{next(_pools)}", image=node_image, image_pull_policy="Never",
            master_url=master.master_url, master_ui_url=master.master_ui_url, **settings)
        await backend.setup()
        backends.append(backend)
        return make_reconciler(backend, master, **policy)

    yield make
    async with await real_node.api_client("admin") as admin:
        core = client.CoreV1Api(admin)
        for backend in backends:
            await backend.shutdown()
            await core.delete_collection_namespaced_pod(real_node.namespace,
                                                        label_selector=pool_selector(backend.pool),
                                                        grace_period_seconds=1)


@pytest.fixture
def node_drivers(real_node, tmp_path):
    """`node_drivers(master, name, *args)`: busy drivers on the host, bound to the node's host
    address; every one is killed at teardown."""
    started: list[Driver] = []

    def start(master, name: str, *args: str) -> Driver:
        driver = Driver(tmp_path / f"driver-{name}", ["--master", master.url, "--name", name,
                                                      "--driver-host", real_node.host_address, *args])
        started.append(driver)
        return driver

    yield start
    for driver in started:
        driver.kill()


async def registered_on(app: dict, hosts: set[str]) -> bool:
    """Whether the driver (`app`: its app.json) has an active executor on each of `hosts`."""
    url = f"{app['ui']}/api/v1/applications/{app['app_id']}/executors"
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
            async with http.get(url) as response:
                executors = await response.json()
    except (aiohttp.ClientError, asyncio.TimeoutError):
        return False  # a busy driver's UI can be slow to answer: ask again
    return hosts <= {e["hostPort"].rpartition(":")[0] for e in executors if e["id"] != "driver"}


async def test_workers_retired_under_a_running_driver_lose_no_executor(
        real_node, node_master, node_scaler, node_drivers):
    """The guarantee on the real node: a driver running an RDD lambda and a Python UDF on
    executors in worker pods; workers it took after the plan to retire them was made are
    decommissioned: no executor lost, no task failed, every result right."""
    started = time.monotonic()
    r = await node_scaler(node_master, idle_workers=1)
    steady = node_drivers(node_master, "node-steady", "--cores-max", "1", "--task-seconds", "1", "--udf")
    bursty = node_drivers(node_master, "node-bursty", *BURSTY, "--udf")
    await steady.started()
    app = await bursty.started()

    async def carry_out(r, decided, snapshot):
        """Retire once the burst's executors on the chosen workers have registered with their
        driver. Retired sooner, while an executor still starts (its JVM takes seconds in a pod
        on a busy node), the master tells the driver of an executor it does not know yet, the
        driver drops that, and the executor is never drained: Spark's gap, not tested here."""
        chosen = {w.backend.host for w in snapshot.workers if w.handle in decided.retire}
        await until(lambda: registered_on(app, chosen), timeout=90, interval=0.5,
                    what="the burst's executors on the chosen workers to register with the driver")
        await r.act(decided, snapshot)

    retired = await race_rounds(r, bursty, rounds=2, kill=carry_out)
    assert len(retired) == 4
    steady_result, bursty_result = await steady.result(), await bursty.result()
    drained = [e for e in bursty_result["executors"] if "decommission" in e["reason"].lower()]
    assert len(drained) >= 4, "every retired worker was running the burst's executor"
    for result in (steady_result, bursty_result):
        assert result["jobs"] > 0 and result["wrong_results"] == 0, result
        assert lost_executors(result) == [], result
        assert result["tasks_failed"] == 0 and result["jobs_failed"] == 0, result
        for executor in result["executors"]:  # executors ran in the worker pods, at their pod IPs
            host = ipaddress.ip_address(executor["host"].rpartition(":")[0])
            assert host in real_node.subnet and str(host) not in (real_node.host_address, node_master.ip)
    timed("guarantee", started)


async def test_a_worker_over_its_memory_limit_is_oom_killed_reported_and_replaced(
        real_node, node_master, node_scaler):
    """The worker JVM told to touch a heap larger than its pod's limit (an admin's
    modify_pod_hook setting SPARK_DAEMON_MEMORY above memory_limit): the kernel kills it in
    the pod's cgroup, the runtime reports OOMKilled, and the scaler says so and starts
    another pod."""
    started = time.monotonic()

    def heap_over_the_limit(backend, pod: dict) -> dict:
        """past the daemon_memory check, as only a hook can (extra_env may not name it)"""
        (container,) = pod["spec"]["containers"]
        container["env"] = [v for v in container["env"] if v["name"] != "SPARK_DAEMON_MEMORY"] + [
            {"name": "SPARK_DAEMON_MEMORY", "value": "2g"},
            {"name": "SPARK_DAEMON_JAVA_OPTS", "value": "-Xms2g -XX:+AlwaysPreTouch"}]
        return pod

    r = await node_scaler(node_master, idle_workers=1, backend_settings={
        "memory_limit": "900Mi", "modify_pod_hook": heap_over_the_limit})

    def oom_stops() -> dict[tuple[str, ...], str]:
        """The stop decisions that name OOMKilled: their workers -> their words."""
        words = {d.handles: f"{d.detail} {' '.join(d.reasons)}" for d in r.decisions if d.action == "stop"}
        return {handles: text for handles, text in words.items() if "OOMKilled" in text}

    await cycles_until(r, lambda s: len(oom_stops()) >= 2, timeout=240,
                       what="two worker pods lost to OOMKilled")
    print("stopped:", oom_stops())
    assert all("lost (OOMKilled: exit code 137)" in text for text in oom_stops().values()), oom_stops()
    assert [d.action for d in r.decisions].count("start") >= 2, "the lost worker was replaced"
    timed("OOMKilled", started)


async def test_an_admins_delete_of_a_busy_worker_pod_drains_it_before_sigterm(
        real_node, node_master, node_scaler, node_drivers):
    """`kubectl delete pod` of a worker an app runs on (as a node drain does): the real
    kubelet runs the pod's preStop hook, which decommissions the worker (SIGPWR to its PID 1)
    and waits until the executor has left; only then does PID 1 get SIGTERM. The app loses
    no executor and no task."""
    started = time.monotonic()
    # a bound well above the 2-4 s a drain took, for a loaded machine
    r = await node_scaler(node_master, idle_workers=1, backend_settings={"pod_drain_timeout": 120})
    # two executors: the one that leaves moves its shuffle blocks to the other (an app's only
    # executor has no peer to take them, and waits out the hook's bound: reliability.md)
    driver = node_drivers(node_master, "node-deleted", "--cores-max", "2", "--task-seconds", "1", "--udf")
    app = await driver.started()
    await cycles_until(r, idle_and_busy(1, 2), timeout=240, what="two busy workers and an idle one")
    busy = next(w for w in r.last_snapshot.workers if w.state.value == "busy")
    # an executor still starting misses its worker's decommission (Spark's gap: reliability.md)
    await until(lambda: registered_on(app, {busy.backend.host}), timeout=90, interval=0.5,
                what="the executor to register with its driver")
    async with await real_node.api_client("admin") as admin:
        core = client.CoreV1Api(admin)
        pod = await core.read_namespaced_pod(busy.handle, real_node.namespace)
        assert pod.spec.termination_grace_period_seconds == 120 + 30
        # the log files go with the pod, a second after its container ends: follow them
        with PodLogFollower(real_node, busy.handle) as worker_log:
            await core.delete_namespaced_pod(busy.handle, real_node.namespace)  # the pod's own grace period

            async def ended():
                await r.cycle()  # the scaler goes on meanwhile (and replaces the worker)
                log = worker_log.text()
                return log if "RECEIVED SIGNAL TERM" in log else None

            try:
                log = await until(ended, timeout=160, interval=1, what="the worker's PID 1 to get SIGTERM")
            except WaitTimeout as timeout:
                raise WaitTimeout(f"{timeout}; its log:\n{worker_log.text()[-3000:]}") from None
    done = driver.jobs()
    await driver.jobs_done(done + 2, timeout=120)  # it goes on, on the other worker
    result = await driver.result()
    # the hook's SIGPWR decommissioned the busy worker (the scaler does not retire a busy
    # one), its executor finished, and only then came SIGTERM
    assert -1 < log.find("Decommission worker") < log.find("finished with state EXITED") \
        < log.find("RECEIVED SIGNAL TERM"), log[-3000:]
    on_deleted = [e for e in result["executors"] if e["host"].rpartition(":")[0] == busy.backend.host]
    assert on_deleted and all("decommission" in e["reason"].lower() for e in on_deleted), on_deleted
    assert lost_executors(result) == [], result
    assert result["tasks_failed"] == 0 and result["wrong_results"] == 0, result
    timed("deleted busy worker", started)


NOTEBOOK_CELL = """
import json, socket, sys
from pyspark.sql import SparkSession
from pyspark.sql.functions import udf

spark = SparkSession.builder.getOrCreate()  # everything else from the image and spark-defaults.conf
sc = spark.sparkContext
python = udf(lambda i: f"{i}:{sys.version_info[0]}.{sys.version_info[1]}:{socket.gethostname()}")
rows = [r.v for r in spark.range(16).repartition(4).select(python("id").alias("v")).collect()]
squares = sc.parallelize(range(1000), 4).map(lambda x: x * x).sum()
print("RESULT " + json.dumps({
    "udf": rows, "squares": squares, "user": sc.sparkUser(), "app_id": sc.applicationId,
    "python": f"{sys.version_info[0]}.{sys.version_info[1]}",
    "conf": dict(sc.getConf().getAll())}), flush=True)
spark.stop()
"""


async def test_a_notebook_pod_of_the_image_runs_udfs_and_rdd_lambdas_on_the_worker_pods(
        real_node, cluster_dns, node_master, node_image, node_scaler):  # noqa: F811  (a fixture)
    """The image as the notebook's Spark runtime: a driver in a pod set up as z2jh's singleuser
    pod is by helm-values/values.yaml (uid 1000, the values' env and spark-defaults.conf, the hub
    user's SPARK_SUBMIT_OPTS) runs a Python UDF and an RDD lambda on executors in worker pods of
    the same image: the same Python on both sides (no PYTHON_VERSION_MISMATCH), the values'
    cores cap, and the app under the hub user's name."""
    started = time.monotonic()
    # the backend's default limit: a worker holds an executor of Spark's default 1g (1280Mi gives 614 MiB)
    r = await node_scaler(node_master, idle_workers=1, backend_settings={
        "memory_limit": KubernetesBackend.memory_limit.default_value})
    await cycles_until(r, idle_and_busy(1, 0), timeout=240, what="an idle worker ALIVE")
    workers = {w.handle for w in r.last_snapshot.workers}
    hub_user = "zoë.o'neil"
    # the values' spark.master: the master's Service, by name
    assert values_master_url() == master_url(MASTER, real_node.namespace)
    result = await run_cell(real_node, image=node_image, name="notebook-zoe", cell=NOTEBOOK_CELL,
                            hub_user=hub_user)
    assert result["squares"] == sum(x * x for x in range(1000))
    ids, pythons, hosts = zip(*(v.split(":") for v in result["udf"]))
    assert sorted(map(int, ids)) == list(range(16))
    assert set(pythons) == {result["python"]}, "the workers' Python is the notebook's"
    assert set(hosts) <= workers, hosts  # the worker pods' names
    assert result["conf"]["spark.cores.max"] == "4" and result["conf"]["spark.decommission.enabled"] == "true"
    assert ipaddress.ip_address(result["conf"]["spark.driver.host"]) in real_node.subnet  # its pod IP
    assert result["user"] == "jovyan", "the driver runs as singleuser.uid, the image's jovyan"
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
        async with http.get(f"{node_master.master_ui_url}/json/") as response:
            apps = (await response.json(content_type=None))["completedapps"]
    assert [a["user"] for a in apps if a["id"] == result["app_id"]] == [hub_user], apps
    timed("notebook pod", started)


# last in the module: it deletes the applied master (node_master), whose name the managed one takes
async def test_the_managed_master_comes_up_and_its_deletion_collects_the_workers(
        real_node, node_image):
    """manage_master: the scaler creates the master Deployment, the real controller and
    scheduler bring it up (its readiness probe answers), a worker joins it, and deleting the
    Deployment garbage-collects the worker pods it owns."""
    ns = real_node.namespace
    started = time.monotonic()
    async with await real_node.api_client("admin") as admin:
        apps, core = client.AppsV1Api(admin), client.CoreV1Api(admin)
        await delete_master(apps, core, ns)  # the applied one: the managed master has its name
        await apply_rbac(admin, ns, "rbac-manage-master.yaml")
        backend = KubernetesBackend(
            kubeconfig=str(real_node.kubeconfig(SCALER_USER)), namespace=ns, pool=f"n{next(_pools)}",
            image=node_image, image_pull_policy="Never", manage_master=True, master_memory="1Gi",
            cpu_limit="1", cpu_guarantee="100m", memory_limit="1280Mi", stop_grace_period=30)
        try:
            await backend.setup()
            ip = (await master_pod(core, ns, real_node=real_node))["status"]["podIP"]
            timed("managed master ready", started)
            # the pod IP, as the module's other workers (the Service's name: test_real_node_master_replaced)
            backend.master_url = f"spark://{ip}:{MASTER_PORT}"
            master = SimpleNamespace(master_ui_url=f"http://{ip}:{MASTER_UI_PORT}")
            r = make_reconciler(backend, master, idle_workers=1)
            await cycles_until(r, idle_and_busy(1, 0), timeout=180,
                               what="a worker ALIVE at the managed master")
            (pod,) = (await core.list_namespaced_pod(ns, label_selector=pool_selector(backend.pool))).items
            assert pod.metadata.owner_references[0].kind == "Deployment"
            assert pod.metadata.owner_references[0].name == MASTER

            await apps.delete_namespaced_deployment(MASTER, ns, propagation_policy="Background")

            async def collected():
                pods = (await core.list_namespaced_pod(ns, label_selector=pool_selector(backend.pool))).items
                return all(p.metadata.deletion_timestamp for p in pods)

            await until(collected, timeout=90, what="the worker pod to be garbage-collected", interval=0.5)
            with_policy(r, idle_workers=0)
        finally:
            await backend.shutdown()
            await delete_master(apps, core, ns)
            await core.delete_collection_namespaced_pod(ns, label_selector=pool_selector(backend.pool),
                                                        grace_period_seconds=1)
    timed("managed master", started)
