"""Worker and master pods confined, checked three ways, and the egress NetworkPolicy.

1. As data: the Pod Security Standards `restricted` profile's checks, encoded below from
   the upstream admission code, run over every pod manifest the package and helm-values/
   make. Fast, no cluster.
2. On a real kube-apiserver v1.20.2 of its own with the PodSecurityPolicy admission plugin
   and a PodSecurityPolicy equivalent to `restricted` (the PodSecurity admission plugin
   came in 1.22; the test apiserver is 1.20): the worker and master pods are admitted, the
   manifest without a securityContext and pods a `modify_pod_hook` made privileged are
   refused.
3. helm-values/networkpolicy.yaml applied to the real apiserver, its egress rules checked as
   data: DNS and the master admitted, the cloud metadata address never.
4. The backend acts on its own pods only (the shared test apiserver, no kubelet: the pods
   stay Pending, which is all these tests need): deletion with a uid precondition, pods of
   another owner never adopted, a bad retiring mark, a modify_pod_hook that would let a pod
   escape the pool.
"""

from __future__ import annotations

import copy
import ipaddress
import re
from pathlib import Path

import pytest
import yaml
from kubernetes_asyncio import client

from jhub_spark_scaler.backends import BackendError
from jhub_spark_scaler.backends.kube_api import KubeApi
from jhub_spark_scaler.backends.kubernetes import KubernetesBackend
from jhub_spark_scaler.backends.master_manifests import master_deployment
from jhub_spark_scaler.backends.worker_pod import ANNOTATION_RETIRING, worker_pod
from jhub_spark_scaler.observe import is_retiring

from .kube_cluster import KubeCluster
from .test_kubernetes_backend import pods_of
from .waiting import until

HELM = Path(__file__).resolve().parent.parent / "helm-values"
NAMESPACE = "spark"
METADATA_IP = ipaddress.ip_address("169.254.169.254")


def load_all(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def backend(**settings) -> KubernetesBackend:
    return KubernetesBackend(namespace=NAMESPACE, master_url="spark://spark-master.spark.svc:7077",
                             **settings)


def as_pod(deployment: dict, name: str) -> dict:
    """The pod a Deployment's ReplicaSet would create (no controller runs in the test cluster)."""
    template = copy.deepcopy(deployment["spec"]["template"])
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {**template["metadata"], "name": name, "namespace": NAMESPACE},
            "spec": template["spec"]}


def pod_manifests() -> dict[str, dict]:
    """Every pod the package or helm-values/ makes, by a name for the test ids."""
    (helm_master,) = [d for d in load_all(HELM / "spark-master.yaml") if d["kind"] == "Deployment"]
    settings = dict(volumes=[{"name": "data", "emptyDir": {}}], service_account="spark",
                    image_pull_secrets=["regcred"])
    return {
        "worker": worker_pod(backend().template()),
        "worker-with-settings": worker_pod(backend(**settings).template()),
        "managed-master": as_pod(master_deployment(name="spark-master", namespace=NAMESPACE,
                                                   image="apache/spark:4.3.0", run_as_user=185,
                                                   default_cores=2), "m"),
        "helm-master": as_pod(helm_master, "spark-master-0"),
    }


def without_security_context(pod: dict) -> dict:
    """The manifest as the package made it before pods were confined."""
    old = copy.deepcopy(pod)
    old["spec"].pop("securityContext")
    for container in old["spec"]["containers"]:
        container.pop("securityContext")
    return old


# ---- 1. the `restricted` profile's checks, as data ----------------------------------------
# From kubernetes/kubernetes staging/src/k8s.io/pod-security-admission/policy/check_*.go
# (the PodSecurity admission plugin): the restricted level is the baseline checks plus the
# restricted ones. Each entry: (check ID as upstream names it, where the field is, the
# field, what passes). "container": every container's value; "pod or container": the
# container's value, else the pod's (upstream lets the pod level stand for its containers).

