"""Waiting for a node, against the real kube-apiserver (v1.20.2) and a real Spark master.

No kubelet and no scheduler run here: the pods stay Pending. The test does what the
scheduler and cluster-autoscaler do to them: it sets the pod's PodScheduled condition to
False (Unschedulable, the scheduler's words) and records core/v1 Events on the pod as
cluster-autoscaler's recorder records them (source component `cluster-autoscaler`,
involvedObject the pod with its uid, reason TriggeredScaleUp or NotTriggerScaleUp). The
scaler reads them with the Role of helm-values/rbac.yaml (events: list, nothing more).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from datetime import datetime, timezone

import pytest
from kubernetes_asyncio import client

from jhub_spark_scaler.backends.node_events import INTERVAL
from jhub_spark_scaler.model import NodeWait, WorkerState

from .test_kubernetes_backend import NAMESPACE, SCALER_USER, pods_of
from .test_node_wait import NOT_TRIGGERED, TRIGGERED
from .test_scaling import make_reconciler
from .waiting import until

pytestmark = pytest.mark.spark

S = WorkerState


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


async def unschedulable(core: client.CoreV1Api, pod: dict) -> None:
    """What kube-scheduler writes on a pod no node can take."""
    await core.patch_namespaced_pod_status(pod["metadata"]["name"], NAMESPACE, {"status": {"conditions": [{
        "type": "PodScheduled", "status": "False", "reason": "Unschedulable",
        "message": "0/3 nodes are available: 3 Insufficient cpu.", "lastTransitionTime": _now()}]}})


async def autoscaler_event(core: client.CoreV1Api, pod: dict, reason: str, message: str,
                           source: str = "cluster-autoscaler") -> None:
    """An Event on `pod` as cluster-autoscaler's recorder (client-go record) creates it."""
    name = pod["metadata"]["name"]
    await core.create_namespaced_event(NAMESPACE, {
        "metadata": {"name": f"{name}.{uuid.uuid4().hex[:16]}", "namespace": NAMESPACE},
        "involvedObject": {"kind": "Pod", "namespace": NAMESPACE, "name": name,
                           "uid": pod["metadata"]["uid"], "apiVersion": "v1",
                           "resourceVersion": pod["metadata"]["resourceVersion"]},
        "reason": reason, "message": message, "source": {"component": source}, "type": "Normal",
        "firstTimestamp": _now(), "lastTimestamp": _now(), "count": 1,
    })


@pytest.fixture
async def kube_backend(make_kube_backend, kube_cluster):
    """`make_kube_backend` (tests/conftest.py); the namespace's events are deleted at teardown too."""
    yield make_kube_backend
    async with await kube_cluster.api_client("admin") as admin:
        await client.CoreV1Api(admin).delete_collection_namespaced_event(NAMESPACE)


async def test_a_pod_a_node_is_added_for_waits_and_one_no_node_comes_for_is_unschedulable(
        kube_backend, kube_cluster, spark_master):
    backend = await kube_backend()
    r = make_reconciler(backend, spark_master, start_timeout=300, idle_workers=3, max_workers=3)
    await r.cycle()
    pods = {p["metadata"]["name"]: p for p in await pods_of(kube_cluster, backend.pool)}
    assert len(pods) == 3
    coming, never, silent = sorted(pods)
    async with await kube_cluster.api_client("admin") as admin:
        core = client.CoreV1Api(admin)
        for pod in pods.values():
            await unschedulable(core, pod)
        await autoscaler_event(core, pods[never], "TriggeredScaleUp", TRIGGERED)  # then its group failed:
        await asyncio.sleep(1.1)  # (event times are in seconds)
        await autoscaler_event(core, pods[never], "NotTriggerScaleUp", NOT_TRIGGERED)  # the latest word
        await autoscaler_event(core, pods[coming], "TriggeredScaleUp", TRIGGERED)
        # not the autoscaler's: ignored (the list asks for its events only)
        await autoscaler_event(core, pods[silent], "TriggeredScaleUp", TRIGGERED, source="someone-else")

    async def unplaced():
        return all(w.node is not NodeWait.NONE for w in backend.cache.values())

    await until(unplaced, timeout=30, what="the pods' PodScheduled=False in the cache")
    backend.node_events._read_at = float("-inf")  # the cycle above read no events: none was unplaced
    decided = await r.cycle()
    states = {w.handle: (w.state, w.why) for w in r.last_snapshot.workers}
    assert states[coming] == (S.STARTING, f"waiting for a node: {TRIGGERED}")
    assert states[never] == (S.UNSCHEDULABLE, "Unschedulable: 0/3 nodes are available: 3 Insufficient cpu.; "
                                              f"no node will be added: {NOT_TRIGGERED}")
    assert states[silent] == (S.STARTING, "Unschedulable: 0/3 nodes are available: 3 Insufficient cpu.")
    # only the pod no node comes for is removed; scale-up pauses; the waiting pod counts as starting
    assert decided.stop == (never,) and decided.start == 0

    async def deleted():
        names = sorted(p["metadata"]["name"] for p in await pods_of(kube_cluster, backend.pool))
        return names == [coming, silent]

    await until(deleted, timeout=30, what="the unschedulable pod to be deleted")
    for _ in range(3):
        decided = await r.cycle()
        assert decided.start == 0 and not decided.stop
    assert {w.handle: w.state for w in r.last_snapshot.workers} == {coming: S.STARTING, silent: S.STARTING}

    # the admin page, api/pool and the metrics say so (tests/test_node_wait.py)
    assert [w.handle for w in r.last_snapshot.workers if w.waiting_for_node] == [coming]

    # the node is there and the scheduler places the pod on it: its image is pulled, no longer
    # waiting for a node, still bounded by node_wait_timeout
    async with await kube_cluster.api_client("admin") as admin:
        scheduled = {"type": "PodScheduled", "status": "True", "lastTransitionTime": _now()}
        await client.CoreV1Api(admin).patch_namespaced_pod_status(
            coming, NAMESPACE, {"status": {"conditions": [scheduled]}})

    async def placed():
        await r.cycle()
        return next(w for w in r.last_snapshot.workers if w.handle == coming).backend.node is NodeWait.ADDED

    await until(placed, timeout=30, what="the placed pod to be seen on its added node")
    (w,) = [w for w in r.last_snapshot.workers if w.handle == coming]
    assert (w.state, w.why, w.waiting_for_node) == (S.STARTING, "", False)


