"""The pre-warm history in the pool's ConfigMap, on the real kube-apiserver (v1.20.2), as the
hub's service account holding only helm-values/rbac.yaml's Role (which names the ConfigMap of
pool "notebooks", made by the same file). The scaler's side is the hub service as the app
wires it (`HubService` with `KubernetesBackend.history_store()`), fed by a stand-in hub's
users API; a "restart" is a second backend and service made after the first are shut down.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from datetime import datetime, timezone

import pytest
from kubernetes_asyncio import client

from jhub_spark_scaler.backends.kube_api import KubeApi
from jhub_spark_scaler.backends.kube_history import KEY, history_name
from jhub_spark_scaler.backends.kubernetes import KubernetesBackend
from jhub_spark_scaler.metrics import ScalerMetrics
from jhub_spark_scaler.model import AppStart
from jhub_spark_scaler.service import HubService
from jhub_spark_scaler.web.history import PoolHistory

from .test_activity import READER_TOKEN, FakeHub, user_doc
from .test_prewarm_history_store import NAMES
from .waiting import until

LOG = logging.getLogger("test-prewarm-store-kube")
NAMESPACE, POOL = "spark", "notebooks"
NAME = history_name(POOL)
OTHER = AppStart(0.0, "other")  # the master answers, and lists apps


def iso(seconds_ago: float) -> str:
    return datetime.fromtimestamp(time.time() - seconds_ago, timezone.utc).isoformat()


async def config_map(kube_cluster, name: str = NAME) -> dict | None:
    """The ConfigMap's data as the apiserver has it (read as admin); None if there is none."""
    async with await kube_cluster.api_client("admin") as api:
        try:
            return (await client.CoreV1Api(api).read_namespaced_config_map(name, NAMESPACE)).data or {}
        except client.ApiException as e:
            if e.status == 404:
                return None
            raise


async def put_config_map(kube_cluster, data: dict | None, name: str = NAME) -> None:
    """As the admin: the ConfigMap `name` with `data`, or none at all (None)."""
    async with await kube_cluster.api_client("admin") as api:
        core = client.CoreV1Api(api)
        try:
            await core.delete_namespaced_config_map(name, NAMESPACE)
        except client.ApiException as e:
            assert e.status == 404, e
        if data is not None:
            await core.create_namespaced_config_map(NAMESPACE, {"metadata": {"name": name}, "data": data})


@pytest.fixture
async def history_config_map(kube_cluster, kube_rbac):
    """The pool's ConfigMap empty, as rbac.yaml makes it; the same again after the test."""
    await put_config_map(kube_cluster, {})
    yield
    await put_config_map(kube_cluster, {})


@pytest.fixture
async def scaler(kube_cluster, history_config_map):
    """make(pool) -> the hub service of a scaler of that pool, its Kubernetes backend set up as
    the hub's service account. Every one made is stopped at the end, as the app does."""
    made = []
    hub = FakeHub([])
    hub.up()

    async def make(pool: str = POOL) -> HubService:
        backend = KubernetesBackend(kubeconfig=str(kube_cluster.kubeconfig("hub")), namespace=NAMESPACE,
                                    pool=pool, api_timeout=5, log=logging.getLogger("test-kube-backend"))
        await backend.setup()
        service = HubService(
            api_url=hub.api_url, api_token=READER_TOKEN, events_secret="unused",
            service_url="http://127.0.0.1:1", prefix="/services/spark-scaler/", poll_interval=3600,
            stale_after=300, prewarm_window=600, prewarm_per_server=1, prewarm_profiles=(),
            prewarm_history=2, history_store=backend.history_store(), on_change=lambda: None, log=LOG,
            metrics=ScalerMetrics(), pool_history=PoolHistory(interval=1), cycle_interval=1,
            authenticate_prometheus=True,
        )
        service.hub, service.backend = hub, backend
        await service.keeper.load()  # what start() does after its first poll
        made.append(service)
        return service

    try:
        yield make
    finally:
        for service in made:
            await stop(service)
        await hub.down()


