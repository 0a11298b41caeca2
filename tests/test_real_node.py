"""What the stand-in kubelet (tests/kubelet.py) cannot show, on the real node
(tests/kube_node.py): memory limits in real cgroups, OOM kills by the real runtime, pod IPs
from the CNI bridge, the real scheduler's reasons, the real controllers' Deployments and
garbage collection, and signals to PID 1 of a container."""

from __future__ import annotations

import asyncio
import ipaddress
import time
from pathlib import Path

import aiohttp
import pytest
from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

from jhub_spark_scaler.backends.worker_pod import owner_reference, pod_problem

from .kube_node import BUSYBOX_IMAGE, RealNode, install, node_installed
from .node_dns import cluster_dns, service_name  # noqa: F401 (a fixture)
from .node_host import KUBELET_SYSCTLS
from .waiting import always, until

pytestmark = pytest.mark.timeout(300)


def busybox_pod(name: str, script: str, *, memory: str | None = None, grace: int = 30,
                labels: dict | None = None) -> dict:
    """A pod that runs `script` with busybox's sh as the container's PID 1 (every $ escaped
    from Kubernetes' $(VAR) expansion, so $$ is the shell's PID)."""
    container = {"name": "main", "image": BUSYBOX_IMAGE, "imagePullPolicy": "Never",
                 "command": ["sh", "-c", script.replace("$", "$$")]}
    if memory:
        container["resources"] = {"limits": {"memory": memory}}
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "labels": labels or {"test": name}},
            "spec": {"restartPolicy": "Never", "terminationGracePeriodSeconds": grace,
                     "containers": [container]}}


class Inbox:
    """A TCP server on the node's host address: every connection's data, as one line each."""

    def __init__(self):
        self.lines: asyncio.Queue[str] = asyncio.Queue()
        self.server: asyncio.base_events.Server | None = None

    async def start(self, host: str) -> int:
        async def handle(reader, writer):
            data = await reader.read(4096)
            await self.lines.put(data.decode(errors="replace").strip())
            writer.close()

        self.server = await asyncio.start_server(handle, host, 0)
        return self.server.sockets[0].getsockname()[1]

    async def next(self, timeout: float) -> str:
        return await asyncio.wait_for(self.lines.get(), timeout)

    def close(self) -> None:
        self.server.close()


@pytest.fixture
async def inbox(real_node):
    box = Inbox()
    box.port = await box.start(real_node.host_address)
    try:
        yield box
    finally:
        box.close()


@pytest.fixture
async def core(real_node):
    """The real node's CoreV1Api as "admin". What a test leaves on the node, even failing,
    is deleted after it: every test starts on an empty node."""
    async with await real_node.api_client("admin") as api:
        yield client.CoreV1Api(api)
    await real_node.delete_workloads()


async def pod_dict(core, name: str, namespace: str) -> dict | None:
    try:
        pod = await core.read_namespaced_pod(name, namespace)
    except ApiException as e:
        if e.status == 404:
            return None
        raise
    return core.api_client.sanitize_for_serialization(pod)


async def running(core, name: str, namespace: str, timeout: float = 90) -> dict:
    async def check():
        pod = await pod_dict(core, name, namespace)
        phase = (pod or {}).get("status", {}).get("phase")
        assert phase not in ("Failed", "Succeeded"), f"pod {name} ended: {pod['status']}"
        return pod if phase == "Running" else None

    try:
        return await until(check, timeout=timeout, what=f"pod {name} to run", interval=0.3)
    except AssertionError as e:
        status = (await pod_dict(core, name, namespace) or {}).get("status")
        raise AssertionError(f"{e}; its status: {status}") from None