_SAFE_SYSCTLS = {"kernel.shm_rmid_forced", "net.ipv4.ip_local_port_range", "net.ipv4.tcp_syncookies",
                 "net.ipv4.ping_group_range", "net.ipv4.ip_unprivileged_port_start",
                 "net.ipv4.ip_local_reserved_ports", "net.ipv4.tcp_keepalive_time",
                 "net.ipv4.tcp_fin_timeout", "net.ipv4.tcp_keepalive_intvl", "net.ipv4.tcp_keepalive_probes"}
_RESTRICTED_VOLUMES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim",
                       "projected", "secret"}
_SELINUX_TYPES = {None, "", "container_t", "container_init_t", "container_kvm_t", "container_engine_t"}

RESTRICTED = [
    # baseline (check_privileged.go, check_hostNamespaces.go, check_hostPorts.go, ...)
    ("privileged", "container", "securityContext.privileged", lambda v: v in (None, False)),
    ("hostNamespaces", "pod", "hostNetwork", lambda v: v in (None, False)),
    ("hostNamespaces", "pod", "hostPID", lambda v: v in (None, False)),
    ("hostNamespaces", "pod", "hostIPC", lambda v: v in (None, False)),
    ("hostPorts", "container", "ports", lambda v: all(p.get("hostPort", 0) == 0 for p in v or ())),
    ("hostPathVolumes", "pod", "volumes", lambda v: not any("hostPath" in vol for vol in v or ())),
    ("procMount", "container", "securityContext.procMount", lambda v: v in (None, "Default")),
    ("seLinuxOptions", "pod or container", "securityContext.seLinuxOptions",
     lambda v: not v or (v.get("type") in _SELINUX_TYPES and not v.get("user") and not v.get("role"))),
    ("sysctls", "pod", "securityContext.sysctls", lambda v: all(s["name"] in _SAFE_SYSCTLS for s in v or ())),
    ("appArmorProfile", "pod or container", "securityContext.appArmorProfile",
     lambda v: not v or v.get("type") in ("RuntimeDefault", "Localhost")),
    ("windowsHostProcess", "pod or container", "securityContext.windowsOptions.hostProcess",
     lambda v: v in (None, False)),
    # restricted (check_restrictedVolumes.go, check_allowPrivilegeEscalation.go, ...)
    ("restrictedVolumes", "pod", "volumes",
     lambda v: all(set(vol) - {"name"} <= _RESTRICTED_VOLUMES for vol in v or ())),
    ("allowPrivilegeEscalation", "container", "securityContext.allowPrivilegeEscalation",
     lambda v: v is False),
    ("runAsNonRoot", "pod or container", "securityContext.runAsNonRoot", lambda v: v is True),
    ("runAsUser", "pod", "securityContext.runAsUser", lambda v: v != 0),
    ("runAsUser", "container", "securityContext.runAsUser", lambda v: v != 0),
    ("seccompProfile_restricted", "pod or container", "securityContext.seccompProfile",
     lambda v: bool(v) and v.get("type") in ("RuntimeDefault", "Localhost")),
    ("capabilities_restricted", "container", "securityContext.capabilities",
     lambda v: bool(v) and "ALL" in (v.get("drop") or ())
     and set(v.get("add") or ()) <= {"NET_BIND_SERVICE"}),
]


def _get(obj: dict, path: str):
    for key in path.split("."):
        obj = (obj or {}).get(key)
    return obj


def violations(pod: dict) -> list[str]:
    """The `restricted` checks `pod` fails, as "check: where"."""
    spec, failed = pod["spec"], []
    containers = [*spec.get("initContainers", ()), *spec["containers"]]
    for check, scope, path, passes in RESTRICTED:
        if scope == "pod":
            values = {"pod": _get(spec, path)}
        elif scope == "container":
            values = {c["name"]: _get(c, path) for c in containers}
        else:  # a container's own value wins; unset, the pod's stands for it
            values = {c["name"]: _get(c, path) if _get(c, path) is not None else _get(spec, path)
                      for c in containers}
        failed += [f"{check}: {where}" for where, value in values.items() if not passes(value)]
    return failed


@pytest.mark.parametrize("check", sorted({c[0] for c in RESTRICTED}))
@pytest.mark.parametrize("manifest", list(pod_manifests()))
def test_pod_passes_restricted_check_as_data(manifest, check):
    assert [v for v in violations(pod_manifests()[manifest]) if v.startswith(f"{check}:")] == []