async def stop(service: HubService) -> None:
    """As the app ends: the last change written, then the backend's client closed."""
    if not getattr(service, "stopped", False):
        service.stopped = True
        await service.keeper.flush()
        await service.backend.shutdown()


async def servers_end(service: HubService, users: list[str], *, started_ago: float) -> None:
    """A server of each user seen running, then gone, with no app of theirs: two polls."""
    server = {"": {"started": iso(started_ago), "ready": True}}
    service.hub.state["items"] = [user_doc(u, server) for u in users]
    await service.activity.poll()
    service.credit([OTHER])
    service.hub.state["items"] = []
    await service.activity.poll()
    service.credit([OTHER])


def warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING and r.name == LOG.name]


async def test_the_history_survives_a_scaler_restart_in_the_pools_config_map(kube_cluster, scaler, caplog):
    """Every hub user name round-trips; two servers ending become at most two writes."""
    first = await scaler()
    await servers_end(first, NAMES, started_ago=600)
    await servers_end(first, NAMES, started_ago=300)
    assert first.history.cold(()) == frozenset(NAMES)
    await stop(first)
    assert first.backend.api.requests.get("patch configmaps") in (1, 2)  # one at once, the rest at exit
    stored = json.loads((await config_map(kube_cluster))[KEY])
    assert stored == {"users": first.history.users}

    again = await scaler()  # a restarted scaler: the same users are cold, before any server ended
    assert again.history.users == first.history.users
    assert again.history.cold(()) == frozenset(NAMES)
    await stop(again)
    assert again.backend.api.requests.get("patch configmaps") is None  # nothing changed: not written
    assert warnings(caplog) == []


@pytest.mark.parametrize("content", ["not json", "[]", '{"users": {"a": [[1]]}}'])
async def test_a_corrupt_config_map_warns_once_starts_fresh_and_is_replaced(kube_cluster, scaler, caplog,
                                                                            content):
    await put_config_map(kube_cluster, {KEY: content})
    service = await scaler()
    assert service.history.users == {}  # everyone pre-warms
    await servers_end(service, ["a"], started_ago=60)
    await stop(service)
    (warning,) = warnings(caplog)
    assert warning.startswith(f"pre-warm history not read: ConfigMap {NAMESPACE}/{NAME}")
    assert warning.endswith("; starting with none (everyone pre-warms), replaced by the next write")
    assert json.loads((await config_map(kube_cluster))[KEY]) == {"users": service.history.users}


async def test_a_missing_config_map_warns_once_is_read_again_and_never_created(kube_cluster, scaler, caplog):
    await put_config_map(kube_cluster, None)
    service = await scaler()
    service.keeper.store.write_interval = 0.2
    await servers_end(service, ["a"], started_ago=60)
    for _ in range(3):  # read again at each interval: no second warning, nothing created
        await until(lambda: not service.keeper._task or service.keeper._task.done(), timeout=10,
                    what="a read")
        await asyncio.sleep(0.2)
        service.credit([OTHER])
    assert await config_map(kube_cluster) is None
    assert warnings(caplog) == [
        f"pre-warm history not read: ConfigMap {NAMESPACE}/{NAME} does not exist: create it (kubectl apply "
        "-f helm-values/rbac.yaml, with the name of KubernetesBackend.pool); kept in memory only (a restart "
        "forgets it), read again every 30 s"]
    assert service.backend.api.requests["get configmaps"] >= 3
    assert service.backend.api.requests.get("patch configmaps") is None

    await put_config_map(kube_cluster, {})  # the admin applies rbac.yaml: read, then written

    async def written():
        service.credit([OTHER])
        data = await config_map(kube_cluster)
        return data and json.loads(data[KEY])["users"] == service.history.users

    await until(written, timeout=20, what="the history written once the ConfigMap exists", interval=0.3)
    assert len(warnings(caplog)) == 1


