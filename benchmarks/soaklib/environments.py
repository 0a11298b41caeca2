"""Where the soak's workers run: the local backend (worker processes on 127.0.6.x
by default) or the Kubernetes backend (a real kube-apiserver and the tests' kubelet,
which runs each pod as a real worker process on 127.0.7.x by default)."""

from __future__ import annotations

import asyncio
import contextlib
import glob
import sys
from pathlib import Path

from jhub_spark_scaler.backends import Backend
from jhub_spark_scaler.backends.local import LocalBackend
from tests.settings import AS_ROOT
from tests.waiting import WaitTimeout, until

from .cluster import alive_hosts, kill_quietly, worker_processes
from .start_delay import LateStartLocalBackend, StartDelay

ROOT = Path(__file__).resolve().parents[2]
WORKER_CORES = 2
ALIVE_WITHIN = 120.0  # s for a worker to register on a loaded machine


class LocalEnv:
    name = "local"
    apiserver = False

    def __init__(self, workdir: Path, host_prefix: str = "127.0.6.", *, start_delay: StartDelay | None = None,
                 seed: int = 1):
        self.workdir, self.host_prefix = Path(workdir), host_prefix
        self.start_delay, self.seed = start_delay, seed

    async def start(self) -> None:
        pass

    def _settings(self, master, strategy: str) -> dict:
        return {**AS_ROOT, "start_master": False, "master_url": master.url, "master_ui_url": master.ui,
                "state_dir": str(self.workdir / f"{strategy}-workers"), "worker_cores": WORKER_CORES,
                "worker_memory": "1g", "host_range": f"{self.host_prefix}2-{self.host_prefix}254",
                "stop_timeout": 10, "stop_on_exit": True}

    def _late(self) -> dict:
        """LateStartLocalBackend's settings, when the workers start late."""
        if not self.start_delay:
            return {}
        return {"start_delay": str(self.start_delay), "start_delay_seed": self.seed}

    def scaler_flags(self, master, strategy: str) -> dict:
        flags = {f"LocalBackend__{key}": value for key, value in self._settings(master, strategy).items()}
        if late := self._late():
            # by import path from the repository's root, which the soak's hub hands the service
            flags["backend_class"] = f"benchmarks.soaklib.start_delay.{LateStartLocalBackend.__name__}"
            flags.update({f"LateStartLocalBackend__{key}": value for key, value in late.items()})
        return flags

    async def backend(self, master, strategy: str, *, late: bool = True) -> Backend:
        settings = self._settings(master, strategy)
        backend = (LateStartLocalBackend(**settings, **self._late()) if late and self.start_delay
                   else LocalBackend(**settings))
        await backend.setup()
        return backend

    async def prepare(self, master, strategy: str) -> None:
        """Write the class archive into the strategy's fresh state dir, as a deployed hub's
        has from its first worker's stop on: without it the scaler's workers would start
        the slow way until its first worker stopped (3.5 minutes into a soak once)."""
        backend = await self.backend(master, strategy, late=False)  # setup, not a cold start
        try:
            [worker] = await backend.start(1)

            async def alive() -> bool:
                return worker.host in await asyncio.to_thread(alive_hosts, master.ui)

            await until(alive, timeout=ALIVE_WITHIN, what=f"worker {worker.handle} to be ALIVE")
            await backend.stop(worker)
            if not glob.glob(str(self.workdir / f"{strategy}-workers" / "cds" / "worker-*.jsa")):
                raise RuntimeError(f"worker {worker.handle} wrote no class archive "
                                   "(LocalBackend's warning says why)")
        finally:
            await backend.shutdown()

    def kill_worker(self, host: str) -> bool:
        """SIGKILL the worker JVM on `host` behind the scaler's back."""
        for pid, on in worker_processes(self.host_prefix).items():
            if on == host:
                kill_quietly(pid)
                return True
        return False

    async def leftovers(self, strategy: str) -> list[str]:
        return []  # processes are what the sampler counts already

    async def cleanup(self, strategy: str) -> None:
        for pid in worker_processes(self.host_prefix):
            kill_quietly(pid)

    async def stop(self) -> None:
        pass


#: the Role and RoleBinding that grant the soak pools' Leases besides helm-values/rbac.yaml's
SOAK_RBAC = "jhub-spark-scaler-soak"


