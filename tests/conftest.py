"""Shared fixtures: one real Spark master per session, real drivers, a real hub with the
scaler, and the Kubernetes test infrastructure. The bounded waits are tests/waiting.py's."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from jhub_spark_scaler.backends.local import LocalBackend

from .real_hub import ADMIN_TOKEN, configure_scaler, hub_config, stop_scaler
from .settings import AS_ROOT
from .waiting import until

# A suite started as a background job (`.ci/run &`, nohup) begins with SIGINT ignored, and
# every process it starts inherits that: JupyterHub stops a single-user server with SIGINT
# first, and an ignoring one took 10 to 30 s to stop (a CI run timed out on it).
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

HERE = Path(__file__).resolve().parent
DRIVER = HERE / "drivers" / "busy_driver.py"


@pytest.fixture(scope="session")
async def spark_master(tmp_path_factory):
    """A real Spark master for the whole session, started by the local backend."""
    backend = LocalBackend(
        **AS_ROOT,
        state_dir=str(tmp_path_factory.mktemp("spark-master")),
        master_port=0,
        master_webui_port=0,
        stop_on_exit=True,
    )
    await backend.setup()
    try:
        yield backend
    finally:
        await backend.shutdown()


class Driver:
    """A real pyspark driver process (tests/drivers/busy_driver.py)."""

    def __init__(self, control: Path, args: list[str]):
        self.control = control
        control.mkdir(parents=True, exist_ok=True)
        self.log = open(control / "driver.log", "w")
        self.process = subprocess.Popen(
            [sys.executable, str(DRIVER), "--control", str(control), *args],
            stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True,
        )

    def _read(self, name: str):
        try:
            return json.loads((self.control / name).read_text())
        except (FileNotFoundError, ValueError):
            return None

    def _alive_or_fail(self):
        if self.process.poll() is not None:
            tail = (self.control / "driver.log").read_text()[-3000:]
            raise AssertionError(f"driver exited with {self.process.returncode}:\n{tail}")

    async def started(self, timeout: float = 180) -> dict:
        def app():
            self._alive_or_fail()
            return self._read("app.json")

        return await until(app, timeout=timeout, what="the driver's SparkSession")

    async def jobs_done(self, n: int, timeout: float = 120) -> None:
        def done():
            self._alive_or_fail()
            return (self._read("progress.json") or {}).get("jobs", 0) >= n

        await until(done, timeout=timeout, what=f"{n} jobs of the driver")

    def jobs(self) -> int:
        """Jobs done so far."""
        return (self._read("progress.json") or {}).get("jobs", 0)

    def burst(self, n: int) -> None:
        (self.control / f"burst-{n}").touch()

    async def result(self, timeout: float = 120) -> dict:
        """Stop the driver and return what it saw (see busy_driver.py)."""
        (self.control / "stop").touch()
        loop = asyncio.get_running_loop()
        await until(lambda: self.process.poll() is not None or self._read("result.json"),
                    timeout=timeout, what="the driver's result")
        result = await until(lambda: self._read("result.json"), timeout=5, what="result.json")
        await loop.run_in_executor(None, self.process.wait, timeout)
        return result

    def kill(self) -> None:
        if self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.process.wait()
        self.log.close()


@pytest.fixture
def drivers(tmp_path, spark_master):
    """Start drivers with `drivers(name, *args)`; every one is killed at teardown."""
    started: list[Driver] = []

    def start(name: str, *args: str) -> Driver:
        driver = Driver(tmp_path / f"driver-{name}", ["--master", spark_master.master_url,
                                                      "--name", name, *args])
        started.append(driver)
        return driver

    yield start
    for driver in started:
        driver.kill()


@pytest.fixture
async def scaler_hub(hub_app, spark_master, tmp_path):
    """Start a real hub with the real scaler as its managed service (tests/real_hub.py),
    once per test: `app, service, state = await scaler_hub(services=[...], roles=[...],
    **settings)`. The hub has the service "test-admin" (ADMIN_TOKEN) and its role before
    `services` and `roles`; `settings` go to configure_scaler(). Returns once the scaler
    has made its state dir. At teardown the scaler is stopped and its workers killed."""
    started = []

    async def start(*, services: list[dict] = (), roles: list[dict] = (), **settings):
        assert not started, "one hub per test"
        state = tmp_path / "scaler"
        c = hub_config(tmp_path)
        c.JupyterHub.services = [{"name": "test-admin", "api_token": ADMIN_TOKEN}, *services]
        c.JupyterHub.load_roles = [
            {"name": "test-admin", "services": ["test-admin"],
             "scopes": ["admin:users", "admin:servers", "tokens"]},
            *roles,
        ]
        service = configure_scaler(c, spark_master, state, **settings)
        app = await hub_app(c)
        started.append((app, state))
        await until(lambda: (state / "workers").is_dir(), timeout=60, what="the scaler service to start")
        return app, service, state

    yield start
    for app, state in started:
        await stop_scaler(app, state)


def lost_executors(result: dict) -> list[dict]:
    """Executors the driver lost: removed for any reason but a graceful decommission
    or its own dynamic allocation giving them back."""
    graceful = ("executor decommission", "killed by driver")
    return [
        e for e in result["executors"]
        if e["reason"] and not any(g in e["reason"].lower() for g in graceful)
    ]


# ---- Kubernetes test infrastructure: a real kube-apiserver and a test kubelet -----------------
# (tests/kube_cluster.py, tests/kubelet.py)

from kubernetes_asyncio import client as kube_client  # noqa: E402

from .kube_cluster import INSTALL_SCRIPT, KubeCluster, binaries_installed  # noqa: E402
from .kubelet import TestKubelet  # noqa: E402
from .kube_node import real_node  # noqa: E402,F401  (the real node: tests/kube_node.py)


@pytest.fixture(scope="session")
async def kube_cluster(tmp_path_factory):
    """etcd + kube-apiserver v1.20.2 (RBAC, token users "admin", "spark-scaler", "hub"; namespace
    "spark") for the whole session. Builds the binaries first if they are missing (once per
    machine: minutes)."""
    if not binaries_installed():
        built = subprocess.run(["bash", str(INSTALL_SCRIPT)], capture_output=True, text=True, timeout=1200)
        if built.returncode != 0:
            pytest.fail(f"{INSTALL_SCRIPT} failed with {built.returncode}:\n"
                        f"{built.stdout[-2000:]}\n{built.stderr[-4000:]}")
    cluster = KubeCluster(tmp_path_factory.mktemp("kube"))
    await cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


async def apply_rbac(admin, namespace: str, name: str = "rbac.yaml") -> None:
    """helm-values/`name` applied as is in `namespace` with the admin's ApiClient `admin`; as
    `kubectl apply`, again as often as asked (a Role or RoleBinding that exists is replaced,
    the pre-warm history's ConfigMap kept with what the scaler wrote into it)."""
    import yaml
    from kubernetes_asyncio.client.exceptions import ApiException

    rbac, core = kube_client.RbacAuthorizationV1Api(admin), kube_client.CoreV1Api(admin)
    for doc in yaml.safe_load_all((HERE.parent / "helm-values" / name).read_text()):
        create, replace = {
            "Role": (rbac.create_namespaced_role, rbac.replace_namespaced_role),
            "RoleBinding": (rbac.create_namespaced_role_binding, rbac.replace_namespaced_role_binding),
            "ConfigMap": (core.create_namespaced_config_map, None),  # the pool's pre-warm history
        }[doc["kind"]]
        try:
            await create(namespace, doc)
        except ApiException as e:
            if e.status != 409:
                raise
            if replace:
                await replace(doc["metadata"]["name"], namespace, doc)


@pytest.fixture(scope="session")
async def kube_rbac(kube_cluster):
    """helm-values/rbac.yaml applied as is in namespace "spark" (its Role, RoleBinding and the
    pre-warm history's ConfigMap), and the master Deployment that owns the worker pods;
    returns the Deployment."""
    from jhub_spark_scaler.backends.kubernetes import KubernetesBackend
    from jhub_spark_scaler.backends.master_manifests import master_deployment

    namespace = kube_cluster.namespace
    async with await kube_cluster.api_client("admin") as admin:
        await apply_rbac(admin, namespace)
        deployment = master_deployment(name="spark-master", namespace=namespace, image="apache/spark:4.3.0",
                                       run_as_user=KubernetesBackend.run_as_user.default_value,
                                       default_cores=2)
        return await kube_client.AppsV1Api(admin).create_namespaced_deployment(namespace, deployment)


_kube_pools = itertools.count(1)


@pytest.fixture
async def make_kube_backend(kube_cluster, kube_rbac):
    """`await make_kube_backend(user="hub", pool="", **settings)`: a set-up KubernetesBackend in
    namespace "spark" as that token user (by default z2jh's hub service account, holding only
    helm-values/rbac.yaml's Role), on a pool of its own unless named; its pods are deleted at
    teardown."""
    from jhub_spark_scaler.backends.kubernetes import KubernetesBackend
    from jhub_spark_scaler.backends.worker_pod import pool_selector

    backends = []

    async def make(*, user: str = "hub", pool: str = "", **settings) -> KubernetesBackend:
        settings = {"master_url": "spark://spark-master.spark.svc:7077", "stop_grace_period": 0, **settings}
        backend = KubernetesBackend(kubeconfig=str(kube_cluster.kubeconfig(user)),
                                    namespace=kube_cluster.namespace, pool=pool or f"kb{next(_kube_pools)}",
                                    **settings)
        await backend.setup()
        backends.append(backend)
        return backend

    yield make
    async with await kube_cluster.api_client("admin") as admin:
        for backend in backends:
            await backend.shutdown()
            await kube_client.CoreV1Api(admin).delete_collection_namespaced_pod(
                kube_cluster.namespace, label_selector=pool_selector(backend.pool), grace_period_seconds=0)


# the one param names the stand-in in every test id that uses it: test_x[stand-in-kubelet]
@pytest.fixture(params=["stand-in-kubelet"])
async def kubelet(kube_cluster, tmp_path):
    """A TestKubelet (a stand-in: tests/kubelet.py says what it does not model) running the
    pods of the "spark" namespace, per test: each test starts in
    mode "run" with no pods. At teardown it ends every process it started, restarts the
    apiserver if the test left it stopped, force-deletes all pods of the namespace, and fails
    the test if anything went wrong inside the kubelet (`kubelet.errors`)."""
    kubelet = TestKubelet(kube_cluster, tmp_path / "kubelet")
    await kubelet.start()
    try:
        yield kubelet
    finally:
        await kubelet.stop()
        if kube_cluster.apiserver is None:
            await kube_cluster.start_apiserver()
        async with await kube_cluster.api_client("admin") as api:
            await kube_client.CoreV1Api(api).delete_collection_namespaced_pod(
                kube_cluster.namespace, grace_period_seconds=0)
    assert not kubelet.errors, f"the test kubelet failed: {kubelet.errors}"