async def test_memory_limit_in_cgroup_and_pod_network(real_node, core, inbox):
    ns = real_node.namespace
    script = (f"echo hello-from-$$ | nc -w 5 {real_node.host_address} {inbox.port}; "
              "mkdir -p /www && echo page > /www/index.html && exec httpd -f -p 8080 -h /www")
    await core.create_namespaced_pod(ns, busybox_pod("limited", script, memory="64Mi"))
    pod = await running(core, "limited", ns)

    assert ipaddress.ip_address(pod["status"]["podIP"]) in real_node.subnet
    assert await inbox.next(timeout=30) == "hello-from-1"  # the pod reached the host; sh was PID 1

    container_id = pod["status"]["containerStatuses"][0]["containerID"].split("://")[1]
    memory = next(d for d in real_node.cgroups.dirs if d.parent.name == "memory")
    limits = list(memory.rglob(f"pod{pod['metadata']['uid']}/{container_id}/memory.limit_in_bytes"))
    assert len(limits) == 1, limits
    assert int(limits[0].read_text()) == 64 * 1024 * 1024

    async with aiohttp.ClientSession() as http:  # the host reaches the pod
        async def page():
            async with http.get(f"http://{pod['status']['podIP']}:8080/index.html") as r:
                return await r.text()

        assert (await until(page, timeout=20, what="the pod's httpd", ignore=(aiohttp.ClientError,))
                ).strip() == "page"
    await core.delete_namespaced_pod("limited", ns, grace_period_seconds=0)


async def test_a_pod_reaches_a_service_by_its_short_name(real_node, core, inbox, cluster_dns):  # noqa: F811
    """The stand-in DNS (tests/node_dns.py): in a pod, a Service's name, completed by the pod's
    search path, resolves to its ready pod; a name outside the cluster domain answers NXDOMAIN."""
    ns = real_node.namespace
    await core.create_namespaced_pod(ns, busybox_pod(
        "web", "mkdir -p /www && echo page > /www/index.html && exec httpd -f -p 8080 -h /www", grace=1))
    web = await running(core, "web", ns)
    service = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"},
               "spec": {"selector": {"test": "web"}, "ports": [{"port": 8080}]}}
    await core.create_namespaced_service(ns, service)
    try:
        async def resolved():
            return await cluster_dns.lookup(service_name("web", ns)) == [web["status"]["podIP"]]

        await until(resolved, timeout=30, what="the Service's name to answer its pod's IP")
        print(f"stand-in DNS: answered {cluster_dns.started_in:.2f} s after its start")  # pytest -s
        script = (r"echo -e 'GET /index.html HTTP/1.0\r\n\r' | nc -w 5 web 8080 > /tmp/answer; "
                  f"nc -w 5 {real_node.host_address} {inbox.port} < /tmp/answer")
        await core.create_namespaced_pod(ns, busybox_pod("client", script, grace=1))
        assert (await inbox.next(timeout=60)).endswith("page")
        assert await cluster_dns.lookup("example.org") == []
    finally:
        await core.delete_namespaced_service("web", ns)


async def test_over_its_memory_limit_the_container_is_oom_killed(real_node, core):
    ns = real_node.namespace
    # dd fills a 64 MiB buffer inside a 32 MiB limit
    await core.create_namespaced_pod(ns, busybox_pod(
        "hungry", "exec dd if=/dev/zero of=/dev/null bs=64M count=1", memory="32Mi"))

    async def terminated():
        pod = await pod_dict(core, "hungry", ns)
        statuses = pod["status"].get("containerStatuses") or ()
        return statuses and (statuses[0]["state"].get("terminated") or None)

    state = await until(terminated, timeout=90, what="the hungry container to end", interval=0.3)
    assert state["reason"] == "OOMKilled", state
    assert state["exitCode"] == 137, state
    assert (await pod_dict(core, "hungry", ns))["status"]["phase"] == "Failed"
    await core.delete_namespaced_pod("hungry", ns, grace_period_seconds=0)


