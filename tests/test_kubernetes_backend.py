"""The Kubernetes backend against a real kube-apiserver (v1.20.2, built from Debian's
source) with real Spark workers: the test kubelet (tests/kubelet.py) runs each worker
pod as a real Spark worker process on its own 127.0.2.x pod IP.

The scaler authenticates as z2jh's hub service account (system:serviceaccount:jhub:hub)
holding only the Role from helm-values/rbac.yaml. Each test has a pool of its own, so
tests never see each other's pods.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import subprocess
import sys
from pathlib import Path

import pytest
from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

from jhub_spark_scaler.backends import BackendError
from jhub_spark_scaler.backends.kubernetes import KubernetesBackend
from jhub_spark_scaler.backends.master_manifests import master_deployment, master_services
from jhub_spark_scaler.backends.worker_pod import ANNOTATION_RETIRING, pool_labels, pool_selector
from jhub_spark_scaler.errors import ConfigError
from jhub_spark_scaler.model import WorkerState
from jhub_spark_scaler.policy import explain
from jhub_spark_scaler.reconciler import Reconciler

from .conftest import lost_executors
from .waiting import always, until
from .test_scaling import cycles_until, idle_and_busy, never_loses_an_executor, make_reconciler, with_policy

pytestmark = pytest.mark.spark

NAMESPACE = "spark"
SCALER_USER = "hub"  # kube_cluster token user system:serviceaccount:jhub:hub
_pools = itertools.count(1)


async def pods_of(kube_cluster, pool: str) -> list[dict]:
    """The pool's pods as the apiserver has them (read as admin, not through the cache)."""
    async with await kube_cluster.api_client("admin") as api_client:
        listed = await client.CoreV1Api(api_client).list_namespaced_pod(
            NAMESPACE, label_selector=pool_selector(pool))
        return [api_client.sanitize_for_serialization(p) for p in listed.items]


@pytest.fixture
async def make_kube_scaler(kube_cluster, kube_rbac, kubelet, spark_master):
    """`await make_kube_scaler(idle_workers=2, ...)`: a Reconciler on a KubernetesBackend
    with a pool of its own; pass `pool=` to reuse one (a restarted scaler)."""
    backends = []

    async def make(*, pool: str | None = None, start_timeout: float = 120, user: str = SCALER_USER,
                   backend_settings: dict | None = None, **policy) -> Reconciler:
        backend = KubernetesBackend(
            kubeconfig=str(kube_cluster.kubeconfig(user)),
            namespace=NAMESPACE,
            pool=pool or f"t{next(_pools)}",
            master_url=spark_master.master_url,
            master_ui_url=spark_master.master_ui_url,
            cpu_limit="1",
            memory_limit="1280Mi",
            stop_grace_period=10,
            **(backend_settings or {}),
        )
        await backend.setup()
        backends.append(backend)
        return make_reconciler(backend, spark_master, start_timeout=start_timeout, **policy)

    yield make
    async with await kube_cluster.api_client("admin") as admin:
        core = client.CoreV1Api(admin)
        for backend in backends:
            await backend.shutdown()
            await core.delete_collection_namespaced_pod(NAMESPACE, label_selector=pool_selector(backend.pool))

    async def all_gone():
        for backend in backends:
            if await pods_of(kube_cluster, backend.pool):
                return False
        return True

    await until(all_gone, timeout=60, what="the test's pods to be removed")


async def test_scale_out_to_a_plus_i_then_in(make_kube_scaler, kube_cluster, kube_rbac, kubelet, drivers):
    r = await make_kube_scaler(idle_workers=2)
    await cycles_until(r, idle_and_busy(2, 0), timeout=90, what="2 idle worker pods")
    pods = await pods_of(kube_cluster, r.backend.pool)
    assert len(pods) == 2
    for pod in pods:  # the container's process is the JVM itself: no shell left to swallow SIGTERM
        pid = kubelet.pid(pod["metadata"]["name"])
        assert Path(f"/proc/{pid}/exe").resolve().name == "java"
    master = await r.spark.master()
    alive = {m.host for m in master.workers if m.state == "ALIVE"}
    for pod in pods:
        assert pod["status"]["podIP"] in alive, "the master's host of a worker is its pod IP"
        (owner,) = pod["metadata"]["ownerReferences"]
        expected = ("Deployment", "spark-master", kube_rbac.metadata.uid)
        assert (owner["kind"], owner["name"], owner["uid"]) == expected

    app = drivers("kube-a-plus-i", "--cores-max", "1", "--task-seconds", "1")
    await app.started()
    await cycles_until(r, idle_and_busy(2, 1), timeout=120, what="A + I = 1 busy + 2 idle")
    assert not lost_executors(await app.result())

    with_policy(r, idle_workers=0)
    await cycles_until(r, lambda s: not s.workers, timeout=120, what="scale-in to no workers")
    assert await pods_of(kube_cluster, r.backend.pool) == []
    assert [d.action for d in r.decisions].count("retire") == 3


