"""A real Kubernetes node for tests: kube-scheduler, kube-controller-manager, a kubelet and
containerd + runc + the CNI bridge, on a control plane of its own (etcd + kube-apiserver,
tests/kube_cluster.py). Tests that ask for the session fixture `real_node` start it (once
per session); nothing else does.

Why a control plane of its own: the session's `kube_cluster` has the stand-in kubelet
(tests/kubelet.py) running the "spark" namespace's pods, and a real scheduler and kubelet
there would fight it for them. This one runs with Node+RBAC authorization, the
NodeRestriction and ServiceAccount admission plugins, and token users for the node
("system:node:real-node"), the scheduler and the controller-manager (which runs with
--use-service-account-credentials: one service account per controller).

The controller-manager runs only the service account, token, garbage collector,
ReplicaSet, Deployment, endpoint and node lifecycle controllers (the last takes off the
not-ready taint the kubelet registers the node with). No kube-proxy runs (Services get no
traffic); a stand-in for cluster DNS (tests/node_dns.py) answers a Service's name in pods
with its ready pods' IPs. Pods reach the host at `host_address`, the host reaches pod IPs.

What runs where (names carry the test process's PID, so two sessions never share one):
containerd (private root, state and socket; CRI with cgroupfs, the local sandbox image,
`netns_mounts_under_state_dir` and `restrict_oom_score_adj`, which runc needs here or
every sandbox fails with "can't get final child's PID from pipe: EOF") and the kubelet
(cgroupfs, --cgroup-root of its own, private root dir and ports, node IP on the bridge)
run in a mount namespace of their own (tests/node_host.py); the bridge, a /24 from
198.18.0.0/15, has `ipMasq: false` and no gateway, so nothing is forwarded or routed.

What had to be turned off in this VM, and why:
- Lowering OOM scores. Root here has every capability but CAP_SYS_RESOURCE, so no process
  may lower an oom_score_adj. containerd gives a pod sandbox an oom_score_adj below its own
  unless `restrict_oom_score_adj` is set, and runc then fails every sandbox with "can't get
  final child's PID from pipe: EOF". With it set, a container's score is never below
  containerd's. The kubelet's own -999 ("write /proc/self/oom_score_adj: permission
  denied") and its file-handle rlimit fail for the same reason; it logs that and goes on.
- Kernel sysctls. At start the kubelet v1.20 sets vm.overcommit_memory=1, kernel.panic=10
  and kernel.panic_on_oops=1 on the whole machine (or, with --protect-kernel-defaults,
  refuses to start). In its mount namespace those three /proc/sys files are bind mounts of
  files holding the expected values, so it finds them set and writes nothing; the
  machine's values are unchanged (pods on this node see the machine's real ones).
- Swap is not checked (--fail-swap-on=false; this VM has none, a developer's may).
- No iptables: the kubelet's iptables chains (makeIPTablesUtilChains) and hairpin mode are
  off; this machine has no iptables binary and the node needs no NAT.
- Eviction thresholds near zero (memory 1Mi, disk 1 %) and image garbage collection at
  100 % disk: the disk is shared with other work and the node must not evict test pods
  because of it.
- The kubelet's own API (`kubelet_port` on the bridge address) accepts no one: anonymous
  and webhook authentication are off and it has no client CA, so `kubectl logs/exec` do
  not work (tests/test_real_node.py tries); read container output from `log_dir`.

Using it from a test (the fixture's API):

    async def test_x(real_node):
        image = await real_node.import_image(Path("spark.tar"), "localhost/jss/spark")
        async with await real_node.api_client("admin") as api:  # or "spark-scaler", "hub"
            ...  # pods with image=image, imagePullPolicy Never, in real_node.namespace
        real_node.kubeconfig("spark-scaler")  # a kubeconfig file, e.g. for KubernetesBackend
        real_node.host_address  # where pods reach the test process (bind servers there)

The token users are tests/kube_cluster.py's (the "spark-scaler" and "hub" service account
users have no permissions until a test binds a Role to them) plus the node's components.
BUSYBOX_IMAGE (sh, sleep, head, dd, nc, httpd, cat, echo, kill, ps, ls, mkdir, wc) is
imported at start. Container logs are under `log_dir`. A pod's cgroups are below
`cgroups.dirs` (one per hierarchy): <dir>/kubepods[/burstable|/besteffort]/pod<uid>/<id>.

The kubelet v1.20's own limits, which tests must allow for: a deleted pod's API object goes
8 to 17 s after its containers ended (a 1.20 regression), and now and then never (a race
in the 1.20 pod workers, gone with the pod lifecycle rewrite of 1.22). Tests watch the
containers' processes (`cgroups`) or the deletion request, not the object's final
removal; cleanup force-deletes what is left after 30 s.

Teardown, also after a start that failed halfway: every Deployment, ReplicaSet and pod is
deleted through the API (the kubelet stops the containers; see above for the pods it does
not finish), then the kubelet, the
scheduler, the controller-manager and containerd are stopped by PID, every process left in
the node's mount namespace or its cgroup tree is killed by PID, the namespace (and every
mount in it) ends, the cgroups and the bridge are removed, and the control plane stops.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import os
import subprocess
from pathlib import Path

import pytest
from jupyterhub.utils import random_port
from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

from .kube_cluster import BIN, INSTALL_SCRIPT, KubeCluster, stop_process
from .node_dns import CLUSTER_DOMAIN, StandInDns, dns_installed
from .node_host import Bridge, CgroupTree, MountNamespace, free_subnet
from .waiting import until

log = logging.getLogger(__name__)

NODE_DIR = BIN.parent / "node"
NODE_INSTALL_SCRIPT = INSTALL_SCRIPT.parent / "install-kube-node.sh"
NODE_BINARIES = ("kubelet", "kube-scheduler", "kube-controller-manager")
NODE_NAME = "real-node"
#: the images scripts/install-kube-node.sh builds: name -> OCI archive
PAUSE_IMAGE = "localhost/jss/pause:test"
BUSYBOX_IMAGE = "localhost/jss/busybox:test"
#: nodelifecycle takes off the not-ready taint the kubelet registers the node with
CONTROLLERS = ("serviceaccount,serviceaccount-token,garbagecollector,replicaset,deployment,endpoint,"
               "nodelifecycle")

_serial = itertools.count()

USERS = {
    "node": (f"system:node:{NODE_NAME}", ["system:nodes", "system:authenticated"]),
    "scheduler": ("system:kube-scheduler", ["system:authenticated"]),
    "controller-manager": ("system:kube-controller-manager", ["system:authenticated"]),
}


def node_installed() -> bool:
    return (all(os.access(BIN / name, os.X_OK) for name in NODE_BINARIES)
            and any(NODE_DIR.glob(".complete-*")) and dns_installed())


def install() -> None:
    """Build or unpack what is missing (once per machine: minutes); pytest.fail if that fails."""
    for script in (INSTALL_SCRIPT, NODE_INSTALL_SCRIPT):
        built = subprocess.run(["bash", str(script)], capture_output=True, text=True, timeout=2400)
        if built.returncode != 0:
            pytest.fail(f"{script} failed with {built.returncode}:\n{built.stderr[-4000:]}")


class RealNode:
    """One real node with its own control plane, all state under `workdir`.

    After `await start()`: `api_client(user)` / `kubeconfig(user)` as KubeCluster's ("admin"
    is in system:masters), `namespace` (made at start, its default service account
    exists), `host_address` (the bridge address: pods reach the host there), `subnet`
    (pod IPs), `import_image(archive, name)`, `log_dir` (container logs),
    `cgroups.dirs` (the node's cgroup directories). `await stop()` removes everything.
    """

    def __init__(self, workdir: Path, *, namespace: str = "spark", start_timeout: float = 120):
        self.workdir = Path(workdir)
        self.namespace = namespace
        self.start_timeout = start_timeout
        tag = f"{os.getpid()}n{next(_serial)}"  # two nodes of one session: two names
        self.bridge = Bridge(f"jss{tag}", free_subnet())  # at most 15 characters
        self.cgroups = CgroupTree(f"jss-node-{tag}")
        self.mounts = MountNamespace(self.workdir / "mountns")
        self.cluster = KubeCluster(self.workdir / "control-plane", namespace=namespace, users=USERS,
                                   authorization="Node,RBAC", admission_plugins=("NodeRestriction",),
                                   service_accounts=True, start_timeout=start_timeout)
        self.socket = self.workdir / "containerd" / "containerd.sock"
        self.log_dir = self.mounts.workdir / "var-log" / "pods"
        self.kubelet_port = random_port()
        self.dns = StandInDns(self.workdir / "dns", address=self.bridge.address)
        self.processes: dict[str, subprocess.Popen] = {}

    @property
    def host_address(self) -> str:
        return self.bridge.address

    @property
    def subnet(self):
        return self.bridge.subnet

    def kubeconfig(self, user: str) -> Path:
        return self.cluster.kubeconfig(user)

    async def api_client(self, user: str = "admin") -> client.ApiClient:
        return await self.cluster.api_client(user)

    # -- start -----------------------------------------------------------------------------

    async def start(self) -> None:
        """Start everything and wait until the node is Ready; on failure stop all again."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        try:
            self.bridge.create()
            self.cgroups.create()
            self.mounts.start()
            await self.cluster.start()
            await self._start_containerd()
            for name in ("pause", "busybox"):
                await self.import_image(NODE_DIR / "images" / f"{name}.tar", f"localhost/jss/{name}")
            self._start_scheduler()
            self._start_controller_manager()
            await self.dns.start(self.kubeconfig("admin"))  # before any pod's resolv.conf names it
            self._start_kubelet()
            await self._wait_ready()
        except BaseException:
            await self.stop()
            raise

    def _spawn(self, name: str, args: list[str], *, in_namespace: bool = False) -> subprocess.Popen:
        env = {**os.environ, "PATH": f"{NODE_DIR / 'bin'}:{os.environ.get('PATH', '/usr/bin:/bin')}"}
        with open(self.workdir / f"{name}.log", "ab") as log:
            process = subprocess.Popen(self.mounts.enter(args) if in_namespace else args, env=env,
                                       stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                       start_new_session=True)
        self.processes[name] = process
        return process

    def _check_alive(self) -> None:
        for name, process in self.processes.items():
            if process.poll() is not None:
                tail = (self.workdir / f"{name}.log").read_text(errors="replace")[-3000:]
                raise RuntimeError(f"{name} exited with {process.returncode}:\n{tail}")

    async def _start_containerd(self) -> None:
        state = self.workdir / "containerd"
        (state / "cni").mkdir(parents=True, exist_ok=True)
        (state / "cni" / "bridge.conflist").write_text(json.dumps(self._cni_config(), indent=1))
        (state / "config.toml").write_text(self._containerd_config(state))
        process = self._spawn("containerd", [str(NODE_DIR / "bin" / "containerd"),
                                             "--config", str(state / "config.toml")], in_namespace=True)
        await until(self.socket.exists, timeout=self.start_timeout, what="containerd's socket",
                    process=process, log=self.workdir / "containerd.log", interval=0.1)

    def _cni_config(self) -> dict:
        hosts = list(self.subnet.hosts())
        return {"cniVersion": "0.4.0", "name": self.bridge.name, "plugins": [{
            "type": "bridge", "bridge": self.bridge.name,
            # the bridge already holds the host's address; no gateway: nothing is forwarded
            "isGateway": False, "isDefaultGateway": False, "ipMasq": False, "hairpinMode": False,
            "ipam": {"type": "host-local", "dataDir": str(self.workdir / "containerd" / "ipam"),
                     "ranges": [[{"subnet": str(self.subnet), "rangeStart": str(hosts[9]),
                                  "rangeEnd": str(hosts[-1])}]]},
        }]}

    def _containerd_config(self, state: Path) -> str:
        cri = 'plugins."io.containerd.grpc.v1.cri"'
        return f"""version = 2
root = "{state / 'root'}"
state = "{state / 'state'}"
disabled_plugins = ["io.containerd.internal.v1.opt", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.aufs", "io.containerd.tracing.processor.v1.otlp"]
[grpc]
  address = "{self.socket}"
[ttrpc]
  address = "{state / 'ttrpc.sock'}"
[metrics]
  address = ""
[{cri}]
  sandbox_image = "{PAUSE_IMAGE}"
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  netns_mounts_under_state_dir = true
  restrict_oom_score_adj = true
  disable_apparmor = true
[{cri}.containerd]
  snapshotter = "overlayfs"
  default_runtime_name = "runc"
[{cri}.containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"
[{cri}.containerd.runtimes.runc.options]
  SystemdCgroup = false
  BinaryName = "{NODE_DIR / 'bin' / 'runc'}"
  Root = "{state / 'runc'}"
[{cri}.cni]
  bin_dir = "{NODE_DIR / 'cni'}"
  conf_dir = "{state / 'cni'}"
  max_conf_num = 1
"""

    async def import_image(self, archive: Path, name: str, *, tag: str = "test") -> str:
        """Import an OCI archive (an OCI image layout as a tar file whose manifest is
        tagged `tag`, as `umoci --image DIR:TAG` makes it) into the node's containerd as
        `name:tag`, which pods then run with imagePullPolicy Never. Returns that reference."""
        ctr = [str(NODE_DIR / "bin" / "ctr"), "--address", str(self.socket), "-n", "k8s.io", "images"]
        await _run(*ctr, "import", "--base-name", name, str(archive))
        # ctr also names the archive's index "import-<date>...", which the CRI plugin
        # cannot resolve as an image name: drop it
        listed = await _run(*ctr, "ls", "-q")
        extra = [line for line in listed.splitlines() if line.startswith("import-")]
        if extra:
            await _run(*ctr, "rm", *extra)
        return f"{name}:{tag}"

    def _start_scheduler(self) -> None:
        self._spawn("kube-scheduler", [
            str(BIN / "kube-scheduler"), f"--kubeconfig={self.kubeconfig('scheduler')}",
            "--leader-elect=false", "--port=0", "--bind-address=127.0.0.1",
            f"--secure-port={random_port()}", f"--cert-dir={self.workdir / 'scheduler-certs'}",
        ])

    def _start_controller_manager(self) -> None:
        self._spawn("kube-controller-manager", [
            str(BIN / "kube-controller-manager"), f"--kubeconfig={self.kubeconfig('controller-manager')}",
            "--leader-elect=false", "--port=0", "--bind-address=127.0.0.1",
            f"--secure-port={random_port()}", f"--cert-dir={self.workdir / 'controller-manager-certs'}",
            f"--controllers={CONTROLLERS}", "--use-service-account-credentials=true",
            f"--service-account-private-key-file={self.cluster.workdir / 'sa.key'}",
            f"--root-ca-file={self.cluster.ca_file}",
        ])

    def _kubelet_config(self, root: Path) -> dict:
        return {
            "kind": "KubeletConfiguration", "apiVersion": "kubelet.config.k8s.io/v1beta1",
            "address": self.host_address, "port": self.kubelet_port, "readOnlyPort": 0,
            "healthzBindAddress": "127.0.0.1", "healthzPort": random_port(),
            "authentication": {"anonymous": {"enabled": False}, "webhook": {"enabled": False}},
            "authorization": {"mode": "AlwaysAllow"},  # no one authenticates (see the docstring)
            "clusterDNS": [self.host_address], "clusterDomain": CLUSTER_DOMAIN,
            "cgroupDriver": "cgroupfs", "cgroupRoot": self.cgroups.path, "cgroupsPerQOS": True,
            "failSwapOn": False, "makeIPTablesUtilChains": False, "hairpinMode": "none",
            "evictionHard": {"memory.available": "1Mi", "nodefs.available": "1%", "nodefs.inodesFree": "1%",
                             "imagefs.available": "1%"},
            "imageGCHighThresholdPercent": 100, "imageGCLowThresholdPercent": 99,
            "volumePluginDir": str(root / "volume-plugins"),
            "serializeImagePulls": False, "syncFrequency": "10s", "nodeStatusUpdateFrequency": "5s",
        }

    def _start_kubelet(self) -> None:
        root = self.workdir / "kubelet"
        root.mkdir(exist_ok=True)
        (root / "config.json").write_text(json.dumps(self._kubelet_config(root), indent=1))
        endpoint = f"unix://{self.socket}"
        self._spawn("kubelet", [
            str(BIN / "kubelet"), f"--config={root / 'config.json'}",
            f"--kubeconfig={self.kubeconfig('node')}", f"--root-dir={root}", f"--cert-dir={root / 'pki'}",
            f"--seccomp-profile-root={root / 'seccomp'}",
            "--container-runtime=remote", f"--container-runtime-endpoint={endpoint}",
            f"--image-service-endpoint={endpoint}", f"--pod-infra-container-image={PAUSE_IMAGE}",
            f"--hostname-override={NODE_NAME}", f"--node-ip={self.host_address}", "--v=1",
        ], in_namespace=True)

    async def _wait_ready(self) -> None:
        async with await self.api_client() as api:
            core = client.CoreV1Api(api)

            async def ready():
                self._check_alive()
                try:
                    node = await core.read_node(NODE_NAME)
                except ApiException:
                    return False
                return any(c.type == "Ready" and c.status == "True" for c in node.status.conditions or ())

            async def service_account():
                try:
                    return await core.read_namespaced_service_account("default", self.namespace)
                except ApiException:
                    return False

            await until(ready, timeout=self.start_timeout, what="the node to be Ready",
                        log=self.workdir / "kubelet.log", interval=0.5)
            await until(service_account, timeout=self.start_timeout, interval=0.5,
                        what=f"the default service account of {self.namespace}")

    # -- stop ------------------------------------------------------------------------------

    async def stop(self) -> None:
        """Stop and remove everything, whatever state start() got to."""
        try:
            if self.processes.get("kubelet") and self.processes["kubelet"].poll() is None:
                await self.delete_workloads()
        except (ApiException, OSError, AssertionError) as e:
            # the kills below still end every container; say why they had to
            print(f"real node teardown: pods not stopped through the API: {e}")
        finally:
            for name in ("kubelet", "kube-controller-manager", "kube-scheduler", "containerd"):
                stop_process(self.processes.pop(name, None), 10)
            await self.dns.stop()
            self.mounts.stop()
            self.cgroups.remove()
            self.bridge.delete()
            self.cluster.stop()

    async def delete_workloads(self, timeout: float = 30) -> None:
        """Delete Deployments, ReplicaSets and pods in every namespace, and wait until the
        kubelet has stopped the pods' containers and deleted the pods for good. Pods still
        there after `timeout` seconds are force-deleted (the kubelet then kills whatever of
        them still runs): the kubelet v1.20 now and then never finishes deleting a pod whose
        containers are gone (a race in its pod workers, gone in 1.22)."""
        async with await self.api_client() as api:
            apps, core = client.AppsV1Api(api), client.CoreV1Api(api)
            for ns in (await core.list_namespace()).items:
                name = ns.metadata.name
                await apps.delete_collection_namespaced_deployment(name)
                await apps.delete_collection_namespaced_replica_set(name)
                await core.delete_collection_namespaced_pod(name, grace_period_seconds=1)

            async def none_left():
                return not (await core.list_pod_for_all_namespaces()).items

            try:
                await until(none_left, timeout=timeout, what="the node's pods to be gone", interval=0.5)
                return
            except AssertionError:
                stuck = (await core.list_pod_for_all_namespaces()).items
            log.warning("real node: force-deleting pods the kubelet did not finish deleting: %s",
                        ", ".join(p.metadata.name for p in stuck))
            for pod in stuck:
                try:
                    await core.delete_namespaced_pod(pod.metadata.name, pod.metadata.namespace,
                                                     grace_period_seconds=0)
                except ApiException as e:
                    if e.status != 404:
                        raise
            await until(none_left, timeout=10, what="the force-deleted pods to be gone", interval=0.2)

    def leftovers(self) -> list[str]:
        """What of this node still exists on the machine (nothing, after stop())."""
        left = [f"process {pid}: {' '.join(args)}" for pid, args in _processes_under(self.workdir)]
        if self.mounts.holder is not None:
            left.append(f"mount namespace of process {self.mounts.holder.pid}")
        left += [f"cgroup {d}" for d in self.cgroups.dirs if d.exists()] + self.dns.leftovers()
        if Path("/sys/class/net", self.bridge.name).exists():
            left.append(f"bridge {self.bridge.name}")
        with open("/proc/self/mountinfo") as f:
            left += [f"mount {line.split()[4]}" for line in f if str(self.workdir) in line]
        return left


def _processes_under(workdir: Path) -> list[tuple[int, list[str]]]:
    """The processes whose command line names a path under `workdir`."""
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit() and int(proc.name) != os.getpid():
            try:
                args = (proc / "cmdline").read_bytes().decode(errors="replace").split("\0")
            except OSError:
                continue
            if any(str(workdir) in a for a in args):
                found.append((int(proc.name), args))
    return found


async def _run(*args: str) -> str:
    process = await asyncio.create_subprocess_exec(*args, stdout=subprocess.PIPE,
                                                   stderr=subprocess.PIPE)
    try:
        out, err = await asyncio.wait_for(process.communicate(), 120)
    except asyncio.TimeoutError:
        process.kill()
        await process.wait()
        raise
    if process.returncode != 0:
        error = err.decode(errors="replace")
        raise RuntimeError(f"{' '.join(args)} failed with {process.returncode}: {error}")
    return out.decode()


@pytest.fixture(scope="session")
async def real_node(tmp_path_factory):
    """A RealNode for the whole session, built first if missing (once per machine: minutes)."""
    if not node_installed():
        install()
    node = RealNode(tmp_path_factory.mktemp("real-node"))
    await node.start()
    try:
        yield node
    finally:
        await node.stop()