async def test_reading_the_events_costs_one_list_per_interval_whatever_the_pool(
        kube_backend, kube_cluster, spark_master):
    backend = await kube_backend()
    r = make_reconciler(backend, spark_master, start_timeout=300, idle_workers=50, max_workers=50,
                        max_surge=50)
    await r.cycle()
    pods = await pods_of(kube_cluster, backend.pool)
    assert len(pods) == 50
    async with await kube_cluster.api_client("admin") as admin:
        core = client.CoreV1Api(admin)
        await asyncio.gather(*(unschedulable(core, p) for p in pods))
        await asyncio.gather(*(autoscaler_event(core, p, "TriggeredScaleUp", TRIGGERED) for p in pods))

    async def all_unplaced():
        return all(w.node is not NodeWait.NONE for w in backend.cache.values())

    await until(all_unplaced, timeout=60, what="50 unplaced pods in the cache")
    backend.node_events._read_at = float("-inf")
    before = dict(backend.api.requests)
    started = time.monotonic()
    cycles = 0
    while time.monotonic() - started < INTERVAL - 1:
        decided = await r.cycle()
        cycles += 1
        assert decided.start == 0 and not decided.stop
    spent = {k: v - before.get(k, 0) for k, v in backend.api.requests.items() if v != before.get(k, 0)}
    assert spent == {"list events": 1}, (cycles, spent)
    assert sum(w.state is S.STARTING and "waiting for a node" in w.why for w in r.last_snapshot.workers) == 50
    await asyncio.sleep(1.5)
    await r.cycle()
    assert backend.api.requests["list events"] - before.get("list events", 0) == 2
    logging.getLogger("test-node-wait").info("%d cycles with 50 unplaced pods in %.1f s: %s", cycles,
                                             INTERVAL - 1, spent)


async def test_the_scaler_may_list_events_in_its_namespace_and_nothing_more(kube_cluster, kube_rbac):
    """Least privilege: list only (no watch, get, create, delete), in the Spark namespace only."""
    async with await kube_cluster.api_client(SCALER_USER) as api_client:
        auth = client.AuthorizationV1Api(api_client)

        async def allowed(verb: str, namespace: str) -> bool:
            review = await auth.create_self_subject_access_review({"spec": {"resourceAttributes": {
                "namespace": namespace, "verb": verb, "resource": "events"}}})
            return review.status.allowed

        assert await allowed("list", NAMESPACE)
        for verb in ("watch", "get", "create", "update", "patch", "delete", "deletecollection"):
            assert not await allowed(verb, NAMESPACE), verb
        assert not await allowed("list", "default")
        assert not await allowed("list", "kube-system")
        # and the apiserver refuses it for real
        with pytest.raises(client.ApiException) as refused:
            await client.CoreV1Api(api_client).list_namespaced_event("kube-system")
        assert refused.value.status == 403