async def test_scale_in_never_loses_an_executor(make_kube_scaler, drivers):
    """The guarantee on Kubernetes: the same scenario as on the local backend."""
    await never_loses_an_executor(await make_kube_scaler(idle_workers=1), drivers, "kube")


async def test_restart_adopts_its_pods_only_and_resumes_drains(make_kube_scaler, kube_cluster, kubelet):
    first = await make_kube_scaler(idle_workers=2)
    await cycles_until(first, idle_and_busy(2, 0), timeout=90, what="2 idle worker pods")
    # a pod of another pool, and a pod without our labels: neither is ours
    other = await first.backend.new_pod()
    other["metadata"]["labels"] = {**pool_labels("someone-else")}
    unlabelled = await first.backend.new_pod()
    unlabelled["metadata"]["labels"] = {"app": "not-spark"}
    async with await kube_cluster.api_client("admin") as admin:
        core = client.CoreV1Api(admin)
        for pod in (other, unlabelled):
            await core.create_namespaced_pod(NAMESPACE, pod)

    # retire one worker, and "die" before the master was told (mark only)
    retiring = first.last_snapshot.workers[0].backend
    await first.backend.decommission(retiring)
    await first.backend.shutdown()

    second = await make_kube_scaler(pool=first.backend.pool, idle_workers=1)
    adopted = {w.handle: w for w in await second.backend.list()}
    assert set(adopted) == {w.handle for w in first.last_snapshot.workers}
    assert adopted[retiring.handle].retiring_since is not None
    creates_before = second.backend.api.requests.get("create pods", 0)
    await cycles_until(second, lambda s: retiring.handle not in {w.handle for w in s.workers},
                       timeout=90, what="the interrupted drain to be resumed and the pod stopped")
    await cycles_until(second, idle_and_busy(1, 0), timeout=60, what="1 idle worker")
    assert second.backend.api.requests.get("create pods", 0) == creates_before, "no duplicate pods"
    async with await kube_cluster.api_client("admin") as admin:
        core = client.CoreV1Api(admin)
        names = {p.metadata.name for p in (await core.list_namespaced_pod(NAMESPACE)).items}
        for pod in (other, unlabelled):
            assert any(n.startswith(pod["metadata"]["generateName"]) for n in names)
        await core.delete_collection_namespaced_pod(NAMESPACE, label_selector="app=not-spark")
        await core.delete_collection_namespaced_pod(NAMESPACE, label_selector=pool_selector("someone-else"))


async def test_steady_state_costs_no_api_request(make_kube_scaler):
    r = await make_kube_scaler(idle_workers=1)
    await cycles_until(r, idle_and_busy(1, 0), timeout=90, what="1 idle worker pod")
    before = dict(r.backend.api.requests)
    for _ in range(20):
        decided = await r.cycle()
        assert not decided.acts
    assert r.backend.api.requests == before


async def test_apiserver_down_blind_then_converge(make_kube_scaler, kube_cluster):
    r = await make_kube_scaler(idle_workers=2)
    await cycles_until(r, idle_and_busy(2, 0), timeout=90, what="2 idle worker pods")
    kube_cluster.stop_apiserver()
    try:
        await cycles_until(r, lambda s: s.blind, timeout=30,
                           what="the scaler to notice the apiserver is down")
        with_policy(r, idle_workers=0)  # it would retire both, if it could see
        for _ in range(5):
            decided = await r.cycle()
            assert r.last_snapshot.blind and not decided.acts
    finally:
        await kube_cluster.start_apiserver()
    assert "retire" not in [d.action for d in r.decisions]
    await cycles_until(r, lambda s: not s.workers, timeout=120, what="scale-in after the apiserver returns")
    assert "seeing" in [d.action for d in r.decisions]


async def test_expired_watch_lists_again(make_kube_scaler, kube_cluster):
    """410 Gone: the watch's resourceVersion was compacted away while the watch was renewed."""
    r = await make_kube_scaler(idle_workers=1, backend_settings={"watch_timeout": 1})
    await cycles_until(r, idle_and_busy(1, 0), timeout=90, what="1 idle worker pod")
    cache = r.backend.cache
    lists = cache.stats["lists"]
    # writes the cache does not watch, then compaction: its resourceVersion is gone for good
    async with await kube_cluster.api_client("admin") as admin:
        for i in range(2):
            await client.CoreV1Api(admin).create_namespaced_config_map(
                NAMESPACE, {"metadata": {"generateName": "bump-"}, "data": {"n": str(i)}})
    kube_cluster.compact_etcd()
    await until(lambda: cache.stats["gone"], timeout=30, what="the watch to answer 410 Gone")
    await until(lambda: cache.stats["lists"] > lists and not cache.error, timeout=30, what="a new list")
    with_policy(r, idle_workers=2)
    await cycles_until(r, idle_and_busy(2, 0), timeout=90, what="2 idle workers after the re-list")


