"""Spark workers as Kubernetes pods: the production backend.

Reading the pool costs no API request: a watch keeps a cache of this scaler's
pods (`pod_cache.py`; a list only while a deleted pod is overdue to go). Starting
creates pods, retiring marks a pod with an annotation (so a restarted scaler
resumes the drain) and the reconciler then
decommissions it through the master (`/workers/kill/?host=<pod IP>`), stopping
deletes the pod with a grace period, and only the pod it listed (a uid
precondition). Pods carry labels that tell this scaler's pool apart from
everything else, and an owner reference (by default to the master Deployment) so
that uninstalling garbage-collects them: a pod with the pool's labels but another
owner (a second hub's pool of the same name) is never adopted, listed or deleted.
"""

from __future__ import annotations

import asyncio
import inspect
import math
import os
import socket

from traitlets import Bool, Callable, Dict, Float, Int, List, TraitError, Unicode, default, validate

from .. import clock
from ..errors import ConfigError
from ..model import BackendWorker
from . import Backend, BackendError
from .checks import revalidate, validator
from .kube_api import Conflict, KubeApi, NotFound, default_namespace, make_api_client
from .kube_checks import CHECKS as _CHECKS, COMPUTED_CHECKS as _COMPUTED_CHECKS
from .kube_history import ConfigMapStore, history_name
from .lease import Lease, LeaseTimings, lease_name
from .managed_master import ensure_master
from .master_manifests import master_deployment, master_services, master_ui_url, master_url
from .node_events import NodeEvents
from .pod_cache import PodCache
from .worker_pod import (
    ANNOTATION_RETIRING,
    SCALER_ENV,
    SHUFFLE_SERVICE_ON,
    WorkerPodTemplate,
    WorkerResources,
    bad_retiring_mark,
    hook_result_error,
    owned_by,
    owner_reference,
    pod_selector_error,
    pod_worker,
    pool_selector,
    worker_pod,
    worker_resources,
)

#: (verb, API group, resource, name) the backend needs in its namespace; see helm-values/rbac.yaml
WORKER_PERMISSIONS = [
    ("list", "", "pods", ""), ("watch", "", "pods", ""), ("create", "", "pods", ""),
    ("patch", "", "pods", ""), ("delete", "", "pods", ""),
    ("list", "", "events", ""),  # cluster-autoscaler's word on the pods it cannot place
]
#: with manage_master; see helm-values/rbac-manage-master.yaml
MASTER_PERMISSIONS = [("get", "apps", "deployments", ""), ("create", "apps", "deployments", ""),
                      ("get", "", "services", ""), ("create", "", "services", "")]
OWNER_RESOURCES = {"Deployment": ("apps", "deployments"), "StatefulSet": ("apps", "statefulsets"),
                   "Service": ("", "services"), "ConfigMap": ("", "configmaps"), "Pod": ("", "pods")}