class KubeEnv:
    """One apiserver and kubelet for the whole soak; each strategy has a pool of its own.
    Given a running `cluster` and `kubelet` (the tests' session ones), it uses those
    (and the kubelet's pod IPs) and leaves them running at the end."""

    name = "kubernetes"
    apiserver = True
    namespace = "spark"

    def __init__(self, workdir: Path, host_prefix: str = "127.0.7.", *, cluster=None, kubelet=None,
                 start_delay: StartDelay | None = None, seed: int = 1):
        self.workdir, self.host_prefix = Path(workdir), host_prefix
        self.cluster, self.kubelet = cluster, kubelet
        self.start_delay, self.seed = start_delay, seed
        self._pod_starts: dict[str, int] = {}  # per pool: how many of its pods the kubelet started
        self.owned = cluster is None
        if kubelet is not None:
            self.host_prefix = kubelet.ip_pool[0].rpartition(".")[0] + "."

    def _pod_delay(self, pod_name: str) -> float:
        """The kubelet's hook: the n-th pod of a pool waits draw n, as the local backend's n-th
        worker does (the pool's name is in the pod's: spark-worker-<pool>-<suffix>)."""
        pool = pod_name.rpartition("-")[0]
        n = self._pod_starts[pool] = self._pod_starts.get(pool, 0) + 1
        return self.start_delay.draw(self.seed, n)

    async def start(self) -> None:
        if not self.owned:
            await self._apply_rbac()
            if self.start_delay:
                self.kubelet.start_delay = self._pod_delay
            return
        sys.path.insert(0, str(ROOT))
        from tests.kube_cluster import KubeCluster, binaries_installed
        from tests.kubelet import TestKubelet

        if not binaries_installed():
            raise RuntimeError("kube-apiserver/etcd are missing: run scripts/install-kube-apiserver.sh")
        self.cluster = KubeCluster(self.workdir / "kube")
        await self.cluster.start()
        await self._apply_rbac()
        self.kubelet = TestKubelet(self.cluster, self.workdir / "kubelet", ip_prefix=self.host_prefix,
                                   start_delay=self._pod_delay if self.start_delay else None)
        await self.kubelet.start()

    async def _apply_rbac(self) -> None:
        """helm-values/rbac.yaml as is, a Role and binding of the soak's own for its pools'
        Leases and pre-warm history ConfigMaps (the file names one pool's, as an admin changes
        it for theirs), those ConfigMaps, and the master Deployment that owns the worker pods
        (what exists already is kept)."""
        import copy

        import yaml
        from kubernetes_asyncio import client
        from kubernetes_asyncio.client.exceptions import ApiException

        from jhub_spark_scaler.backends.kube_history import history_name
        from jhub_spark_scaler.backends.kubernetes import KubernetesBackend
        from jhub_spark_scaler.backends.lease import lease_name
        from jhub_spark_scaler.backends.master_manifests import master_deployment

        from .run import STRATEGIES  # run imports this module

        async with await self.cluster.api_client("admin") as admin:
            rbac = client.RbacAuthorizationV1Api(admin)
            rbac_yaml = (ROOT / "helm-values" / "rbac.yaml").read_text()
            docs = {doc["kind"]: doc for doc in yaml.safe_load_all(rbac_yaml)}
            role, binding, history = docs["Role"], docs["RoleBinding"], docs["ConfigMap"]
            pools = [f"soak-{strategy}" for strategy in STRATEGIES]
            soak_role = {**copy.deepcopy(role), "rules": [{
                "apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["get", "update"],
                "resourceNames": [lease_name(pool) for pool in pools]}, {
                "apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "patch"],
                "resourceNames": [history_name(pool) for pool in pools]}]}
            soak_binding = copy.deepcopy(binding)
            soak_role["metadata"]["name"] = soak_binding["metadata"]["name"] = SOAK_RBAC
            soak_binding["roleRef"]["name"] = SOAK_RBAC
            creates = [(rbac.create_namespaced_role, doc) for doc in (role, soak_role)]
            creates += [(rbac.create_namespaced_role_binding, doc) for doc in (binding, soak_binding)]
            deployment = master_deployment(name="spark-master", namespace=self.namespace,
                                           image="apache/spark:4.3.0",
                                           run_as_user=KubernetesBackend.run_as_user.default_value,
                                           default_cores=2 * WORKER_CORES)  # the backend's default
            creates.append((client.AppsV1Api(admin).create_namespaced_deployment, deployment))
            # each soak pool's pre-warm history, made as the admin makes the file's for theirs
            for pool in pools:
                made = copy.deepcopy(history)
                made["metadata"]["name"] = history_name(pool)
                creates.append((client.CoreV1Api(admin).create_namespaced_config_map, made))
            for create, doc in creates:
                try:
                    await create(self.namespace, doc)
                except ApiException as e:
                    if e.status != 409:
                        raise

    async def _remove_soak_rbac(self) -> None:
        from kubernetes_asyncio import client
        from kubernetes_asyncio.client.exceptions import ApiException

        from jhub_spark_scaler.backends.kube_history import history_name

        from .run import STRATEGIES

        async with await self.cluster.api_client("admin") as admin:
            rbac, core = client.RbacAuthorizationV1Api(admin), client.CoreV1Api(admin)
            # the histories too: a later soak in the same cluster starts from none, as this one did
            deletes = [(rbac.delete_namespaced_role_binding, SOAK_RBAC),
                       (rbac.delete_namespaced_role, SOAK_RBAC)]
            deletes += [(core.delete_namespaced_config_map, history_name(f"soak-{strategy}"))
                        for strategy in STRATEGIES]
            for delete, name in deletes:
                try:
                    await delete(name, self.namespace)
                except ApiException as e:
                    if e.status != 404:
                        raise

    def _settings(self, master, strategy: str) -> dict:
        # the scaler is z2jh's hub service account, holding helm-values/rbac.yaml's Role (and the
        # soak pools' Leases)
        return {"kubeconfig": str(self.cluster.kubeconfig("hub")), "namespace": self.namespace,
                "pool": f"soak-{strategy}", "master_url": master.url, "master_ui_url": master.ui,
                "cpu_limit": str(WORKER_CORES), "memory_limit": "2Gi", "worker_memory": "1g",
                "stop_grace_period": 30}

    def scaler_flags(self, master, strategy: str) -> dict:
        settings = self._settings(master, strategy)
        flags = {f"KubernetesBackend__{key}": value for key, value in settings.items()}
        return {"backend_class": "kubernetes", **flags}

    async def backend(self, master, strategy: str) -> Backend:
        from jhub_spark_scaler.backends.kubernetes import KubernetesBackend

        backend = KubernetesBackend(**self._settings(master, strategy))
        await backend.setup()
        return backend

    async def prepare(self, master, strategy: str) -> None:
        """Nothing: worker pods start without a class archive."""

    def kill_worker(self, host: str) -> bool:
        for pod in list(self.kubelet.pods.values()):
            if pod.ip == host and pod.running:
                self.kubelet.kill(pod.name)
                return True
        return False

    async def restart_apiserver(self, down_seconds: float) -> None:
        self.cluster.stop_apiserver()
        await asyncio.sleep(down_seconds)
        await self.cluster.start_apiserver()

    async def _pods(self, strategy: str) -> list[dict]:
        from kubernetes_asyncio import client

        from jhub_spark_scaler.backends.worker_pod import pool_selector

        async with await self.cluster.api_client("admin") as api:
            listed = await client.CoreV1Api(api).list_namespaced_pod(
                self.namespace, label_selector=pool_selector(f"soak-{strategy}"))
            return [p.metadata.name for p in listed.items]

    async def leftovers(self, strategy: str) -> list[str]:
        """Pods of the pool without a worker process (a process without a pod is counted
        by the sampler)."""
        running = {p.name for p in self.kubelet.pods.values() if p.running}
        return [name for name in await self._pods(strategy) if name not in running]

    async def cleanup(self, strategy: str) -> None:
        from kubernetes_asyncio import client

        from jhub_spark_scaler.backends.worker_pod import pool_selector

        if self.cluster.apiserver is None:
            await self.cluster.start_apiserver()
        async with await self.cluster.api_client("admin") as api:
            await client.CoreV1Api(api).delete_collection_namespaced_pod(
                self.namespace, label_selector=pool_selector(f"soak-{strategy}"), grace_period_seconds=0)
        # until the kubelet has ended them: a pod it was still starting would otherwise start
        # its worker after the sweep below, into the next strategy's run
        prefix = f"spark-worker-soak-{strategy}-"
        with contextlib.suppress(WaitTimeout):  # the sweep below ends what is left
            await until(lambda: not any(p.running for p in self.kubelet.pods.values()
                                        if p.name.startswith(prefix)),
                        timeout=60, what="the kubelet to end the strategy's pods")
        for pid in worker_processes(self.host_prefix):
            kill_quietly(pid)

    async def stop(self) -> None:
        if not self.owned:  # a cluster of the tests' session: as it was, but for its pods
            self.kubelet.start_delay = None
            await self._remove_soak_rbac()
            return
        if self.kubelet is not None:
            await self.kubelet.stop()
        if self.cluster is not None:
            self.cluster.stop()