async def test_missing_rbac_is_one_clear_error(kube_cluster, kube_rbac, spark_master, tmp_path):
    backend = KubernetesBackend(kubeconfig=str(kube_cluster.kubeconfig("spark-scaler")), namespace=NAMESPACE,
                                master_url=spark_master.master_url)
    with pytest.raises(ConfigError) as raised:
        await backend.setup()
    message = str(raised.value)
    assert "\n" not in message
    assert message.startswith("missing RBAC permissions in namespace 'spark': list pods, watch pods, "
                              "create pods, patch pods, delete pods, list events, "
                              "get deployments/spark-master")
    # the command line says the same in one line and exits 2
    done = subprocess.run(
        [sys.executable, "-m", "jhub_spark_scaler", "--backend=kubernetes", "--max-workers=2",
         f"--KubernetesBackend.kubeconfig={kube_cluster.kubeconfig('spark-scaler')}",
         f"--KubernetesBackend.namespace={NAMESPACE}", f"--master-ui-url={spark_master.master_ui_url}"],
        capture_output=True, text=True, timeout=60, cwd=tmp_path,
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1] == f"jhub-spark-scaler: error: {message}"


async def test_unschedulable_pods_are_reported_removed_and_bounded(make_kube_scaler, kube_cluster, kubelet):
    kubelet.mode = "unschedulable"
    r = await make_kube_scaler(idle_workers=3, max_workers=3, start_timeout=3, unschedulable_backoff=600)
    most, seen = 0, []

    async def reported_and_removed():
        nonlocal most
        await r.cycle()
        pods = await pods_of(kube_cluster, r.backend.pool)
        most = max(most, len(pods))
        seen.extend(w.why for w in r.last_snapshot.workers if w.state is WorkerState.UNSCHEDULABLE)
        return seen and not pods

    await until(reported_and_removed, timeout=60, what="the pending pods to be reported and removed",
                interval=0.5)
    assert most <= 3
    assert any("Unschedulable: 0/1 nodes are available" in why for why in seen), seen
    # removed, then not replaced: scale-up is paused
    for _ in range(5):
        decided = await r.cycle()
        assert decided.start == 0
    assert r.backend.api.requests["create pods"] == 3
    assert any("scale-up paused" in reason for reason in explain(r.last_plan))


async def test_image_pull_errors_carry_the_pods_reason(make_kube_scaler, kubelet):
    kubelet.mode = "image-pull-error"
    r = await make_kube_scaler(idle_workers=1, max_workers=1, start_timeout=3)

    async def reported():
        await r.cycle()
        return [w.why for w in r.last_snapshot.workers if "ErrImagePull" in w.why]

    (why,) = await until(reported, timeout=30, what="the image pull error in the pool")
    assert "apache/spark:4.3.0" in why


async def test_manifests_pass_server_side_dry_run(make_kube_scaler, kube_cluster):
    async def modify_pod_hook(backend, pod):
        pod["spec"]["priorityClassName"] = "system-node-critical"  # a field no setting covers
        return pod

    r = await make_kube_scaler(idle_workers=0, backend_settings=dict(
        image_pull_secrets=["regcred"], node_selector={"pool": "spark"},
        tolerations=[{"key": "spark", "operator": "Exists", "effect": "NoSchedule"}],
        extra_env={"EXTRA": "1"}, extra_labels={"team": "a"}, extra_annotations={"note": "x"},
        modify_pod_hook=modify_pod_hook,
    ))
    pod = await r.backend.new_pod()
    created = await r.backend.api.create_pod(pod, dry_run=True)
    assert created["metadata"]["name"].startswith("spark-worker-")
    assert created["spec"]["priorityClassName"] == "system-node-critical"
    assert created["metadata"]["labels"]["team"] == "a"
    assert await pods_of(kube_cluster, r.backend.pool) == [], "a dry run creates nothing"
    from jhub_spark_scaler.backends.kube_api import KubeApi

    async with await kube_cluster.api_client("admin") as admin:
        api = KubeApi(admin, NAMESPACE)
        for manifest in [master_deployment(name="dry", namespace=NAMESPACE, image="apache/spark:4.3.0",
                                           run_as_user=185, default_cores=2),
                         *master_services(name="dry", namespace=NAMESPACE)]:
            assert (await api.create(manifest, dry_run=True))["kind"] == manifest["kind"]