async def test_deployment_comes_up_and_its_dependents_are_garbage_collected(real_node, core):
    ns = real_node.namespace
    apps = client.AppsV1Api(core.api_client)
    labels = {"app": "owner"}
    deployment = {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "owner", "labels": labels},
        "spec": {"replicas": 1, "selector": {"matchLabels": labels}, "template": {
            "metadata": {"labels": labels},
            "spec": {"terminationGracePeriodSeconds": 1, "containers": [{
                "name": "main", "image": BUSYBOX_IMAGE, "imagePullPolicy": "Never",
                "command": ["sh", "-c", "touch /tmp/ready; exec sleep 600"],
                "readinessProbe": {"exec": {"command": ["cat", "/tmp/ready"]}, "periodSeconds": 1},
            }]}}},
    }
    created = await apps.create_namespaced_deployment(ns, deployment)

    async def available():
        d = await apps.read_namespaced_deployment("owner", ns)
        return (d.status.available_replicas or 0) == 1

    await until(available, timeout=120, what="the Deployment to be available", interval=0.5)
    sets = (await apps.list_namespaced_replica_set(ns, label_selector="app=owner")).items
    assert len(sets) == 1 and sets[0].metadata.owner_references[0].uid == created.metadata.uid

    # a pod owned by the Deployment as the scaler's workers are owned by the master's
    owner = core.api_client.sanitize_for_serialization(created)
    owned = busybox_pod("owned", "exec sleep 600", grace=1)
    owned["metadata"]["ownerReferences"] = [owner_reference({**owner, "apiVersion": "apps/v1",
                                                             "kind": "Deployment"})]
    await core.create_namespaced_pod(ns, owned)
    await running(core, "owned", ns)

    await apps.delete_namespaced_deployment("owner", ns, propagation_policy="Background")

    async def collected():
        """The garbage collector deleted the ReplicaSet and both pods (pods may still be
        terminating: their final removal is the kubelet's)."""
        sets = (await apps.list_namespaced_replica_set(ns, label_selector="app=owner")).items
        pods = (await core.list_namespaced_pod(ns, label_selector="app=owner")).items
        owned = await pod_dict(core, "owned", ns)
        return (not sets and all(p.metadata.deletion_timestamp for p in pods)
                and (owned is None or owned["metadata"].get("deletionTimestamp")))

    await until(collected, timeout=90, what="the ReplicaSet and both pods to be collected", interval=0.5)


async def test_unschedulable_pod_carries_the_schedulers_reason(real_node, core):
    ns = real_node.namespace
    pod = busybox_pod("too-big", "exec sleep 600")
    pod["spec"]["containers"][0]["resources"] = {"requests": {"memory": "1000Gi"}}
    await core.create_namespaced_pod(ns, pod)

    async def unschedulable():
        problem = pod_problem(await pod_dict(core, "too-big", ns))
        return problem or None

    problem = await until(unschedulable, timeout=60, what="the scheduler's verdict", interval=0.3)
    assert problem == "Unschedulable: 0/1 nodes are available: 1 Insufficient memory.", problem
    assert (await pod_dict(core, "too-big", ns))["status"]["phase"] == "Pending"
    await core.delete_namespaced_pod("too-big", ns, grace_period_seconds=0)


def container_processes(real_node, pod: dict) -> set[int]:
    """Host PIDs of the processes in the pod's (only) container, from its memory cgroup."""
    container_id = pod["status"]["containerStatuses"][0]["containerID"].split("://")[1]
    memory = next(d for d in real_node.cgroups.dirs if d.parent.name == "memory")
    pids = set()
    for procs in memory.rglob(f"pod{pod['metadata']['uid']}/{container_id}/cgroup.procs"):
        pids.update(int(p) for p in procs.read_text().split())
    return pids


def alive(pids: set[int]) -> bool:
    return any(Path(f"/proc/{pid}").exists() for pid in pids)


