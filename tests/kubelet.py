"""A kubelet stand-in for tests: runs the pods of one namespace as local processes.

The test apiserver (tests/kube_cluster.py) has no scheduler and no kubelet. TestKubelet
watches the pods of a namespace and, for each new one: binds it to node `node_name`, gives
it a pod IP of its own from 127.0.2.1-127.0.2.254, runs its container's command as a local
process (in a process group of its own, output to a per-pod log file) and reports what a
kubelet reports in the pod's status. Paths under /opt/spark (a Spark image's SPARK_HOME)
map to the local Spark of the pyspark package; emptyDir volumes are per-pod directories.

Deleting a pod works as with a kubelet: SIGTERM to the process group, SIGKILL after the
pod's grace period, then the pod is deleted for good. A process that exits by itself makes
the pod Failed or Succeeded (restartPolicy is always treated as Never). `mode` makes the
pods seen from then on unschedulable or fail to pull their image; `kill(name)` kills a
pod's process behind everyone's back.

Supported: exactly one container with an explicit `command`, `env` with `value` and
`valueFrom.fieldRef`, emptyDir volumes. Anything else is reported like a kubelet would
(CreateContainerConfigError, StartError) rather than emulated. Lifecycle hooks are not run:
a deleted worker pod gets SIGTERM at once, without its preStop decommission
(tests/test_worker_pre_stop.py runs that hook in a real worker's PID namespace). `securityContext` is
ignored: the processes run as the test's user, with its capabilities and no seccomp
filter (tests/test_kube_security.py checks the pods' securityContext against the
apiserver's admission instead).

It is fast (a worker pod runs in well under a second) and stays where speed matters (the
soak, the backend's tests), but it models none of these, which the real node
(tests/kube_node.py, tests/test_real_node.py) has: a container runtime (no images, no
namespaces, no rootfs), cgroups and resource limits (nothing is enforced, so nothing is
ever OOMKilled), pod networking (loopback addresses instead of CNI-assigned pod IPs), the
scheduler (every pod is bound at once, with no resource fit and no Pending reasons of its
own), controllers (no ReplicaSets, Deployments or garbage collection of owned pods) and
PID 1 semantics (it signals the whole process group, not a container's PID 1).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import logging
import os
import re
import shutil
import signal
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import aiohttp
from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

log = logging.getLogger(__name__)

MODES = ("run", "unschedulable", "image-pull-error")
IMAGE_SPARK_HOME = "/opt/spark"  # SPARK_HOME in the apache/spark images
IP_PREFIX = "127.0.2."  # pod IPs: IP_PREFIX + 1..254
HOST_IP = "127.0.0.1"
_REFERENCE = re.compile(r"\$(\$|\(([^)]*)\))")
_RETRYABLE = (aiohttp.ClientError, OSError, asyncio.TimeoutError)


def expand(text: str, env: dict[str, str]) -> str:
    """Kubernetes' $(VAR) expansion: a defined VAR is replaced, an unknown $(X) stays, $$ is $."""
    def replace(m: re.Match) -> str:
        if m.group(1) == "$":
            return "$"
        return env.get(m.group(2), m.group(0))

    return _REFERENCE.sub(replace, text)


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _condition(kind: str, ok: bool, reason: str | None = None, message: str | None = None) -> dict:
    return {"type": kind, "status": "True" if ok else "False", "reason": reason, "message": message,
            "lastProbeTime": None, "lastTransitionTime": _now()}


async def _raw(call, *args, **kwargs) -> dict:
    """Call a kubernetes_asyncio API method; its JSON answer as a dict (no model classes,
    which cannot even read the answer of a binding). ApiException unless 2xx."""
    resp = await call(*args, _preload_content=False, **kwargs)
    async with resp:
        body = await resp.read()
    if not 200 <= resp.status <= 299:
        raise ApiException(status=resp.status, reason=body.decode(errors="replace"))
    return json.loads(body)


async def _first(*aws) -> None:
    """Wait until the first of `aws` is done; cancel the others."""
    tasks = [asyncio.ensure_future(a) for a in aws]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()


class _Gone(Exception):
    """The watch's resourceVersion is too old (410): list again."""


