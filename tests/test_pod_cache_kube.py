"""The pod cache against a real kube-apiserver when what it hears goes wrong: a list that
runs while our own DELETE answers, and a watch that never delivers a pod's DELETED event.
Either left a deleted pod cached as "stopping" until the next list, which a healthy watch
never needs: the scaler counted a worker that no longer existed.

No kubelet: the pods stay unbound, and the apiserver deletes an unbound pod at once, as it
does a Failed one (the soak's killed worker)."""

from __future__ import annotations

import functools
import json

import pytest
from kubernetes_asyncio import client

from jhub_spark_scaler.backends import pod_cache
from jhub_spark_scaler.backends.kubernetes import KubernetesBackend

from .waiting import always, until

NAMESPACE = "spark"


@pytest.fixture
def make_backend(make_kube_backend):
    """`await make_backend(**settings)`: `make_kube_backend` (tests/conftest.py) with a master
    on loopback and the default stop grace period (its pods terminate for a while)."""
    return functools.partial(make_kube_backend, master_url="spark://127.0.0.1:7077",
                             master_ui_url="http://127.0.0.1:8080",
                             stop_grace_period=KubernetesBackend.stop_grace_period.default_value)


async def handles(backend) -> set[str]:
    return {w.handle for w in await backend.list()}


async def test_a_pod_stopped_while_the_cache_lists_again_stays_gone(make_backend):
    """Our DELETE answers (the pod terminating) while a list runs that was read after the
    deletion: the answer is older than the list, so the pod stays out."""
    backend = await make_backend()
    [worker] = await backend.start(1)
    cache, read = backend.cache, backend.api.list_pods
    watches = cache.stats["watches"]
    stopped = []

    async def list_pods(*args, **kwargs):
        if not stopped:  # the list has begun: stop the worker, then read
            stopped.append(worker.handle)
            await backend.stop(worker)
        return await read(*args, **kwargs)

    backend.api.list_pods = list_pods
    lists = cache.stats["lists"]
    # the cache lists again, as after its watch expired (410) or failed three times
    await cache.stop()
    cache.start()
    await until(lambda: cache.stats["lists"] > lists and cache.stats["watches"] > watches,
                timeout=30, what="a new list")
    assert stopped == [worker.handle]
    assert worker.handle not in await handles(backend)


class LossyWatch:
    """A watch response that never delivers the DELETED events `drop` picks."""

    def __init__(self, response, drop):
        self.response, self.drop = response, drop

    @property
    def content(self):
        return self._lines()

    async def _lines(self):
        async for line in self.response.content:
            if line.strip() and self.drop(json.loads(line)):
                continue
            yield line

    def release(self) -> None:
        self.response.release()


async def test_a_deleted_pod_whose_watch_event_was_lost_is_forgotten_once_overdue(
        make_backend, monkeypatch):
    monkeypatch.setattr(pod_cache, "OVERDUE", 1.0, raising=False)
    backend = await make_backend(watch_timeout=1)
    [worker, other] = await backend.start(2)
    cache, watch = backend.cache, backend.api.watch_pods

    async def lossy_watch(*args, **kwargs):
        def drop(event):
            return event["type"] == "DELETED" and event["object"]["metadata"]["name"] == worker.handle

        return LossyWatch(await watch(*args, **kwargs), drop)

    backend.api.watch_pods = lossy_watch
    watches = cache.stats["watches"]  # the watch open now is a faithful one: wait for its renewal
    await until(lambda: cache.stats["watches"] > watches, timeout=10, what="a lossy watch")
    await backend.stop(worker)
    [stopping] = [w for w in await backend.list() if w.handle == worker.handle]
    assert stopping.stopping
    lists = backend.api.requests.get("list pods", 0)

    async def forgotten():
        return worker.handle not in await handles(backend)

    await until(forgotten, timeout=20, interval=0.2, what="the deleted pod to be forgotten")
    assert await handles(backend) == {other.handle}
    # one list found it gone; nothing overdue since: no more requests
    assert backend.api.requests.get("list pods", 0) == lists + 1
    await backend.list()
    assert backend.api.requests.get("list pods", 0) == lists + 1


async def test_a_pod_still_terminating_when_overdue_stays_stopping(make_backend, kube_cluster, monkeypatch):
    """A pod held past its deadline (a finalizer here; a lost node's kubelet in a cluster)
    still exists: the check finds it and the cache keeps it, listing at most once per OVERDUE."""
    monkeypatch.setattr(pod_cache, "OVERDUE", 1.0, raising=False)
    backend = await make_backend()
    [worker] = await backend.start(1)
    async with await kube_cluster.api_client("admin") as admin:
        core = client.CoreV1Api(admin)
        await core.patch_namespaced_pod(worker.handle, NAMESPACE,
                                        {"metadata": {"finalizers": ["example.com/hold"]}})
        try:
            await backend.stop(worker)
            lists = backend.api.requests.get("list pods", 0)

            async def stopping():
                return [w.handle for w in await backend.list() if w.stopping] == [worker.handle]

            await always(stopping, seconds=4, what="the terminating pod to stay, stopping")
            assert 2 <= backend.api.requests.get("list pods", 0) - lists <= 5
        finally:
            await core.patch_namespaced_pod(worker.handle, NAMESPACE, {"metadata": {"finalizers": None}})