async def test_graceful_delete_sends_sigterm_to_pid_1_then_kills_after_the_grace_period(
        real_node, core, inbox):
    ns, host, port = real_node.namespace, real_node.host_address, inbox.port
    report = f"nc -w 5 {host} {port}"
    handles = (f"trap 'echo term-$$ | {report}; exit 0' TERM; echo up-$$ | {report}; "
               "while true; do sleep 0.2; done")
    ignores = f"trap '' TERM; echo deaf-$$ | {report}; while true; do sleep 0.2; done"
    await core.create_namespaced_pod(ns, busybox_pod("polite", handles, grace=60))
    await core.create_namespaced_pod(ns, busybox_pod("deaf", ignores, grace=4))
    polite = container_processes(real_node, await running(core, "polite", ns))
    deaf = container_processes(real_node, await running(core, "deaf", ns))
    assert polite and deaf
    assert sorted([await inbox.next(30), await inbox.next(30)]) == ["deaf-1", "up-1"]

    started = time.monotonic()
    await core.delete_namespaced_pod("polite", ns, grace_period_seconds=60)
    assert await inbox.next(timeout=30) == "term-1"  # PID 1 itself got SIGTERM
    await until(lambda: not alive(polite), timeout=30, what="the polite container's processes to end")
    assert time.monotonic() - started < 30, "the container that exited on SIGTERM waited for its grace period"

    started = time.monotonic()
    await core.delete_namespaced_pod("deaf", ns, grace_period_seconds=4)
    await always(lambda: alive(deaf) and inbox.lines.empty(), seconds=3,
                 what="the container that ignores SIGTERM ended, or reported a signal, within its grace")
    await until(lambda: not alive(deaf), timeout=30, what="the deaf container to be killed")
    took = time.monotonic() - started
    assert 4 <= took < 30, f"the container that ignores SIGTERM was killed after {took:.1f} s (grace 4 s)"


def machine_sysctls() -> dict[str, str]:
    return {name: Path("/proc/sys", name).read_text() for name in KUBELET_SYSCTLS}


async def test_a_node_that_ran_pods_leaves_nothing_behind_and_changes_no_sysctl(tmp_path):
    if not node_installed():
        install()
    before = machine_sysctls()
    node = RealNode(tmp_path / "node", start_timeout=90)
    try:
        await node.start()
        assert machine_sysctls() == before  # the kubelet found its values in its namespace
        async with await node.api_client() as api:
            core = client.CoreV1Api(api)
            await core.create_namespaced_pod(node.namespace, busybox_pod("p", "exec sleep 600", grace=1))
            assert container_processes(node, await running(core, "p", node.namespace))
        assert node.leftovers()  # what is looked for is there while the node runs
    finally:
        await node.stop()
    assert node.leftovers() == []
    assert machine_sysctls() == before


async def test_a_start_that_fails_halfway_leaves_nothing_behind(tmp_path):
    if not node_installed():
        install()

    class BrokenKubelet(RealNode):  # everything else starts; the kubelet refuses its config
        def _kubelet_config(self, root):
            return {**super()._kubelet_config(root), "imageGCHighThresholdPercent": 101}

    node = BrokenKubelet(tmp_path / "node", start_timeout=60)
    try:
        with pytest.raises(RuntimeError, match="kubelet exited"):
            await node.start()
        left = node.leftovers()
    finally:
        await node.stop()  # nothing to do, unless start() did not fail
    assert left == []


async def test_the_kubelet_api_answers_no_one(real_node, core):
    """Reading pods and running a command in a container through the kubelet's own API:
    refused without credentials and with the cluster admin's token alike."""
    await core.create_namespaced_pod(real_node.namespace, busybox_pod("target", "exec sleep 600", grace=1))
    await running(core, "target", real_node.namespace)
    base = f"https://{real_node.host_address}:{real_node.kubelet_port}"
    admin = {"Authorization": f"Bearer {real_node.cluster.tokens['admin']}"}
    async with aiohttp.ClientSession() as http:
        for headers in ({}, admin):
            async with http.get(f"{base}/pods", headers=headers, ssl=False) as r:
                assert r.status == 401, (headers, r.status)
            run = f"{base}/run/{real_node.namespace}/target/main?cmd=id"
            async with http.post(run, headers=headers, ssl=False) as r:
                assert r.status == 401, (headers, r.status)
