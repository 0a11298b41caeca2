"""Worker pods as plain manifests, and pods read back as `BackendWorker`s. Pure.

The pod runs the worker JVM as the container's process (`spark-class` execs
java, no shell wrapper left to swallow SIGTERM) with `--host` = the pod IP from
the downward API, so the master's `host` for a worker is its pod's IP.

A worker registers at the master URL it is given (by default the master Service's
DNS name) and prefers it when it reconnects (`spark.worker.preferConfiguredMasterAddress`,
Spark 2.2.1 and later): when the master's pod is replaced the worker finds the new
one through the Service instead of retrying the old pod's IP until it is removed
as unregistered.

A pod deleted by anyone (a node drain, `kubectl delete pod`, the scaler) first runs
its preStop hook, which decommissions the worker and waits, for at most
`drain_seconds`, until its executors have left; terminationGracePeriodSeconds covers
that wait plus the JVM's exit, so executors move instead of being lost.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from datetime import datetime

from ..model import BackendWorker, NodeWait

WORKER_CLASS = "org.apache.spark.deploy.worker.Worker"
CONTAINER = "spark-worker"
WORKER_PORT = 7078
WORKER_UI_PORT = 8081
WORK_DIR = "/spark-work"

LABEL_APP = "app.kubernetes.io/name"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
LABEL_POOL = "jhub-spark-scaler/pool"
MANAGED_BY = "jhub-spark-scaler"
#: set when the scaler decommissions the worker: the drain survives a restart of the scaler
ANNOTATION_RETIRING = "jhub-spark-scaler/retiring-since"

#: memory a Spark daemon JVM uses beside its heap (metaspace, thread stacks, code cache, GC)
DAEMON_OVERHEAD_MIB = 256

_SUFFIXES = {
    "n": 1e-9, "u": 1e-6, "m": 1e-3, "": 1.0, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15, "E": 1e18,
    "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60,
}
_QUANTITY = re.compile(r"^([0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE]([-+]?[0-9]+))?"
                       r"(n|u|m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?$")
_SPARK_SIZE = re.compile(r"^([0-9]+)([kmgt]?)b?$", re.IGNORECASE)


def parse_quantity(text: str | int | float) -> float:
    """A Kubernetes quantity ("1500m", "2Gi", "0.5") as a number; ValueError if malformed."""
    match = _QUANTITY.match(str(text).strip())
    if not match:
        raise ValueError(f"{text!r} is not a Kubernetes quantity (like 2, 500m, 4Gi)")
    number, exponent, suffix = match.groups()
    return float(number) * (10 ** int(exponent) if exponent else 1) * _SUFFIXES[suffix or ""]


def spark_size_mib(text: str) -> int:
    """A Spark/JVM size ("512m", "2g") in MiB; ValueError if malformed."""
    match = _SPARK_SIZE.match(text.strip())
    if not match:
        raise ValueError(f"{text!r} is not a Spark memory size (like 512m, 2g)")
    number, unit = int(match.group(1)), match.group(2).lower()
    return {"": number // 2**20, "k": number // 1024, "m": number, "g": number * 1024,
            "t": number * 2**20}[unit]


@dataclass(frozen=True, slots=True)
class WorkerResources:
    """What Spark is told (`--cores`, `--memory`) and what the container gets."""

    cores: int
    memory_mib: int
    cpu_limit: str
    cpu_request: str
    memory_limit: str
    memory_request: str


def worker_resources(
    *, cpu_limit: str, cpu_request: str, memory_limit: str, memory_request: str,
    cores: int, memory: str, daemon_memory: str, jvm_overhead: float,
) -> WorkerResources:
    """Derive Spark's `--cores`/`--memory` from the container resources, or check
    the configured ones against them, so that the worker and its executors fit the
    memory limit: limit >= daemon heap + DAEMON_OVERHEAD_MIB + memory * (1 + jvm_overhead).

    Raises ValueError naming the KubernetesBackend setting to change.
    """
    try:
        cpu = parse_quantity(cpu_limit)
        limit_mib = parse_quantity(memory_limit) / 2**20
        parse_quantity(cpu_request or cpu_limit)
        parse_quantity(memory_request or memory_limit)
    except ValueError as e:
        raise ValueError(f"KubernetesBackend cpu/memory limit or guarantee: {e}") from None
    try:
        daemon_mib = spark_size_mib(daemon_memory)
    except ValueError as e:
        raise ValueError(f"KubernetesBackend.daemon_memory: {e}") from None
    fits_mib = math.floor((limit_mib - daemon_mib - DAEMON_OVERHEAD_MIB) / (1 + jvm_overhead))
    if fits_mib < 256:
        raise ValueError(
            f"KubernetesBackend.memory_limit {memory_limit} leaves {max(fits_mib, 0)} MiB for executors "
            f"after the worker daemon ({daemon_memory} heap + {DAEMON_OVERHEAD_MIB} MiB): raise memory_limit"
        )
    if memory:
        try:
            memory_mib = spark_size_mib(memory)
        except ValueError as e:
            raise ValueError(f"KubernetesBackend.worker_memory: {e}") from None
        if memory_mib > fits_mib:
            raise ValueError(
                f"KubernetesBackend.worker_memory {memory} does not fit memory_limit {memory_limit} "
                f"(at most {fits_mib}m after the worker daemon and JVM overhead): "
                "raise memory_limit or lower worker_memory"
            )
    else:
        memory_mib = fits_mib
    if cores and cores > math.ceil(cpu):
        raise ValueError(
            f"KubernetesBackend.worker_cores {cores} exceeds cpu_limit {cpu_limit}: "
            "raise cpu_limit or lower worker_cores"
        )
    return WorkerResources(
        cores=cores or max(1, math.floor(cpu)),
        memory_mib=memory_mib,
        cpu_limit=cpu_limit,
        cpu_request=cpu_request or cpu_limit,
        memory_limit=memory_limit,
        memory_request=memory_request or memory_limit,
    )


@dataclass(frozen=True)
class WorkerPodTemplate:
    """Everything a worker pod is made from (KubernetesBackend's settings)."""

    namespace: str
    pool: str
    image: str
    master_url: str
    resources: WorkerResources
    run_as_user: int
    image_pull_policy: str = "IfNotPresent"
    image_pull_secrets: tuple[str, ...] = ()
    daemon_memory: str = "256m"
    spark_conf: dict = field(default_factory=dict)
    env: dict = field(default_factory=dict)
    labels: dict = field(default_factory=dict)
    annotations: dict = field(default_factory=dict)
    node_selector: dict = field(default_factory=dict)
    tolerations: tuple = ()
    affinity: dict = field(default_factory=dict)
    volumes: tuple = ()
    volume_mounts: tuple = ()
    service_account: str = ""
    #: the longest the preStop hook waits for the executors to leave a deleted pod
    drain_seconds: int = 0
    #: seconds the worker JVM gets to exit after the hook (SIGTERM, then SIGKILL)
    stop_grace_period: int = 30
    owner: dict | None = None  # an ownerReference

    @property
    def termination_grace_period(self) -> int:
        """The pod's terminationGracePeriodSeconds: the kubelet counts the preStop hook in it."""
        return self.drain_seconds + self.stop_grace_period


_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


def pod_selector_error(pool: str) -> str:
    """Why `pool` cannot name a pool ("" if it can): it is a label value and part of pod names."""
    if not _DNS_LABEL.match(pool) or len(pool) > 40:
        return "use 1-40 lowercase letters, digits and '-', starting and ending with a letter or digit"
    return ""


def pod_security_context(run_as_user: int) -> dict:
    """The pod half of Pod Security Standards `restricted`: never root (a numeric user, so the
    kubelet can check it without reading the image), the container runtime's seccomp profile."""
    return {"runAsNonRoot": True, "runAsUser": run_as_user, "seccompProfile": {"type": "RuntimeDefault"}}


def container_security_context() -> dict:
    """The container half of `restricted`: no capabilities, no setuid gains."""
    return {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}


def pool_labels(pool: str) -> dict[str, str]:
    """The labels that make a pod one of this scaler's workers (and nobody else's)."""
    return {LABEL_APP: "spark-worker", LABEL_MANAGED_BY: MANAGED_BY, LABEL_POOL: pool}


def pool_selector(pool: str) -> str:
    return ",".join(f"{k}={v}" for k, v in pool_labels(pool).items())


#: the worker conf of `Backend.external_shuffle_service`: each worker JVM runs the service (port
#: spark.shuffle.service.port, 7337), which serves its executors' shuffle files after they leave
SHUFFLE_SERVICE_ON = {"spark.shuffle.service.enabled": "true"}


#: what a worker runs with unless KubernetesBackend.spark_conf says otherwise: decommission
#: (SIGPWR, the master's /workers/kill/), and reconnecting to the configured master URL (the
#: Service) rather than the address the master announced (a replaced pod's IP); Spark before
#: 2.2.1 ignores the second, and its workers retry the old IP until the scaler removes them
WORKER_CONF = {"spark.decommission.enabled": "true", "spark.worker.preferConfiguredMasterAddress": "true"}
#: matches every executor JVM's command line, and not the hook's own (the brackets)
_EXECUTOR_PATTERN = "CoarseGrainedExecutorBacken[d]"


def _java_options(conf: dict) -> str:
    options = {**WORKER_CONF, **conf}
    return " ".join(f"-D{key}={value}" for key, value in options.items())


def pre_stop_command(drain_seconds: int) -> list[str]:
    """The worker container's preStop hook, a plain sh command the Spark images can run.
    PID 1 is the worker JVM (the container's command is spark-class, which execs java; an
    image whose entrypoint is tini forwards the signal to its child): SIGPWR decommissions
    it, as the master's /workers/kill/ does. It then waits, a second at a time and at most
    `drain_seconds`, until no executor JVM (a child of the worker) is left in the
    container. The kubelet sends SIGTERM when the hook returns."""
    script = (f"kill -PWR 1; i=0; while [ $i -lt {drain_seconds} ] && "
              f"grep -qs '{_EXECUTOR_PATTERN}' /proc/[0-9]*/cmdline; do sleep 1; i=$((i+1)); done")
    return ["/bin/sh", "-c", script]


#: The worker container's variables the scaler sets, in order (SPARK_LOCAL_IP refers to
#: SPARK_WORKER_HOST): the pod's address, its work directory, the checked daemon heap, and
#: the options that enable decommissioning. Extra variables may not replace them.
SCALER_ENV = ("SPARK_WORKER_HOST", "SPARK_LOCAL_IP", "SPARK_WORKER_DIR", "SPARK_DAEMON_MEMORY",
              "SPARK_WORKER_OPTS")


def worker_pod(t: WorkerPodTemplate) -> dict:
    """The manifest of one new worker pod (the apiserver names it: generateName)."""
    ours = {
        "SPARK_WORKER_HOST": {"valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
        "SPARK_LOCAL_IP": {"value": "$(SPARK_WORKER_HOST)"},
        "SPARK_WORKER_DIR": {"value": WORK_DIR},
        "SPARK_DAEMON_MEMORY": {"value": t.daemon_memory},
        "SPARK_WORKER_OPTS": {"value": _java_options(t.spark_conf)},
    }
    env = [*({"name": name, **ours[name]} for name in SCALER_ENV),
           *({"name": k, "value": str(v)} for k, v in sorted(t.env.items()))]
    r = t.resources
    container = {
        "name": CONTAINER,
        "image": t.image,
        "imagePullPolicy": t.image_pull_policy,
        "command": [
            "/opt/spark/bin/spark-class", WORKER_CLASS,
            "--host", "$(SPARK_WORKER_HOST)", "--port", str(WORKER_PORT),
            "--webui-port", str(WORKER_UI_PORT),
            "--cores", str(r.cores), "--memory", f"{r.memory_mib}m",
            t.master_url,
        ],
        "env": env,
        "ports": [
            {"name": "worker", "containerPort": WORKER_PORT},
            {"name": "worker-ui", "containerPort": WORKER_UI_PORT},
        ],
        "resources": {
            "requests": {"cpu": r.cpu_request, "memory": r.memory_request},
            "limits": {"cpu": r.cpu_limit, "memory": r.memory_limit},
        },
        "volumeMounts": [{"name": "spark-work", "mountPath": WORK_DIR}, *t.volume_mounts],
        "securityContext": container_security_context(),
        "lifecycle": {"preStop": {"exec": {"command": pre_stop_command(t.drain_seconds)}}},
    }
    spec = {
        "restartPolicy": "Never",
        "securityContext": pod_security_context(t.run_as_user),
        "terminationGracePeriodSeconds": t.termination_grace_period,
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,  # no SPARK_MASTER_* variables from the master's Services
        "containers": [container],
        "volumes": [{"name": "spark-work", "emptyDir": {}}, *t.volumes],
    }
    if t.service_account:
        spec["serviceAccountName"] = t.service_account
    if t.image_pull_secrets:
        spec["imagePullSecrets"] = [{"name": s} for s in t.image_pull_secrets]
    if t.node_selector:
        spec["nodeSelector"] = dict(t.node_selector)
    if t.tolerations:
        spec["tolerations"] = list(t.tolerations)
    if t.affinity:
        spec["affinity"] = dict(t.affinity)
    metadata = {
        "generateName": f"spark-worker-{t.pool}-",
        "namespace": t.namespace,
        "labels": {**t.labels, **pool_labels(t.pool)},
    }
    if t.annotations:
        metadata["annotations"] = dict(t.annotations)
    if t.owner:
        metadata["ownerReferences"] = [t.owner]
    return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": spec}


def owner_reference(obj: dict) -> dict:
    """An ownerReference to `obj` (as read from the apiserver): deleting it deletes the pods."""
    return {
        "apiVersion": obj["apiVersion"],
        "kind": obj["kind"],
        "name": obj["metadata"]["name"],
        "uid": obj["metadata"]["uid"],
    }


def owned_by(pod: dict, owner_uid: str) -> bool:
    """Whether `pod` has an owner reference to `owner_uid` ("": whether it has no owner)."""
    refs = pod["metadata"].get("ownerReferences") or ()
    return any(r.get("uid") == owner_uid for r in refs) if owner_uid else not refs


def hook_result_error(pod, *, namespace: str, pool: str, owner_uid: str) -> str:
    """Why the pod `modify_pod_hook` returned must not be created ("" if it may): without
    the pool's labels, its owner or in another namespace it would be a pod the scaler never
    sees again, outside max_workers; with a fixed name only the first such pod could exist."""
    if not isinstance(pod, dict) or pod.get("kind") != "Pod" or not isinstance(pod.get("metadata"), dict):
        return f"returned {type(pod).__name__}, not a Pod manifest (a dict)"
    metadata = pod["metadata"]
    labels = metadata.get("labels") or {}
    lost = sorted(k for k, v in pool_labels(pool).items() if labels.get(k) != v)
    if lost:
        return f"removed or changed the pool's labels {', '.join(lost)}"
    if metadata.get("namespace", namespace) != namespace:
        return f"moved the pod to namespace {metadata['namespace']!r} (the pool's is {namespace!r})"
    if not owned_by(pod, owner_uid):
        return "changed the pod's owner references (the pool's pods are told apart by their owner)"
    if metadata.get("name"):
        return f"set the fixed name {metadata['name']!r} (worker pods are named by generateName)"
    return ""


def bad_retiring_mark(pod: dict) -> str:
    """The pod's retiring annotation, quoted, when it is there but not a time ("" otherwise)."""
    mark = (pod["metadata"].get("annotations") or {}).get(ANNOTATION_RETIRING)
    if mark is None:
        return ""
    try:
        return "" if math.isfinite(float(mark)) else repr(mark)
    except ValueError:
        return repr(mark)


def _retiring_since(mark: str | None, created_at: float) -> float | None:
    """When the worker was marked retiring. A mark that is not a time still means
    retiring (someone marked it, the drain must go on): since the pod's creation, so the
    drain is not cut short and the worker is never taken for an idle one."""
    if mark is None:
        return None
    try:
        since = float(mark)
    except ValueError:
        return created_at
    return since if math.isfinite(since) else created_at


def _timestamp(text: str | None) -> float:
    if not text:
        return 0.0
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def pod_problem(pod: dict) -> str:
    """Why a pod does not run, or its container ended, in the pod's own words ("" when
    nothing is wrong)."""
    status = pod.get("status") or {}
    for c in status.get("containerStatuses") or ():
        state = c.get("state") or {}
        waiting = state.get("waiting")
        if waiting and waiting.get("reason") not in (None, "ContainerCreating", "PodInitializing"):
            return f"{waiting['reason']}: {waiting.get('message', '')}".rstrip(": ")
        # the runtime's reason (OOMKilled, Error) for a container that ended, or ended before a restart
        ended = state.get("terminated") or (c.get("lastState") or {}).get("terminated")
        if ended and ended.get("reason") not in (None, "Completed"):
            return f"{ended['reason']}: exit code {ended.get('exitCode')}"
    for cond in status.get("conditions") or ():
        if cond.get("type") == "PodScheduled" and cond.get("status") == "False":
            return f"{cond.get('reason', 'Unschedulable')}: {cond.get('message', '')}".rstrip(": ")
    if status.get("phase") == "Failed":
        return f"pod failed: {status.get('reason') or status.get('message') or 'container exited'}"
    return ""


def _unplaced(pod: dict) -> bool:
    """Whether the scheduler has said it cannot place the pod (PodScheduled False)."""
    return any(c.get("type") == "PodScheduled" and c.get("status") == "False"
               for c in (pod.get("status") or {}).get("conditions") or ())


def pod_worker(pod: dict) -> BackendWorker:
    """One of our pods as the reconciler sees it. Terminating and finished pods are
    not running; the retiring mark comes from the pod's annotation (one that is not a
    time: retiring since the pod's creation)."""
    metadata, status = pod["metadata"], pod.get("status") or {}
    host = status.get("podIP") or ""
    retiring = (metadata.get("annotations") or {}).get(ANNOTATION_RETIRING)
    deleting = bool(metadata.get("deletionTimestamp"))
    ui_host = f"[{host}]" if ":" in host else host  # IPv6 pod IPs
    created_at = _timestamp(metadata.get("creationTimestamp"))
    return BackendWorker(
        handle=metadata["name"],
        host=host,
        created_at=created_at,
        running=status.get("phase") not in ("Succeeded", "Failed") and not deleting,
        port=WORKER_PORT,
        webui_url=f"http://{ui_host}:{WORKER_UI_PORT}" if host else "",
        retiring_since=_retiring_since(retiring, created_at),
        problem=pod_problem(pod),
        stopping=deleting,
        node=NodeWait.UNPLACED if _unplaced(pod) else NodeWait.NONE,
    )