def test_the_unconfined_manifest_fails_the_restricted_checks():
    """The checks bite: the worker pod without a securityContext fails the four it lacks."""
    failed = {v.split(":")[0] for v in violations(without_security_context(pod_manifests()["worker"]))}
    assert failed == {"allowPrivilegeEscalation", "runAsNonRoot", "seccompProfile_restricted",
                      "capabilities_restricted"}


# ---- 2. a real apiserver that enforces a `restricted` PodSecurityPolicy ---------------------

RESTRICTED_PSP = {
    "apiVersion": "policy/v1beta1", "kind": "PodSecurityPolicy",
    "metadata": {"name": "restricted", "annotations": {
        # no defaultProfileName: a pod without a seccomp profile is refused, not given one
        "seccomp.security.alpha.kubernetes.io/allowedProfileNames": "runtime/default"}},
    "spec": {
        "privileged": False, "allowPrivilegeEscalation": False, "requiredDropCapabilities": ["ALL"],
        "hostNetwork": False, "hostIPC": False, "hostPID": False,
        "volumes": sorted(_RESTRICTED_VOLUMES),
        "runAsUser": {"rule": "MustRunAsNonRoot"}, "seLinux": {"rule": "RunAsAny"},
        "fsGroup": {"rule": "MustRunAs", "ranges": [{"min": 1, "max": 65535}]},
        "supplementalGroups": {"rule": "MustRunAs", "ranges": [{"min": 1, "max": 65535}]},
    },
}
SCALER_USER = "hub"  # the token user system:serviceaccount:jhub:hub of tests/kube_cluster.py


@pytest.fixture(scope="module")
async def psp_api(kube_cluster, tmp_path_factory):
    """A second etcd + kube-apiserver with PodSecurityPolicy admission (the shared one would
    then refuse every other test's pods); the scaler's user may `use` only RESTRICTED_PSP and
    holds helm-values/rbac.yaml's Role. Yields a KubeApi of the scaler's user."""
    cluster = KubeCluster(tmp_path_factory.mktemp("kube-psp"), admission_plugins=("PodSecurityPolicy",))
    await cluster.start()
    try:
        async with await cluster.api_client("admin") as admin:
            # the client has no PodSecurityPolicy API left (removed in 1.25): posted as is
            response = await admin.call_api(
                "/apis/policy/v1beta1/podsecuritypolicies", "POST", body=RESTRICTED_PSP,
                header_params={"Content-Type": "application/json", "Accept": "application/json"},
                auth_settings=["BearerToken"], _preload_content=False)
            assert response.status == 201, await response.text()
            rbac = client.RbacAuthorizationV1Api(admin)
            await rbac.create_cluster_role({
                "metadata": {"name": "psp-restricted"},
                "rules": [{"apiGroups": ["policy"], "resources": ["podsecuritypolicies"], "verbs": ["use"],
                           "resourceNames": ["restricted"]}]})
            await rbac.create_namespaced_role_binding(NAMESPACE, {
                "metadata": {"name": "psp-restricted"},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                            "name": "psp-restricted"},
                "subjects": [{"kind": "ServiceAccount", "name": "hub", "namespace": "jhub"}]})
            for doc in load_all(HELM / "rbac.yaml"):
                if doc["kind"] == "Role":
                    await rbac.create_namespaced_role(NAMESPACE, doc)
                elif doc["kind"] == "RoleBinding":
                    await rbac.create_namespaced_role_binding(NAMESPACE, doc)
        async with await cluster.api_client(SCALER_USER) as api_client:
            yield KubeApi(api_client, NAMESPACE)
    finally:
        cluster.stop()