async def test_a_forbidden_config_map_warns_once_and_is_left_alone(kube_cluster, scaler, caplog):
    """rbac.yaml names pool "notebooks"' ConfigMap only: another pool's is forbidden."""
    other = history_name("other")
    planted = {KEY: json.dumps({"users": {"a": [[1.0, False], [2.0, False]]}})}
    await put_config_map(kube_cluster, planted, name=other)
    try:
        service = await scaler("other")
        assert service.history.users == {}  # fresh: a is not cold
        await servers_end(service, ["b"], started_ago=60)
        await stop(service)
        (warning,) = warnings(caplog)
        assert warning.startswith(
            "pre-warm history not read: missing RBAC permission: cannot get configmaps in namespace 'spark' "
            f'(configmaps "{other}" is forbidden: User "system:serviceaccount:jhub:hub" cannot get')
        assert "grant it in the scaler's Role (helm-values/rbac.yaml); kept in memory only" in warning
        assert await config_map(kube_cluster, other) == planted
    finally:
        await put_config_map(kube_cluster, None, name=other)


async def test_the_scalers_account_can_touch_no_other_config_map(kube_cluster, kube_rbac, history_config_map):
    """The attack: the hub's service account reads, lists, changes, replaces, deletes or
    creates ConfigMaps other than its pool's history. Every one is refused (403)."""
    victim = "victim-settings"
    await put_config_map(kube_cluster, {"secret": "s3cr3t"}, name=victim)
    try:
        async with await kube_cluster.api_client("hub") as api:
            core = client.CoreV1Api(api)
            attempts = {
                "get": core.read_namespaced_config_map(victim, NAMESPACE),
                "list": core.list_namespaced_config_map(NAMESPACE),
                "patch": core.patch_namespaced_config_map(victim, NAMESPACE, {"data": {"secret": "x"}}),
                "update": core.replace_namespaced_config_map(
                    victim, NAMESPACE, {"metadata": {"name": victim}, "data": {"secret": "x"}}),
                "delete": core.delete_namespaced_config_map(victim, NAMESPACE),
                "create": core.create_namespaced_config_map(
                    NAMESPACE, {"metadata": {"name": "planted"}, "data": {"a": "b"}}),
                "delete its own": core.delete_namespaced_config_map(NAME, NAMESPACE),
                "update its own": core.replace_namespaced_config_map(
                    NAME, NAMESPACE, {"metadata": {"name": NAME}, "data": {}}),
            }
            refused = {}
            for what, attempt in attempts.items():
                try:
                    await attempt
                    refused[what] = None
                except client.ApiException as e:
                    refused[what] = e.status
            assert refused == {what: 403 for what in attempts}
            # what it may do: its own history, by name
            own = KubeApi(api, NAMESPACE)
            await own.patch_config_map(NAME, {KEY: '{"users":{}}'})
            assert (await own.read("ConfigMap", NAME))["data"] == {KEY: '{"users":{}}'}
        assert await config_map(kube_cluster, victim) == {"secret": "s3cr3t"}
        assert await config_map(kube_cluster, "planted") is None
    finally:
        await put_config_map(kube_cluster, None, name=victim)


async def test_an_apiserver_outage_holds_up_no_cycle_and_the_write_is_retried(kube_cluster, scaler, caplog):
    caplog.set_level(logging.INFO, logger=LOG.name)
    service = await scaler()
    service.keeper.store.write_interval = 0.5
    try:
        kube_cluster.stop_apiserver()
        await servers_end(service, ["a"], started_ago=60)
        took = []
        for _ in range(4):
            began = time.monotonic()
            service.credit([OTHER])
            took.append(time.monotonic() - began)
            await until(lambda: not service.keeper._task or service.keeper._task.done(), timeout=15,
                        what="the write to fail")
            await asyncio.sleep(0.5)
        assert max(took) < 0.1, took
        outage = [w for w in warnings(caplog) if w.startswith("pre-warm history not saved")]
        assert len(outage) == 1 and "cannot reach the Kubernetes API" in outage[0], warnings(caplog)
    finally:
        if kube_cluster.apiserver is None:
            await kube_cluster.start_apiserver()

    async def written():
        service.credit([OTHER])
        data = await config_map(kube_cluster)
        return data and json.loads(data.get(KEY, "{}")).get("users") == service.history.users

    await until(written, timeout=30, what="the history written after the outage", interval=0.5)
    assert f"pre-warm history saved in ConfigMap {NAMESPACE}/{NAME} again" in caplog.text