class Pod:
    """What the kubelet knows about one pod (pods are told apart by uid)."""

    def __init__(self, obj: dict, mode: str, workdir: Path):
        meta = obj["metadata"]
        self.name, self.uid, self.obj, self.mode = meta["name"], meta["uid"], obj, mode
        self.dir = workdir / f"{self.name}-{self.uid[:8]}"
        self.log_path = self.dir / "container.log"
        self.ip: str | None = None
        self.process: asyncio.subprocess.Process | None = None
        self.started_at = ""
        self.grace = 30.0  # deletionGracePeriodSeconds, once deleting
        self.deleting = asyncio.Event()  # metadata.deletionTimestamp is set
        self.gone = asyncio.Event()  # the pod object no longer exists
        self.task: asyncio.Task | None = None

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.returncode is None


class TestKubelet:
    """Runs the pods of `namespace` (default: the cluster's) as local processes, per-pod
    files under `workdir`. `await start()` returns once it watches (also: the `ready`
    future); `await stop()` ends every process it started."""

    __test__ = False  # not a test class, whatever its name

    def __init__(self, cluster, workdir: Path, *, namespace: str | None = None,
                 node_name: str = "test-node", spark_home: str | None = None, ip_prefix: str = IP_PREFIX,
                 start_delay: Callable[[str], float] | None = None):
        self.cluster = cluster
        # benchmarks only: seconds a bound pod (by name) waits before its process starts, as
        # a pod waits for a node to be added and its image pulled
        self.start_delay = start_delay
        self.ip_pool = [f"{ip_prefix}{i}" for i in range(1, 255)]
        self.namespace = namespace or cluster.namespace
        self.workdir = Path(workdir)
        self.node_name = node_name
        spec = importlib.util.find_spec("pyspark")
        self.spark_home = spark_home or os.path.dirname(spec.origin)
        java = os.environ.get("JAVA_HOME") and os.path.join(os.environ["JAVA_HOME"], "bin", "java")
        java = os.path.realpath(java or shutil.which("java") or "/usr/bin/java")
        self.java_home = os.path.dirname(os.path.dirname(java))
        self._mode = "run"
        self.pods: dict[str, Pod] = {}  # by uid, also after they are gone (uids are never reused)
        self.errors: list[str] = []  # what went wrong inside the kubelet (the fixture fails on any)
        self.ready: asyncio.Future | None = None
        self._next_ip = 0
        self._api: client.ApiClient | None = None
        self._core: client.CoreV1Api | None = None
        self._watcher: asyncio.Task | None = None

    @property
    def mode(self) -> str:
        """"run", "unschedulable" or "image-pull-error", for the pods seen from now on."""
        return self._mode

    @mode.setter
    def mode(self, value: str) -> None:
        if value not in MODES:
            raise ValueError(f"TestKubelet.mode: {value!r} is not one of {MODES}")
        self._mode = value

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self, timeout: float = 30) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._api = await self.cluster.api_client("admin")
        self._core = client.CoreV1Api(self._api)
        self.ready = asyncio.get_running_loop().create_future()
        self._watcher = asyncio.create_task(self._watch_loop())
        try:
            await asyncio.wait_for(asyncio.shield(self.ready), timeout)
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        """Stop watching; end every pod's processes (SIGTERM, SIGKILL after 5 s)."""
        tasks = [t for t in [self._watcher, *(p.task for p in self.pods.values())] if t]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for pod in self.pods.values():  # if a task was cancelled before its own cleanup ran
            if pod.running:
                self._signal(pod, signal.SIGKILL)
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(pod.process.wait(), 10)
        if self._api is not None:
            await self._api.close()
            self._api = None

    # -- for tests -------------------------------------------------------------------------

    def pod(self, name: str) -> Pod | None:
        """The latest pod of that name the kubelet has seen."""
        found = [p for p in self.pods.values() if p.name == name]
        return found[-1] if found else None

    def pid(self, name: str) -> int | None:
        """The pid of the pod's process while it runs."""
        pod = self.pod(name)
        return pod.process.pid if pod and pod.running else None

    def kill(self, name: str) -> None:
        """SIGKILL the pod's processes behind everyone's back; the pod then fails."""
        pod = self.pod(name)
        if not (pod and pod.running):
            raise ValueError(f"TestKubelet.kill: pod {name!r} has no running process")
        self._signal(pod, signal.SIGKILL)

    # -- the watch -------------------------------------------------------------------------

    async def _watch_loop(self) -> None:
        """List, then watch from the list's resourceVersion; list again after 410 Gone or
        any error (the apiserver may be away: retry with backoff up to 2 s)."""
        delay = 0.1
        while True:
            try:
                resource_version = await self._list()
                while True:
                    resource_version = await self._watch(resource_version)
                    delay = 0.1
            except _Gone:
                continue
            except (ApiException, *_RETRYABLE) as e:
                log.info("TestKubelet: watch failed (%r); listing again in %.1f s", e, delay)
            except Exception as e:
                log.exception("TestKubelet: watch")
                self.errors.append(f"watch: {e!r}")
            await asyncio.sleep(delay)
            delay = min(2 * delay, 2.0)

    async def _list(self) -> str:
        pods = await _raw(self._core.list_namespaced_pod, self.namespace)
        seen = set()
        for obj in pods["items"]:
            seen.add(obj["metadata"]["uid"])
            self._handle("ADDED", obj)
        for uid, pod in self.pods.items():
            if uid not in seen:
                pod.gone.set()
        return pods["metadata"]["resourceVersion"]

    async def _watch(self, resource_version: str) -> str:
        """Follow one watch request to its end; return the last resourceVersion seen."""
        resp = await self._core.list_namespaced_pod(
            self.namespace, watch=True, resource_version=resource_version, allow_watch_bookmarks=True,
            timeout_seconds=60, _preload_content=False,
            _request_timeout=aiohttp.ClientTimeout(total=None, sock_connect=5, sock_read=90))
        async with resp:
            if resp.status == 410:
                raise _Gone()
            if resp.status != 200:
                raise ApiException(status=resp.status, reason=(await resp.read()).decode(errors="replace"))
            if not self.ready.done():
                self.ready.set_result(None)
            async for line in resp.content:
                if not line.strip():
                    continue
                event = json.loads(line)
                obj = event["object"]
                if event["type"] == "ERROR":
                    if obj.get("code") == 410:
                        raise _Gone()
                    raise ApiException(status=obj.get("code", 0), reason=obj.get("message", ""))
                resource_version = obj["metadata"]["resourceVersion"]
                if event["type"] != "BOOKMARK":
                    self._handle(event["type"], obj)
        return resource_version

    def _handle(self, kind: str, obj: dict) -> None:
        meta = obj["metadata"]
        pod = self.pods.get(meta["uid"])
        if pod is None:
            if kind == "DELETED" or obj["status"].get("phase") in ("Succeeded", "Failed"):
                return
            # a pod bound before this kubelet started is some earlier kubelet's: only removed
            mode = "orphan" if obj["spec"].get("nodeName") else self.mode
            pod = self.pods[meta["uid"]] = Pod(obj, mode, self.workdir)
            pod.task = asyncio.create_task(self._life(pod))
        pod.obj = obj
        if kind == "DELETED":
            pod.gone.set()
        elif meta.get("deletionTimestamp"):
            pod.grace = float(meta.get("deletionGracePeriodSeconds") or 0)
            pod.deleting.set()

    # -- a pod's life ----------------------------------------------------------------------

    async def _life(self, pod: Pod) -> None:
        """Start the pod as its mode says; when it is deleted, stop its process, delete it."""
        try:
            await self._begin(pod)
            exited = [pod.process.wait()] if pod.process else []
            await _first(pod.deleting.wait(), pod.gone.wait(), *exited)
            if pod.process:  # it exited, or the pod is being deleted
                await self._terminate(pod)
                await self._patch_status(pod, self._terminated(pod))
                await _first(pod.deleting.wait(), pod.gone.wait())
            if not pod.gone.is_set():
                # (with a body, the apiserver ignores query parameters like grace_period_seconds)
                await self._api_call(self._core.delete_namespaced_pod, pod.name, self.namespace,
                                     body={"gracePeriodSeconds": 0, "preconditions": {"uid": pod.uid}})
        except asyncio.CancelledError:
            raise
        except Exception as e:
            log.exception("TestKubelet: pod %s", pod.name)
            self.errors.append(f"pod {pod.name}: {e!r}")
        finally:
            if pod.running:
                await self._terminate(pod, grace=5)

    async def _begin(self, pod: Pod) -> None:
        if pod.mode == "orphan":
            return
        if pod.mode == "unschedulable":
            await self._patch_status(pod, {"phase": "Pending", "conditions": [_condition(
                "PodScheduled", False, "Unschedulable", "0/1 nodes are available: 1 Insufficient cpu.")]})
            return
        bound = await self._api_call(self._core.create_namespaced_pod_binding, pod.name, self.namespace, {
            "apiVersion": "v1", "kind": "Binding", "metadata": {"name": pod.name, "uid": pod.uid},
            "target": {"apiVersion": "v1", "kind": "Node", "name": self.node_name}})
        if bound is None:  # deleted meanwhile
            return
        pod.ip = self._allocate_ip()
        spec = pod.obj["spec"]
        if len(spec["containers"]) != 1:
            await self._patch_status(pod, self._waiting(
                pod, "CreateContainerConfigError", "the test kubelet runs pods of exactly one container"))
            return
        container = spec["containers"][0]
        if pod.mode == "image-pull-error":
            image = container["image"]
            await self._patch_status(pod, self._waiting(pod, "ErrImagePull", (
                f'rpc error: code = NotFound desc = failed to pull and unpack image "{image}": '
                f'failed to resolve reference "{image}": {image}: not found')))
            return
        try:
            argv, env, cwd = self._container_process(pod, container)
        except ValueError as e:
            await self._patch_status(pod, self._waiting(pod, "CreateContainerConfigError", str(e)))
            return
        if self.start_delay and not await self._started_late(pod):
            return
        pod.started_at = _now()
        with open(pod.log_path, "ab") as out:
            try:
                pod.process = await asyncio.create_subprocess_exec(
                    *argv, env=env, cwd=cwd, stdin=asyncio.subprocess.DEVNULL, stdout=out,
                    stderr=asyncio.subprocess.STDOUT, start_new_session=True)
            except OSError as e:
                out.write(f"test kubelet: cannot start {argv}: {e}\n".encode())
                await self._patch_status(pod, self._terminated(pod, start_error=str(e)))
                return
        log.info("TestKubelet: pod %s runs as pid %d on %s", pod.name, pod.process.pid, pod.ip)
        running = {"running": {"startedAt": pod.started_at}}
        await self._patch_status(pod, self._status(pod, "Running", running))

    async def _started_late(self, pod: Pod) -> bool:
        """Wait the pod's start delay; False if it was deleted meanwhile."""
        delay = self.start_delay(pod.name)
        log.info("TestKubelet: pod %s starts %.1f s late", pod.name, delay)
        await _first(asyncio.sleep(delay), pod.deleting.wait(), pod.gone.wait())
        return not (pod.deleting.is_set() or pod.gone.is_set())

    def _allocate_ip(self) -> str:
        """The next address of the pool that no pod holds (round-robin: a freed address is
        reused as late as possible, as the Spark master may still remember it)."""
        taken = {p.ip for p in self.pods.values() if p.ip and not (p.gone.is_set() and p.task.done())}
        for _ in self.ip_pool:
            ip = self.ip_pool[self._next_ip]
            self._next_ip = (self._next_ip + 1) % len(self.ip_pool)
            if ip not in taken:
                return ip
        raise RuntimeError("TestKubelet: all pod IPs are taken")

    def _container_process(self, pod: Pod, container: dict) -> tuple[list[str], dict, str]:
        """argv, environment and working directory as a kubelet would give the container,
        with paths of the image and of emptyDir volumes mapped to local ones."""
        pod.dir.mkdir(parents=True, exist_ok=True)
        emptydirs = {v["name"] for v in pod.obj["spec"].get("volumes", []) if "emptyDir" in v}
        paths = {IMAGE_SPARK_HOME: self.spark_home}
        for mount in container.get("volumeMounts", []):
            if mount["name"] not in emptydirs:
                raise ValueError(f"volume {mount['name']!r}: the test kubelet has only emptyDir volumes")
            paths[mount["mountPath"].rstrip("/")] = str(pod.dir / "volumes" / mount["name"])
            os.makedirs(paths[mount["mountPath"].rstrip("/")], exist_ok=True)

        def local(value: str) -> str:
            for path in sorted(paths, key=len, reverse=True):
                if value == path or value.startswith(path + "/"):
                    return paths[path] + value[len(path):]
            return value

        env = {}  # a value may refer to the variables before it
        for var in container.get("env", []):
            if "value" in var:
                env[var["name"]] = expand(var["value"], env)
            elif "fieldRef" in var.get("valueFrom", {}):
                env[var["name"]] = self._field(pod, var["valueFrom"]["fieldRef"]["fieldPath"])
            else:
                raise ValueError(f"env {var['name']}: the test kubelet supports only value and fieldRef")
        if not container.get("command"):
            raise ValueError("the test kubelet needs an explicit command (it does not know the image)")
        argv = [local(expand(a, env)) for a in container["command"] + container.get("args", [])]
        cwd = pod.dir / "workdir"
        cwd.mkdir(exist_ok=True)
        image_env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "JAVA_HOME": self.java_home,
                     "SPARK_HOME": IMAGE_SPARK_HOME, "HOME": str(cwd), "HOSTNAME": pod.name}
        env = {k: local(v) for k, v in {**image_env, **env}.items()}
        return argv, env, local(container.get("workingDir") or str(cwd))

    def _field(self, pod: Pod, path: str) -> str:
        values = {
            "metadata.name": pod.name, "metadata.namespace": self.namespace, "metadata.uid": pod.uid,
            "spec.nodeName": self.node_name, "spec.serviceAccountName": pod.obj["spec"].get(
                "serviceAccountName", ""),
            "status.podIP": pod.ip, "status.hostIP": HOST_IP,
        }
        if path not in values:
            raise ValueError(f"fieldRef {path}: not supported by the test kubelet")
        return values[path]

    async def _terminate(self, pod: Pod, grace: float | None = None) -> None:
        """SIGTERM the pod's process group if it runs; SIGKILL after the grace period (the
        pod's, shortened to 0 if the pod is force-deleted meanwhile). Then kill whatever is
        left in the group, as a container runtime does when the main process ends."""
        start = time.monotonic()
        if pod.running:
            self._signal(pod, signal.SIGTERM)
        while pod.running:
            limit = 0 if pod.gone.is_set() else grace if grace is not None else pod.grace
            if time.monotonic() - start >= limit:
                break
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.shield(pod.process.wait()), 0.1)
        self._signal(pod, signal.SIGKILL)
        await asyncio.wait_for(pod.process.wait(), 10)

    @staticmethod
    def _signal(pod: Pod, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pod.process.pid, sig)

    # -- status ----------------------------------------------------------------------------

    def _status(self, pod: Pod, phase: str, state: dict, reason: str | None = None) -> dict:
        """The status a kubelet reports for a pod whose one container is in `state`:
        {"running": ...}, {"waiting": ...} or {"terminated": ...}."""
        container = pod.obj["spec"]["containers"][0]
        ready, message = "running" in state, None
        if not (ready or reason):
            reason, message = "ContainersNotReady", f"containers with unready status: [{container['name']}]"
        status = {
            "name": container["name"], "image": container["image"], "ready": ready, "started": ready,
            "restartCount": 0, "state": state,
            "imageID": "" if "waiting" in state else f"test-kubelet://{container['image']}",
        }
        if pod.process:
            status["containerID"] = f"test-kubelet://{pod.process.pid}"
        return {
            "phase": phase, "hostIP": HOST_IP, "podIP": pod.ip, "podIPs": [{"ip": pod.ip}],
            "startTime": pod.obj["status"].get("startTime") or _now(),
            "conditions": [
                _condition("Initialized", True), _condition("PodScheduled", True),
                _condition("Ready", ready, reason, message),
                _condition("ContainersReady", ready, reason, message),
            ],
            "containerStatuses": [status],
        }

    def _waiting(self, pod: Pod, reason: str, message: str) -> dict:
        return self._status(pod, "Pending", {"waiting": {"reason": reason, "message": message}})

    def _terminated(self, pod: Pod, start_error: str | None = None) -> dict:
        code = 128 if start_error else pod.process.returncode
        code = 128 - code if code < 0 else code  # killed by a signal: 128 + its number
        reason = "StartError" if start_error else "Completed" if code == 0 else "Error"
        return self._status(pod, "Succeeded" if code == 0 else "Failed", {"terminated": {
            "exitCode": code, "reason": reason, "message": start_error,
            "startedAt": pod.started_at or _now(), "finishedAt": _now()}},
            reason="PodCompleted" if code == 0 else None)

    async def _patch_status(self, pod: Pod, status: dict) -> None:
        await self._api_call(self._core.patch_namespaced_pod_status, pod.name, self.namespace,
                             {"metadata": {"uid": pod.uid}, "status": status})

    async def _api_call(self, call, *args, timeout: float = 120, **kwargs) -> dict | None:
        """`call` through `_raw`, retried while the apiserver is away (bounded); None if the
        pod is gone (404) or is another pod of the same name now (409)."""
        deadline, delay = time.monotonic() + timeout, 0.1
        while True:
            try:
                return await _raw(call, *args, **kwargs)
            except ApiException as e:
                if e.status in (404, 409):
                    return None
                if e.status < 500 and e.status != 429 or time.monotonic() > deadline:
                    raise
            except _RETRYABLE:
                if time.monotonic() > deadline:
                    raise
            await asyncio.sleep(delay)
            delay = min(2 * delay, 2.0)