@pytest.mark.parametrize("manifest", list(pod_manifests()))
async def test_restricted_psp_as_stand_in_for_pod_security_admits_pod(psp_api, manifest):
    pod = pod_manifests()[manifest]
    created = await psp_api.create_pod(pod)
    try:
        assert created["metadata"]["annotations"]["kubernetes.io/psp"] == "restricted"
        for sent, stored in zip(pod["spec"]["containers"], created["spec"]["containers"]):
            assert stored["securityContext"] == sent["securityContext"], "admitted as it was, not mutated"
        assert {k: created["spec"]["securityContext"][k] for k in pod["spec"]["securityContext"]} == \
            pod["spec"]["securityContext"]
    finally:
        await psp_api.delete_pod(created["metadata"]["name"], 0)


async def test_restricted_psp_as_stand_in_for_pod_security_refuses_the_unconfined_manifest(psp_api):
    """The attack: the worker pod as it was made before, with no securityContext."""
    with pytest.raises(BackendError) as refused:
        await psp_api.create_pod(without_security_context(pod_manifests()["worker"]))
    message = str(refused.value)
    assert message.startswith("the namespace's pod security refused to create pods")
    assert "seccomp" in message and "\n" not in message


_PRIVILEGED = {
    "privileged": lambda pod: pod["spec"]["containers"][0]["securityContext"].update(privileged=True),
    "root-user": lambda pod: pod["spec"]["securityContext"].update(runAsUser=0),
    "add-sys-admin": lambda pod: pod["spec"]["containers"][0]["securityContext"]["capabilities"].update(
        add=["SYS_ADMIN"]),
    "privilege-escalation": lambda pod: pod["spec"]["containers"][0]["securityContext"].update(
        allowPrivilegeEscalation=True),
    "host-path": lambda pod: pod["spec"]["volumes"].append({"name": "root", "hostPath": {"path": "/"}}),
    "host-network": lambda pod: pod["spec"].update(hostNetwork=True),
    "unconfined-seccomp": lambda pod: pod["spec"]["securityContext"].update(
        seccompProfile={"type": "Unconfined"}),
}


@pytest.mark.parametrize("change", list(_PRIVILEGED))
async def test_restricted_psp_as_stand_in_for_pod_security_refuses_a_hook_that_unconfines(psp_api, change):
    """An admin's modify_pod_hook wins over the package's securityContext; the namespace's
    pod security still refuses what it unconfines, and the static checks agree."""
    pod = pod_manifests()["worker"]
    _PRIVILEGED[change](pod)
    assert violations(pod)
    with pytest.raises(BackendError, match="pod security refused"):
        await psp_api.create_pod(pod)


# ---- 3. the egress NetworkPolicy ----------------------------------------------------------

def _egress_rules() -> list[tuple[str, dict]]:
    return [(p["metadata"]["name"], rule) for p in load_all(HELM / "networkpolicy.yaml")
            for rule in p["spec"].get("egress", ())]


def _public_internet_block() -> list[dict]:
    """The commented-out rule of networkpolicy.yaml that admits the public internet, uncommented."""
    text = (HELM / "networkpolicy.yaml").read_text()
    block = re.search(r"# BEGIN public internet\n(.*?)# END public internet", text, re.S).group(1)
    return yaml.safe_load("\n".join(re.sub(r"^(\s*)# ?", r"\1", line) for line in block.splitlines()))


def _ip_admitted(rule: dict, ip: ipaddress.IPv4Address) -> bool:
    """Whether `rule` admits traffic to `ip` (a rule without `to` admits every address)."""
    peers = rule.get("to")
    if not peers:
        return True
    for peer in peers:
        block = peer.get("ipBlock")
        if block and ip in ipaddress.ip_network(block["cidr"]) and not any(
                ip in ipaddress.ip_network(e) for e in block.get("except", ())):
            return True
    return False


def test_egress_never_admits_the_cloud_metadata_address():
    rules = _egress_rules()
    assert {name for name, _ in rules} == {"spark-master", "spark-worker"}
    for name, rule in [*rules, *(("public internet", r) for r in _public_internet_block())]:
        assert not _ip_admitted(rule, METADATA_IP), (name, rule)
    # the optional block does open the public internet, and not the cluster's private ranges
    (public,) = _public_internet_block()
    assert _ip_admitted(public, ipaddress.ip_address("8.8.8.8"))
    for private in ("10.0.0.1", "172.16.0.1", "192.168.0.1"):
        assert not _ip_admitted(public, ipaddress.ip_address(private))