class KubernetesBackend(Backend):
    """Workers as pods in one namespace, found again by their labels after a restart."""

    decommission_via_master = True
    #: a cold pull of a 2 GB Spark image at 10 MB/s on a node that lacks it, then the JVM's start
    default_start_timeout = 300.0

    namespace = Unicode(help="Namespace of the worker pods. Default: the scaler's own, else 'default'.").tag(
        config=True)
    pool = Unicode(
        "default", help="Name of this worker pool: a label value that tells its pods apart from other pools'."
    ).tag(config=True)
    kubeconfig = Unicode(
        "", help="Kubeconfig file. Default: the pod's service account in a cluster, else $KUBECONFIG."
    ).tag(config=True)
    context = Unicode("", help="Kubeconfig context. Default: the current one.").tag(config=True)

    image = Unicode("apache/spark:4.3.0", help="Image of the workers (and of the managed master).").tag(
        config=True)
    image_pull_policy = Unicode("IfNotPresent").tag(config=True)
    image_pull_secrets = List(Unicode(), help="Names of image pull secrets for the worker pods.").tag(
        config=True)
    cpu_limit = Unicode("1", help="CPU limit of a worker pod; Spark's --cores is derived from it.").tag(
        config=True)
    cpu_guarantee = Unicode("", help="CPU request of a worker pod. Default: the limit.").tag(config=True)
    memory_limit = Unicode(
        "2Gi", help="Memory limit of a worker pod; Spark's --memory is derived from it so the JVMs fit."
    ).tag(config=True)
    memory_guarantee = Unicode("", help="Memory request of a worker pod. Default: the limit.").tag(
        config=True)
    worker_cores = Int(
        0, help="Spark --cores. Default (0): the CPU limit, rounded down, at least 1."
    ).tag(config=True)
    worker_memory = Unicode(
        "",
        help="Spark --memory (like 1g). Default: what fits memory_limit after the daemon and JVM overhead.",
    ).tag(config=True)
    daemon_memory = Unicode("256m", help="Heap of the worker daemon JVM (SPARK_DAEMON_MEMORY).").tag(
        config=True)
    jvm_overhead = Float(
        0.25, help="Executor JVM memory beyond its heap, as a fraction of the heap, reserved in the limit."
    ).tag(config=True)
    spark_conf = Dict(
        help="Extra Spark settings for the workers (SPARK_WORKER_OPTS); decommission is always enabled."
    ).tag(config=True)
    extra_env = Dict(help="Extra environment variables of the worker container; not those the scaler "
                          f"sets ({', '.join(SCALER_ENV)}).").tag(config=True)
    extra_labels = Dict(help="Extra labels of the worker pods.").tag(config=True)
    extra_annotations = Dict(help="Extra annotations of the worker pods.").tag(config=True)
    node_selector = Dict(help="nodeSelector of the worker pods.").tag(config=True)
    tolerations = List(help="tolerations of the worker pods.").tag(config=True)
    affinity = Dict(help="affinity of the worker pods.").tag(config=True)
    volumes = List(help="Extra volumes of the worker pods.").tag(config=True)
    volume_mounts = List(help="Extra volumeMounts of the worker container.").tag(config=True)
    run_as_user = Int(
        185, help="Numeric user id the worker and managed master containers run as, never root: 185 is "
        "`spark` in the apache/spark images. The pods pass Pod Security Standards `restricted`.",
    ).tag(config=True)
    service_account = Unicode(
        "", help="Service account of the worker pods. Default: none mounted (workers need no API access)."
    ).tag(config=True)
    modify_pod_hook = Callable(
        None, allow_none=True,
        help="Called as hook(backend, pod) with each new worker pod manifest (a dict); returns the pod "
        "to create (may be a coroutine), which must keep the pool's labels, the namespace, the owner "
        "reference and generateName. For anything the settings do not cover.",
    ).tag(config=True)
    owner = Unicode(
        help="'Kind/name' of the object in the namespace that owns the worker pods (deleting it deletes "
        "them), or '' for none. Default: the master Deployment, Deployment/<master_name>.",
    ).tag(config=True)
    stop_grace_period = Int(
        30, help="Seconds a stopped worker pod gets to exit (deletion grace period)."
    ).tag(config=True)
    pod_drain_timeout = Int(
        help="Seconds a worker pod deleted by someone else (a node drain, `kubectl delete pod`, a node's "
        "shutdown) waits, once its preStop hook has decommissioned it, for its executors to leave before "
        "the worker stops; its terminationGracePeriodSeconds is this plus stop_grace_period. Default: "
        "SparkScalerApp.drain_timeout when set, else 600, the most cluster-autoscaler gives the pods of "
        "a node it removes (--max-graceful-termination-sec).").tag(config=True)
    default_cores = Int(
        help="spark.deploy.defaultCores of the managed master: the most cores an app without "
        "spark.cores.max gets (else one getOrCreate() takes every worker, up to max_workers). Default: two "
        "workers' cores (worker_cores x 2): room for a notebook's parallel work, and the idle worker is "
        "left for the next user. The notebooks' spark.cores.max in values.yaml is the same.").tag(config=True)

    master_name = Unicode("spark-master", help="Name of the master Deployment and its Services.").tag(
        config=True)
    manage_master = Bool(
        False, help="Create the Spark master Deployment and Services if missing (existing ones are adopted)."
    ).tag(config=True)
    master_memory = Unicode("1Gi", help="Memory of the managed master's pod (at least 512Mi); its JVM "
                            "heap (SPARK_DAEMON_MEMORY): 3/4 of it, 256 MiB or more left.").tag(config=True)
    master_url = Unicode(
        help="The master workers register with. Default: the master Service's DNS name."
    ).tag(config=True)
    master_ui_url = Unicode(help="The master's web UI. Default: the master UI Service's DNS name.").tag(
        config=True)

    watch_timeout = Int(300, help="Seconds before a pod watch is renewed.").tag(config=True)
    setup_timeout = Float(30.0, help="Seconds to wait at start for the first list of pods (and for a "
                          "managed master's Deployment or Service being deleted to go).").tag(config=True)
    api_timeout = Float(30.0, help="Seconds before a Kubernetes API request gives up.").tag(config=True)
    # One active scaler per pool: the Lease jhub-spark-scaler-<pool> (backends/lease.py)
    lease_duration = Float(
        15.0, help="Seconds a standby scaler waits, after the pool's Lease was last renewed, before it "
        "takes over (client-go's LeaseDuration).").tag(config=True)
    lease_renew_deadline = Float(
        10.0, help="Seconds the active scaler goes on acting without renewing the Lease; less than "
        "lease_duration (client-go's RenewDeadline).").tag(config=True)
    lease_retry_period = Float(
        2.0, help="Seconds between renewals of the Lease, and between a standby's tries "
        "(client-go's RetryPeriod).").tag(config=True)

    @default("namespace")
    def _default_namespace(self) -> str:
        return default_namespace()

    @default("owner")
    def _default_owner(self) -> str:
        return f"Deployment/{self.master_name}"

    @default("pod_drain_timeout")
    def _default_pod_drain_timeout(self) -> int:
        return math.ceil(getattr(self.parent, "drain_timeout", 0) or 600)

    @default("default_cores")
    def _default_default_cores(self) -> int:
        return 2 * self.resources().cores

    @default("master_url")
    def _default_master_url(self) -> str:
        return master_url(self.master_name, self.namespace)

    @default("master_ui_url")
    def _default_master_ui_url(self) -> str:
        return master_ui_url(self.master_name, self.namespace)

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        revalidate(self, _CHECKS)
        if self.trait_has_value("default_cores"):  # configured: a computed one is not checked
            self.default_cores = self.default_cores
        self._logged, self._listed_uids = set(), {}

    _check = validator(_CHECKS, owner="KubernetesBackend")
    _check_computed = validator(_COMPUTED_CHECKS, owner="KubernetesBackend")

    @validate("pool")
    def _valid_pool(self, proposal):
        error = pod_selector_error(proposal.value)
        if error:
            raise TraitError(f"KubernetesBackend.pool {proposal.value!r}: {error}")
        return proposal.value

    @validate("owner")
    def _valid_owner(self, proposal):
        kind, _, name = proposal.value.partition("/")
        if proposal.value and (kind not in OWNER_RESOURCES or not name):
            raise TraitError(
                f"KubernetesBackend.owner {proposal.value!r} is not 'Kind/name' with Kind one of "
                f"{', '.join(OWNER_RESOURCES)} (or '' for no owner)"
            )
        return proposal.value

    # -- setup ---------------------------------------------------------------------

    #: an ownerReference for the worker pods, resolved from `owner` by setup()
    _owner: dict | None = None

    def resources(self) -> WorkerResources:
        """Spark's --cores/--memory and the container's resources; ConfigError if they do not fit."""
        try:
            return worker_resources(
                cpu_limit=self.cpu_limit, cpu_request=self.cpu_guarantee, memory_limit=self.memory_limit,
                memory_request=self.memory_guarantee, cores=self.worker_cores, memory=self.worker_memory,
                daemon_memory=self.daemon_memory, jvm_overhead=self.jvm_overhead,
            )
        except ValueError as e:
            raise ConfigError(str(e)) from None

    async def setup(self) -> None:
        self.resources()
        self._api_client = await make_api_client(self.kubeconfig, self.context)
        self.api = KubeApi(self._api_client, self.namespace, timeout=self.api_timeout)
        try:
            await self._check_permissions()
            if self.manage_master:
                await self._ensure_master()
            self._owner = await self._resolve_owner()
            self.cache = PodCache(self.api, pool_selector(self.pool), self._worker, self.log,
                                  watch_timeout=self.watch_timeout, keep=self._ours)
            self.cache.start()
            self.node_events = NodeEvents(self.api, self.log)
            await self.cache.wait_listed(self.setup_timeout)
        except BaseException:
            await self.shutdown()
            raise
        self.log.info("Kubernetes backend: pool %r in namespace %r, %d pods adopted", self.pool,
                      self.namespace, len(self.cache.items))

    def _needed_permissions(self) -> list[tuple[str, str, str, str]]:
        needed = list(WORKER_PERMISSIONS)
        if self.manage_master:
            needed += MASTER_PERMISSIONS
        if self.owner:
            kind, _, name = self.owner.partition("/")
            needed.append(("get", *OWNER_RESOURCES[kind], name))
        return needed

    def leadership(self) -> Lease:
        """One active scaler per pool: a Lease named for it, in the namespace (lease.py)."""
        timings = LeaseTimings(duration=self.lease_duration, renew_deadline=self.lease_renew_deadline,
                               retry_period=self.lease_retry_period)
        return Lease(name=lease_name(self.pool), namespace=self.namespace, timings=timings, log=self.log,
                     identity=f"{socket.gethostname()}_{os.getpid()}", connect=self._lease_api)

    def history_store(self) -> ConfigMapStore:
        """The pre-warm history in the pool's ConfigMap, which the admin creates (kube_history.py)."""
        return ConfigMapStore(api=lambda: self.api, name=history_name(self.pool), namespace=self.namespace)

    async def _lease_api(self) -> KubeApi:
        """A client of the Lease's own, once the pool's permissions are there (the first error an
        admin meets is the same as without a Lease)."""
        self.resources()  # settings that need no request are refused before any
        api_client = await make_api_client(self.kubeconfig, self.context)
        api = KubeApi(api_client, self.namespace, timeout=self.api_timeout)
        try:
            await self._check_permissions(api)
        except BaseException:
            await api.api_client.close()
            raise
        return api

    async def _check_permissions(self, api: KubeApi | None = None) -> None:
        missing = await (api or self.api).missing_permissions(self._needed_permissions())
        if missing:
            raise ConfigError(
                f"missing RBAC permissions in namespace {self.namespace!r}: {', '.join(missing)}; "
                "grant them to the scaler's service account (helm-values/rbac.yaml)"
            )

    async def _ensure_master(self) -> None:
        manifests = [
            master_deployment(name=self.master_name, namespace=self.namespace, image=self.image,
                              run_as_user=self.run_as_user, image_pull_policy=self.image_pull_policy,
                              memory=self.master_memory, default_cores=self.default_cores),
            *master_services(name=self.master_name, namespace=self.namespace),
        ]
        await ensure_master(self.api, manifests, log=self.log, timeout=self.setup_timeout)

    async def _resolve_owner(self) -> dict | None:
        if not self.owner:
            return None
        kind, _, name = self.owner.partition("/")
        try:
            return owner_reference(await self.api.read(kind, name))
        except NotFound:
            raise ConfigError(
                f"the owner {self.owner} of the worker pods does not exist in namespace {self.namespace!r}: "
                "set KubernetesBackend.owner to an existing 'Kind/name', or '' for none"
            ) from None

    #: (what, pod uid) already logged: a pod's problem is logged once, not at every event
    _logged: set[tuple[str, str]]

    def _log_once(self, what: str, pod: dict, message: str, *args) -> None:
        key = (what, pod["metadata"].get("uid", pod["metadata"]["name"]))
        if key not in self._logged:
            if len(self._logged) > 10_000:  # bounded, whatever comes and goes
                self._logged.clear()
            self._logged.add(key)
            self.log.warning(message, *args)

    def _ours(self, pod: dict) -> bool:
        """A pod with the pool's labels is ours only with our owner reference."""
        owner_uid = self._owner["uid"] if self._owner else ""
        if owned_by(pod, owner_uid):
            return True
        owners = ", ".join(f"{r.get('kind')}/{r.get('name')}" for r in pod["metadata"].get(
            "ownerReferences") or ()) or "none"
        self._log_once("owner", pod, "pod %s has the labels of pool %r but owner %s, not %s: "
                       "not adopted, never stopped (another scaler's pool of the same name?)",
                       pod["metadata"]["name"], self.pool, owners, self.owner or "none")
        return False

    def _worker(self, pod: dict) -> BackendWorker:
        bad = bad_retiring_mark(pod)
        if bad:
            self._log_once("mark", pod, "pod %s: annotation %s=%s is not a time: retiring, since unknown "
                           "(counted from the pod's creation); its drain goes on", pod["metadata"]["name"],
                           ANNOTATION_RETIRING, bad)
        return pod_worker(pod)

    async def shutdown(self) -> None:
        cache = getattr(self, "cache", None)
        if cache is not None:
            await cache.stop()
        api_client = getattr(self, "_api_client", None)
        if api_client is not None:
            await api_client.close()

    # -- the Backend interface -------------------------------------------------------

    def template(self) -> WorkerPodTemplate:
        return WorkerPodTemplate(
            namespace=self.namespace, pool=self.pool, image=self.image, master_url=self.master_url,
            resources=self.resources(), run_as_user=self.run_as_user,
            image_pull_policy=self.image_pull_policy, image_pull_secrets=tuple(self.image_pull_secrets),
            daemon_memory=self.daemon_memory,
            spark_conf={**self.spark_conf, **(SHUFFLE_SERVICE_ON if self.external_shuffle_service else {})},
            env=dict(self.extra_env), labels=dict(self.extra_labels),
            annotations=dict(self.extra_annotations), node_selector=dict(self.node_selector),
            tolerations=tuple(self.tolerations), affinity=dict(self.affinity), volumes=tuple(self.volumes),
            volume_mounts=tuple(self.volume_mounts), service_account=self.service_account,
            drain_seconds=self.pod_drain_timeout, stop_grace_period=self.stop_grace_period, owner=self._owner,
        )

    async def new_pod(self) -> dict:
        """The manifest of the next worker pod, after `modify_pod_hook`; BackendError if the
        hook's pod would escape the pool."""
        pod = worker_pod(self.template())
        if self.modify_pod_hook is not None:
            pod = self.modify_pod_hook(self, pod)
            if inspect.isawaitable(pod):
                pod = await pod
            error = hook_result_error(pod, namespace=self.namespace, pool=self.pool,
                                      owner_uid=self._owner["uid"] if self._owner else "")
            if error:
                raise BackendError(f"KubernetesBackend.modify_pod_hook {error}: no worker pod created")
        return pod

    #: the uid of each pod as the last list() saw it: stop() deletes that pod, not a later one
    _listed_uids: dict[str, str]

    async def list(self) -> list[BackendWorker]:
        await self.cache.forget_overdue()
        workers = self.cache.values()
        self._listed_uids = dict(self.cache.uids)
        return await self.node_events.read(workers, self._listed_uids)

    def _uid(self, name: str) -> str:
        return self._listed_uids.get(name) or self.cache.uids.get(name, "")

    async def start(self, n: int) -> list[BackendWorker]:
        pods = [await self.new_pod() for _ in range(n)]
        results = await asyncio.gather(*(self.api.create_pod(p) for p in pods), return_exceptions=True)
        started = []
        for result in results:
            if isinstance(result, dict):
                self.cache.put(result)
                self._listed_uids[result["metadata"]["name"]] = result["metadata"]["uid"]
                started.append(pod_worker(result))
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:
            raise BackendError(f"created {len(started)} of {n} worker pods: {errors[0]}")
        return started

    async def decommission(self, worker: BackendWorker) -> None:
        if worker.retiring_since is not None:
            return  # marked already (the reconciler re-sends the master's decommission itself)
        pod = await self.api.annotate_pod(worker.handle, {ANNOTATION_RETIRING: f"{clock.now():.3f}"},
                                          self._uid(worker.handle))
        self.cache.put(pod)

    async def stop(self, worker: BackendWorker) -> None:
        if worker.stopping:
            return
        try:
            pod = await self.api.delete_pod(worker.handle, self.stop_grace_period, self._uid(worker.handle))
        except NotFound:
            self.cache.remove(worker.handle)
            return
        except Conflict:  # another pod took the name: ours is gone, the new one is not ours to delete
            self.log.warning("pod %s was replaced by a pod of the same name: not deleted", worker.handle)
            return
        if pod.get("kind") == "Pod":
            self.cache.put(pod)
        else:  # a Status: deleted at once
            self.cache.remove(worker.handle)
