"""The Kubernetes test infrastructure itself: a real kube-apiserver with RBAC
(tests/kube_cluster.py) and the test kubelet running real Spark worker pods (tests/kubelet.py)."""

from __future__ import annotations

import asyncio
import json
import os
import urllib.request

import aiohttp
import pytest
from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

from .waiting import until
from .kubelet import expand

pytestmark = pytest.mark.timeout(240)
NS = "spark"


def worker_pod(master_url: str) -> dict:
    """A Spark worker pod as the Kubernetes backend creates it."""
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"generateName": "spark-worker-", "namespace": NS, "labels": {
            "app.kubernetes.io/name": "spark-worker",
            "app.kubernetes.io/managed-by": "jhub-spark-scaler", "jhub-spark-scaler/pool": "default"}},
        "spec": {
            "restartPolicy": "Never", "automountServiceAccountToken": False,
            "terminationGracePeriodSeconds": 30,
            "volumes": [{"name": "work", "emptyDir": {}}],
            "containers": [{
                "name": "spark-worker", "image": "apache/spark:4.0.1",
                "command": ["/opt/spark/bin/spark-class", "org.apache.spark.deploy.worker.Worker",
                            "--host", "$(SPARK_WORKER_HOST)", "--port", "7078", "--webui-port", "8081",
                            "--cores", "1", "--memory", "512m", master_url],
                "env": [
                    {"name": "SPARK_WORKER_HOST", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                    {"name": "SPARK_LOCAL_IP", "value": "$(SPARK_WORKER_HOST)"},
                    {"name": "SPARK_WORKER_DIR", "value": "/spark-work"},
                    {"name": "SPARK_DAEMON_MEMORY", "value": "256m"},
                    {"name": "SPARK_WORKER_OPTS", "value": "-Dspark.decommission.enabled=true"},
                ],
                "resources": {"requests": {"cpu": "1", "memory": "1Gi"},
                              "limits": {"cpu": "1", "memory": "1Gi"}},
                "volumeMounts": [{"name": "work", "mountPath": "/spark-work"}],
                "ports": [{"name": "spark-worker", "containerPort": 7078},
                          {"name": "worker-ui", "containerPort": 8081}],
            }],
        },
    }


def sleep_pod() -> dict:
    """A cheap pod: `sleep` from the host's PATH."""
    return {"metadata": {"generateName": "sleeper-"}, "spec": {
        "restartPolicy": "Never", "automountServiceAccountToken": False,
        "containers": [{"name": "sleep", "image": "busybox:1.36", "command": ["sleep", "600"]}]}}


async def read_pod(core: client.CoreV1Api, name: str) -> client.V1Pod | None:
    try:
        return await core.read_namespaced_pod(name, NS)
    except ApiException as e:
        if e.status == 404:
            return None
        raise


async def deleted(core: client.CoreV1Api, name: str) -> bool:
    return await read_pod(core, name) is None


async def phase(core: client.CoreV1Api, name: str, wanted: str) -> client.V1Pod | None:
    pod = await read_pod(core, name)
    return pod if pod and pod.status.phase == wanted else None


async def alive_hosts(spark_master) -> set[str]:
    def get():
        with urllib.request.urlopen(f"{spark_master.master_ui_url}/json/", timeout=10) as r:
            return json.load(r)

    return {w["host"] for w in (await asyncio.to_thread(get))["workers"] if w["state"] == "ALIVE"}


def test_expand_like_a_kubelet():
    env = {"A": "1", "B": "x"}
    assert expand("$(A)-$(B)/$(C) $$(A) $$$(A) $(A $", env) == "1-x/$(C) $(A) $1 $(A $"


async def test_rbac_denies_the_scaler_until_a_role_is_bound(kube_cluster):
    async with await kube_cluster.api_client("spark-scaler") as api:
        with pytest.raises(ApiException) as denied:
            await client.CoreV1Api(api).list_namespaced_pod(NS)
        assert denied.value.status == 403
        async with await kube_cluster.api_client("admin") as admin:
            rbac = client.RbacAuthorizationV1Api(admin)
            await rbac.create_namespaced_role(NS, {"metadata": {"name": "pod-reader"}, "rules": [
                {"apiGroups": [""], "resources": ["pods"], "verbs": ["list"]}]})
            await rbac.create_namespaced_role_binding(NS, {
                "metadata": {"name": "pod-reader"},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "pod-reader"},
                "subjects": [{"kind": "ServiceAccount", "name": "spark-scaler", "namespace": NS}]})
            try:
                async def allowed():
                    try:
                        return await client.CoreV1Api(api).list_namespaced_pod(NS)
                    except ApiException as e:
                        assert e.status == 403
                        return None

                await until(allowed, timeout=10, what="the RoleBinding to take effect")
            finally:
                await rbac.delete_namespaced_role_binding("pod-reader", NS)
                await rbac.delete_namespaced_role("pod-reader", NS)