def _admits_port(rule: dict, port: int, protocol: str = "TCP") -> bool:
    return any(p.get("protocol", "TCP") == protocol and p["port"] <= port <= p.get("endPort", p["port"])
               for p in rule.get("ports") or ())


def test_egress_admits_dns_and_the_master():
    policies = {p["metadata"]["name"]: p for p in load_all(HELM / "networkpolicy.yaml")}
    for name in ("spark-master", "spark-worker"):
        assert "Egress" in policies[name]["spec"]["policyTypes"], name
        rules = policies[name]["spec"]["egress"]
        for protocol in ("UDP", "TCP"):
            (dns,) = [r for r in rules if _admits_port(r, 53, protocol)]
            assert {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}}} \
                in dns["to"], name
    worker_rules = policies["spark-worker"]["spec"]["egress"]
    (to_master,) = [r for r in worker_rules if _admits_port(r, 7077)]
    master = {"podSelector": {"matchLabels": {"jhub-spark-scaler/component": "spark-master"}}}
    assert to_master["to"] == [master]


async def test_networkpolicy_yaml_is_accepted_by_the_apiserver(kube_cluster):
    """Applied for real (not a dry run) and read back: the apiserver validated every rule."""
    async with await kube_cluster.api_client("admin") as admin:
        networking = client.NetworkingV1Api(admin)
        docs = load_all(HELM / "networkpolicy.yaml")
        for doc in docs:
            await networking.create_namespaced_network_policy(NAMESPACE, doc)
        try:
            for doc in docs:
                stored = await networking.read_namespaced_network_policy(doc["metadata"]["name"], NAMESPACE)
                assert len(stored.spec.egress) == len(doc["spec"]["egress"])
        finally:
            for doc in docs:
                await networking.delete_namespaced_network_policy(doc["metadata"]["name"], NAMESPACE)


# ---- 4. the backend acts on its own pods only -----------------------------------------------

async def test_retire_and_stop_spare_a_pod_that_replaced_the_listed_one(make_kube_backend, kube_cluster):
    """The attack: between the scaler's list and its retire and stop, the pod is deleted and
    another is created under the same name (with the pool's labels). Only the listed pod may
    be marked or deleted."""
    b = await make_kube_backend()
    await b.start(1)
    (worker,) = await b.list()
    async with await kube_cluster.api_client("admin") as admin:
        core = client.CoreV1Api(admin)
        (old,) = await pods_of(kube_cluster, b.pool)
        await core.delete_namespaced_pod(worker.handle, NAMESPACE, grace_period_seconds=0)

        async def gone():
            return not await pods_of(kube_cluster, b.pool)

        await until(gone, timeout=30, what="the listed pod to be deleted")
        replacement = copy.deepcopy(old)
        for key in ("uid", "resourceVersion", "creationTimestamp", "generateName", "managedFields"):
            replacement["metadata"].pop(key, None)
        replacement.pop("status", None)
        await core.create_namespaced_pod(NAMESPACE, replacement)
        (new,) = await pods_of(kube_cluster, b.pool)
        assert new["metadata"]["name"] == worker.handle and new["metadata"]["uid"] != old["metadata"]["uid"]

        with pytest.raises(BackendError, match="uid"):
            await b.decommission(worker)
        await b.stop(worker)
        (survivor,) = await pods_of(kube_cluster, b.pool)
        assert survivor["metadata"]["uid"] == new["metadata"]["uid"]
        assert ANNOTATION_RETIRING not in (survivor["metadata"].get("annotations") or {})
        # without the precondition, the same request by name deletes the replacement
        await b.api.delete_pod(worker.handle, 0)
        assert await pods_of(kube_cluster, b.pool) == []