async def test_manage_master_creates_once_then_adopts(kube_cluster, spark_master):
    """manage_master: the Deployment and both Services are created when missing and
    adopted (not replaced, workers untouched) when they exist."""
    def backend() -> KubernetesBackend:
        return KubernetesBackend(kubeconfig=str(kube_cluster.kubeconfig("admin")), namespace=NAMESPACE,
                                 manage_master=True, master_name="managed", pool="managed")

    first = backend()
    await first.setup()
    assert first.master_url == "spark://managed.spark.svc:7077"
    await first.shutdown()
    async with await kube_cluster.api_client("admin") as admin:
        apps, core = client.AppsV1Api(admin), client.CoreV1Api(admin)
        uid = (await apps.read_namespaced_deployment("managed", NAMESPACE)).metadata.uid
        services = {(await core.read_namespaced_service(n, NAMESPACE)).spec.ports[0].port
                    for n in ("managed", "managed-ui")}
        assert services == {7077, 8080}
        second = backend()
        await second.setup()
        await second.shutdown()
        assert (await apps.read_namespaced_deployment("managed", NAMESPACE)).metadata.uid == uid
        await apps.delete_namespaced_deployment("managed", NAMESPACE)
        for n in ("managed", "managed-ui"):
            await core.delete_namespaced_service(n, NAMESPACE)


async def test_manage_master_waits_until_a_master_being_deleted_is_gone(kube_cluster):
    """A master Deployment being deleted (held here by a finalizer, as a foreground deletion
    holds it until its pods are gone) is not adopted: with its owner about to go, every new
    worker pod would be garbage-collected with it. The scaler waits, then creates a new one;
    if it is still there after setup_timeout, setup stops with one line naming the setting."""
    name, hold = "managed-deleting", "jhub-spark-scaler.test/hold"

    def backend(setup_timeout: float) -> KubernetesBackend:
        return KubernetesBackend(kubeconfig=str(kube_cluster.kubeconfig("admin")), namespace=NAMESPACE,
                                 manage_master=True, master_name=name, pool=name, setup_timeout=setup_timeout)

    async with await kube_cluster.api_client("admin") as admin:
        apps, core = client.AppsV1Api(admin), client.CoreV1Api(admin)
        old = master_deployment(name=name, namespace=NAMESPACE, image="spark", run_as_user=185,
                                default_cores=2)
        old["metadata"]["finalizers"] = [hold]
        old_uid = (await apps.create_namespaced_deployment(NAMESPACE, old)).metadata.uid
        try:
            await apps.delete_namespaced_deployment(name, NAMESPACE)
            with pytest.raises(BackendError, match=r"Deployment managed-deleting is being deleted .*"
                                                   r"raise KubernetesBackend.setup_timeout"):
                await backend(setup_timeout=1).setup()

            waiting = backend(setup_timeout=60)
            setup = asyncio.ensure_future(waiting.setup())
            await always(lambda: not setup.done(), seconds=2, what="setup waiting for the old master to go")
            await apps.patch_namespaced_deployment(name, NAMESPACE, {"metadata": {"finalizers": None}})
            await asyncio.wait_for(setup, timeout=30)
            await waiting.shutdown()
            new = await apps.read_namespaced_deployment(name, NAMESPACE)
            assert new.metadata.uid != old_uid and not new.metadata.deletion_timestamp
        finally:
            with contextlib.suppress(ApiException):  # whichever Deployment is there, if any
                await apps.patch_namespaced_deployment(name, NAMESPACE, {"metadata": {"finalizers": None}})
                await apps.delete_namespaced_deployment(name, NAMESPACE)
            for service in master_services(name=name, namespace=NAMESPACE):
                with contextlib.suppress(ApiException):
                    await core.delete_namespaced_service(service["metadata"]["name"], NAMESPACE)


async def test_retiring_mark_is_an_annotation(make_kube_scaler, kube_cluster):
    r = await make_kube_scaler(idle_workers=1)
    await cycles_until(r, idle_and_busy(1, 0), timeout=90, what="1 idle worker pod")
    worker = r.last_snapshot.workers[0].backend
    await r.backend.decommission(worker)
    (pod,) = await pods_of(kube_cluster, r.backend.pool)
    assert float(pod["metadata"]["annotations"][ANNOTATION_RETIRING]) > 0
    with_policy(r, idle_workers=0)
    await cycles_until(r, lambda s: not s.workers, timeout=90, what="the marked worker to be stopped")