async def test_a_worker_pod_runs_a_real_spark_worker_until_deleted(kube_cluster, kubelet, spark_master):
    async with await kube_cluster.api_client("admin") as api:
        core = client.CoreV1Api(api)
        name = (await core.create_namespaced_pod(NS, worker_pod(spark_master.master_url))).metadata.name
        pod = await until(lambda: phase(core, name, "Running"), timeout=30, what="the pod to run")
        ip = pod.status.pod_ip
        assert ip.startswith("127.0.2.") and pod.spec.node_name == "test-node"
        assert [c.type for c in pod.status.conditions if c.status == "True"] == [
            "Initialized", "PodScheduled", "Ready", "ContainersReady"]

        async def alive(yes=True):
            return (ip in await alive_hosts(spark_master)) == yes

        await until(alive, timeout=90, what=f"an ALIVE worker at {ip} in the master")
        pid = kubelet.pid(name)
        assert pid

        await core.delete_namespaced_pod(name, NS, grace_period_seconds=20)
        await until(lambda: kubelet.pid(name) is None, timeout=25, what="the worker process to end")
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
        await until(lambda: deleted(core, name), timeout=10, what="the pod to be deleted")
        assert "RECEIVED SIGNAL TERM" in kubelet.pod(name).log_path.read_text()
        await until(lambda: alive(False), timeout=30, what="the master to lose the worker")


async def test_killed_process_fails_the_pod(kube_cluster, kubelet):
    async with await kube_cluster.api_client("admin") as api:
        core = client.CoreV1Api(api)
        name = (await core.create_namespaced_pod(NS, sleep_pod())).metadata.name
        await until(lambda: phase(core, name, "Running"), timeout=10, what="the pod to run")
        kubelet.kill(name)
        pod = await until(lambda: phase(core, name, "Failed"), timeout=10, what="the pod to fail")
        terminated = pod.status.container_statuses[0].state.terminated
        assert (terminated.exit_code, terminated.reason) == (137, "Error")
        await core.delete_namespaced_pod(name, NS)
        await until(lambda: deleted(core, name), timeout=10, what="the pod to be deleted")


@pytest.mark.parametrize("mode", ["unschedulable", "image-pull-error"])
async def test_pods_that_never_run(kube_cluster, kubelet, mode):
    kubelet.mode = mode
    async with await kube_cluster.api_client("admin") as api:
        core = client.CoreV1Api(api)
        name = (await core.create_namespaced_pod(NS, sleep_pod())).metadata.name

        async def stuck():
            pod = await read_pod(core, name)
            if mode == "unschedulable":
                scheduled = [c for c in pod.status.conditions or [] if c.type == "PodScheduled"]
                return pod if scheduled and scheduled[0].reason == "Unschedulable" else None
            return pod if pod.status.container_statuses else None

        pod = await until(stuck, timeout=10, what=f"the pod to be {mode}")
        assert pod.status.phase == "Pending" and kubelet.pid(name) is None
        if mode == "unschedulable":
            assert pod.spec.node_name is None
            assert pod.status.conditions[0].message == "0/1 nodes are available: 1 Insufficient cpu."
        else:
            waiting = pod.status.container_statuses[0].state.waiting
            assert waiting.reason == "ErrImagePull" and "busybox:1.36" in waiting.message
        await core.delete_namespaced_pod(name, NS, grace_period_seconds=30)
        await until(lambda: deleted(core, name), timeout=10, what="the pod to be deleted")


async def test_apiserver_restart_and_etcd_compaction(kube_cluster, kubelet):
    async with await kube_cluster.api_client("admin") as api:
        core = client.CoreV1Api(api)
        before = (await core.list_namespaced_pod(NS)).metadata.resource_version
        first = (await core.create_namespaced_pod(NS, sleep_pod())).metadata.name
        await until(lambda: phase(core, first, "Running"), timeout=10, what="the pod to run")

    kube_cluster.stop_apiserver()
    try:
        async with await kube_cluster.api_client("admin") as api:
            with pytest.raises(aiohttp.ClientConnectionError):
                await client.CoreV1Api(api).list_namespaced_pod(NS)
        kube_cluster.compact_etcd()
    finally:
        await kube_cluster.start_apiserver()

    async with await kube_cluster.api_client("admin") as api:
        core = client.CoreV1Api(api)
        resp = await core.list_namespaced_pod(NS, watch=True, resource_version=before, timeout_seconds=5,
                                              _preload_content=False)
        async with resp:  # 410 as the answer, or as the first event
            gone = resp.status if resp.status != 200 else json.loads(await resp.content.readline())["object"]
        assert gone == 410 or gone["code"] == 410, f"a watch from before the compaction is Gone: {gone}"

        name = (await core.create_namespaced_pod(NS, sleep_pod())).metadata.name
        await until(lambda: phase(core, name, "Running"), timeout=30, what="the kubelet to watch again")
        assert await phase(core, first, "Running") and kubelet.pid(first)