async def test_another_owners_pods_are_never_adopted_listed_or_stopped(
        make_kube_backend, kube_cluster, caplog):
    """Two hubs with pool `default` in one namespace, told apart by their pods' owners."""
    async with await kube_cluster.api_client("admin") as admin:
        await client.CoreV1Api(admin).create_namespaced_config_map(NAMESPACE, {"metadata": {"name": "hub-b"}})
    try:
        a = await make_kube_backend(pool="default")  # owner: Deployment/spark-master
        a_pods = {w.handle for w in await a.start(2)}
        b = await make_kube_backend(user="admin", pool="default", owner="ConfigMap/hub-b")
        assert await b.list() == [], "a's pods are not b's"
        b_pods = {w.handle for w in await b.start(2)}

        async def seen(backend) -> set[str]:
            return {w.handle for w in await backend.list()}

        await until(lambda: a.cache.stats["events"] >= 4, timeout=30, what="a's watch to see b's pods come")
        assert await seen(a) == a_pods and await seen(b) == b_pods
        for worker in await a.list():
            await a.stop(worker)
        assert {p["metadata"]["name"] for p in await pods_of(kube_cluster, "default")} == b_pods
        refusals = sorted(r.getMessage() for r in caplog.records if "not adopted" in r.getMessage())
        assert len(refusals) == 4, "each hub logs each of the other's pods once, whatever its events"
        assert sum("owner ConfigMap/hub-b, not Deployment/spark-master" in m for m in refusals) == 2
    finally:
        async with await kube_cluster.api_client("admin") as admin:
            await client.CoreV1Api(admin).delete_namespaced_config_map("hub-b", NAMESPACE)


async def test_a_bad_retiring_mark_means_retiring_since_the_pods_creation(
        make_kube_backend, kube_cluster, caplog):
    b = await make_kube_backend()
    (worker,) = await b.start(1)
    async with await kube_cluster.api_client("admin") as admin:
        core = client.CoreV1Api(admin)
        await core.patch_namespaced_pod(worker.handle, NAMESPACE,
                                        {"metadata": {"annotations": {ANNOTATION_RETIRING: "soon"}}})

        async def marked():
            (w,) = await b.list()  # never blind: list() raises while the cache cannot be trusted
            return w if w.retiring_since is not None else None

        retiring = await until(marked, timeout=30, what="the bad mark to reach the cache")
        assert retiring.retiring_since == retiring.created_at
        assert is_retiring(retiring, None), "drained, never taken for an idle worker"
        for i in range(3):  # more events of the same pod
            await core.patch_namespaced_pod(worker.handle, NAMESPACE, {"metadata": {"labels": {"n": str(i)}}})
        await until(lambda: b.cache.stats["events"] >= 5, timeout=30, what="the further events")
    assert not b.cache.error
    logged = [r.getMessage() for r in caplog.records if ANNOTATION_RETIRING in r.getMessage()]
    assert logged == [f"pod {worker.handle}: annotation {ANNOTATION_RETIRING}='soon' is not a time: "
                      "retiring, since unknown (counted from the pod's creation); its drain goes on"]


def _relabel(pod):
    pod["metadata"]["labels"]["jhub-spark-scaler/pool"] = "elsewhere"
    return pod


_ESCAPING_HOOKS = {
    "drops-pool-label": lambda backend, pod: (
        pod["metadata"]["labels"].pop("app.kubernetes.io/name"), pod)[1],
    "changes-pool-label": lambda backend, pod: _relabel(pod),
    "changes-namespace": lambda backend, pod: (pod["metadata"].update(namespace="default"), pod)[1],
    "drops-owner": lambda backend, pod: (pod["metadata"].pop("ownerReferences"), pod)[1],
    "fixed-name": lambda backend, pod: (pod["metadata"].update(name="spark-worker-x"), pod)[1],
    "returns-none": lambda backend, pod: None,
}


@pytest.mark.parametrize("hook", list(_ESCAPING_HOOKS))
async def test_modify_pod_hook_that_lets_a_pod_escape_creates_nothing(make_kube_backend, kube_cluster, hook):
    b = await make_kube_backend(modify_pod_hook=_ESCAPING_HOOKS[hook])
    with pytest.raises(BackendError) as refused:
        await b.start(2)
    message = str(refused.value)
    assert message.startswith("KubernetesBackend.modify_pod_hook ") and "\n" not in message
    assert message.endswith(": no worker pod created")
    assert "create pods" not in b.api.requests
    assert await pods_of(kube_cluster, b.pool) == []
