"""Worker pod manifests and pods read back: pure, no cluster needed."""

from __future__ import annotations

import copy
from datetime import datetime, timezone

import kubernetes_validate
import pytest

from jhub_spark_scaler.backends.master_manifests import master_deployment, master_services
from jhub_spark_scaler.backends.worker_pod import (
    ANNOTATION_RETIRING,
    WorkerPodTemplate,
    bad_retiring_mark,
    hook_result_error,
    parse_quantity,
    pod_selector_error,
    pod_worker,
    pool_selector,
    spark_size_mib,
    worker_pod,
    worker_resources,
)

KUBERNETES_VERSION = "1.30"


def resources(**overrides):
    settings = dict(cpu_limit="2", cpu_request="", memory_limit="4Gi", memory_request="", cores=0, memory="",
                    daemon_memory="256m", jvm_overhead=0.25)
    settings.update(overrides)
    return worker_resources(**settings)


def template(**overrides) -> WorkerPodTemplate:
    settings = dict(namespace="spark", pool="default", image="apache/spark:4.3.0",
                    master_url="spark://spark-master.spark.svc:7077", resources=resources(), run_as_user=185)
    settings.update(overrides)
    return WorkerPodTemplate(**settings)


@pytest.mark.parametrize("text, value", [
    ("1", 1), ("500m", 0.5), ("1.5", 1.5), ("2Gi", 2 * 2**30), ("100M", 1e8), ("1e3", 1000), ("64Ki", 65536),
])
def test_parse_quantity(text, value):
    assert parse_quantity(text) == pytest.approx(value)


@pytest.mark.parametrize("text", ["", "Gi", "1.2.3", "2GB", "-1", "1 Gi"])
def test_parse_quantity_rejects(text):
    with pytest.raises(ValueError, match="not a Kubernetes quantity"):
        parse_quantity(text)


def test_spark_sizes():
    assert spark_size_mib("512m") == 512
    assert spark_size_mib("2g") == 2048
    with pytest.raises(ValueError, match="not a Spark memory size"):
        spark_size_mib("2 GiB")


def test_resources_derived_so_the_jvms_fit_the_limit():
    r = resources()
    assert r.cores == 2
    # (4096 - 256 daemon heap - 256 daemon overhead) / 1.25
    assert r.memory_mib == 2867
    assert 256 + 256 + r.memory_mib * 1.25 <= 4096
    assert (r.cpu_request, r.memory_request) == ("2", "4Gi")
    assert resources(cpu_limit="500m").cores == 1  # Spark needs at least one core


def test_resources_checked_against_the_limit():
    assert resources(memory="2g", cores=2).memory_mib == 2048
    with pytest.raises(ValueError, match="worker_memory 3g does not fit memory_limit 4Gi"):
        resources(memory="3g")
    with pytest.raises(ValueError, match="worker_cores 3 exceeds cpu_limit 2"):
        resources(cores=3)
    with pytest.raises(ValueError, match="memory_limit 600Mi leaves"):
        resources(memory_limit="600Mi")
    with pytest.raises(ValueError, match="cpu/memory limit or guarantee"):
        resources(cpu_limit="two")


def test_pool_names():
    assert pod_selector_error("default") == ""
    assert pod_selector_error("Team_A")
    assert pod_selector_error("x" * 41)


def test_worker_pod_runs_the_jvm_with_the_pod_ip_as_host():
    pod = worker_pod(template())
    container = pod["spec"]["containers"][0]
    command = container["command"]
    assert command[:2] == ["/opt/spark/bin/spark-class", "org.apache.spark.deploy.worker.Worker"]
    assert command[command.index("--host") + 1] == "$(SPARK_WORKER_HOST)"
    assert command[command.index("--cores") + 1] == "2"
    assert command[command.index("--memory") + 1] == "2867m"
    assert command[-1] == "spark://spark-master.spark.svc:7077"
    env = {e["name"]: e for e in container["env"]}
    assert env["SPARK_WORKER_HOST"]["valueFrom"] == {"fieldRef": {"fieldPath": "status.podIP"}}
    assert "-Dspark.decommission.enabled=true" in env["SPARK_WORKER_OPTS"]["value"]
    assert pod["spec"]["restartPolicy"] == "Never"
    assert pod["spec"]["automountServiceAccountToken"] is False
    labels = pod["metadata"]["labels"]
    for term in pool_selector("default").split(","):
        key, value = term.split("=")
        assert labels[key] == value


def test_worker_pod_template_settings():
    owner = {"apiVersion": "apps/v1", "kind": "Deployment", "name": "spark-master", "uid": "u-1"}
    pod = worker_pod(template(
        image_pull_secrets=("regcred",), node_selector={"pool": "spark"},
        tolerations=({"key": "spark", "operator": "Exists", "effect": "NoSchedule"},),
        affinity={"nodeAffinity": {}}, env={"EXTRA": 1}, labels={"team": "a"}, annotations={"note": "x"},
        volumes=({"name": "data", "emptyDir": {}},), volume_mounts=({"name": "data", "mountPath": "/data"},),
        service_account="spark", spark_conf={"spark.worker.cleanup.enabled": "true"}, owner=owner,
    ))
    spec, container = pod["spec"], pod["spec"]["containers"][0]
    assert spec["imagePullSecrets"] == [{"name": "regcred"}]
    assert spec["nodeSelector"] == {"pool": "spark"}
    assert spec["serviceAccountName"] == "spark"
    assert {"name": "EXTRA", "value": "1"} in container["env"]
    assert pod["metadata"]["labels"]["team"] == "a"
    assert pod["metadata"]["ownerReferences"] == [owner]
    assert {"name": "data", "mountPath": "/data"} in container["volumeMounts"]
    opts = next(e["value"] for e in container["env"] if e["name"] == "SPARK_WORKER_OPTS")
    assert "-Dspark.worker.cleanup.enabled=true" in opts


def manifests():
    owner = {"apiVersion": "apps/v1", "kind": "Deployment", "name": "spark-master", "uid": "u-1"}
    yield worker_pod(template())
    yield worker_pod(template(owner=owner, service_account="spark", image_pull_secrets=("regcred",),
                              tolerations=({"key": "spark", "operator": "Exists"},)))
    yield master_deployment(name="spark-master", namespace="spark", image="apache/spark:4.3.0",
                            run_as_user=185, default_cores=2)
    yield from master_services(name="spark-master", namespace="spark")


@pytest.mark.parametrize("manifest", list(manifests()), ids=lambda m: f"{m['kind']}")
def test_manifests_validate_strictly(manifest):
    manifest = copy.deepcopy(manifest)
    if "generateName" in manifest["metadata"]:
        manifest["metadata"]["name"] = manifest["metadata"]["generateName"] + "abcde"
    kubernetes_validate.validate(manifest, KUBERNETES_VERSION, strict=True)


def pod(**changes) -> dict:
    base = {
        "metadata": {"name": "spark-worker-default-x1", "creationTimestamp": "2026-11-25T10:00:00Z",
                     "resourceVersion": "10"},
        "status": {"phase": "Running", "podIP": "10.1.2.3"},
    }
    for key, value in changes.items():
        base[key].update(value)
    return base


def test_pod_worker():
    w = pod_worker(pod())
    assert (w.handle, w.host, w.port, w.running, w.stopping) == ("spark-worker-default-x1", "10.1.2.3", 7078,
                                                                 True, False)
    assert w.webui_url == "http://10.1.2.3:8081"
    assert w.created_at == datetime(2026, 11, 25, 10, tzinfo=timezone.utc).timestamp()
    assert w.retiring_since is None
    retiring = pod_worker(pod(metadata={"annotations": {ANNOTATION_RETIRING: "1795604500.5"}}))
    assert retiring.retiring_since == 1795604500.5
    deleting = pod_worker(pod(metadata={"deletionTimestamp": "2026-11-25T10:05:00Z"}))
    assert (deleting.running, deleting.stopping) == (False, True)
    assert pod_worker(pod(status={"phase": "Failed"})).running is False
    assert pod_worker(pod(status={"podIP": "fd00::1"})).webui_url == "http://[fd00::1]:8081"


def test_pending_pods_carry_their_reason():
    unschedulable = pod(status={"phase": "Pending", "podIP": None, "conditions": [
        {"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
         "message": "0/3 nodes are available: 3 Insufficient cpu."}]})
    w = pod_worker(unschedulable)
    assert w.host == "" and w.webui_url == ""
    assert w.problem == "Unschedulable: 0/3 nodes are available: 3 Insufficient cpu."
    pull = pod(status={"phase": "Pending", "containerStatuses": [
        {"name": "spark-worker",
         "state": {"waiting": {"reason": "ErrImagePull", "message": "no such image"}}}]})
    assert pod_worker(pull).problem == "ErrImagePull: no such image"
    creating = pod(status={"phase": "Pending", "containerStatuses": [
        {"name": "spark-worker", "state": {"waiting": {"reason": "ContainerCreating"}}}]})
    assert pod_worker(creating).problem == ""


def test_ended_containers_carry_the_runtimes_reason():
    oom = {"reason": "OOMKilled", "exitCode": 137}
    killed = pod(status={"phase": "Failed", "containerStatuses": [
        {"name": "spark-worker", "state": {"terminated": oom}}]})
    assert pod_worker(killed).problem == "OOMKilled: exit code 137"
    restarted = pod(status={"phase": "Running", "containerStatuses": [
        {"name": "spark-worker", "state": {"running": {}}, "lastState": {"terminated": oom}}]})
    assert pod_worker(restarted).problem == "OOMKilled: exit code 137"
    done = pod(status={"phase": "Succeeded", "containerStatuses": [
        {"name": "spark-worker", "state": {"terminated": {"reason": "Completed", "exitCode": 0}}}]})
    assert pod_worker(done).problem == ""


def test_standby_masters_are_a_valid_master_url():
    from jhub_spark_scaler.backends.kubernetes import KubernetesBackend
    from traitlets import TraitError

    url = "spark://spark-master-0.spark:7077,spark-master-1.spark:7077"
    assert KubernetesBackend(namespace="spark", master_url=url).master_url == url
    with pytest.raises(TraitError, match="is not spark://host:port"):
        KubernetesBackend(namespace="spark", master_url="spark://a:7077,b")


def test_worker_pod_is_confined():
    spec = worker_pod(template(run_as_user=1000))["spec"]
    assert spec["securityContext"] == {"runAsNonRoot": True, "runAsUser": 1000,
                                       "seccompProfile": {"type": "RuntimeDefault"}}
    (container,) = spec["containers"]
    assert container["securityContext"] == {"allowPrivilegeEscalation": False,
                                            "capabilities": {"drop": ["ALL"]}}


@pytest.mark.parametrize("mark", ["soon", "", "nan", "inf", "1,5"])
def test_a_bad_retiring_mark_is_retiring_since_the_pods_creation(mark):
    bad = pod(metadata={"annotations": {ANNOTATION_RETIRING: mark}})
    w = pod_worker(bad)
    assert w.retiring_since == w.created_at, "still retiring: the drain goes on"
    assert bad_retiring_mark(bad) == repr(mark)
    assert bad_retiring_mark(pod(metadata={"annotations": {ANNOTATION_RETIRING: "1795604500.5"}})) == ""
    assert bad_retiring_mark(pod()) == ""


def test_hook_result_error_names_what_the_hook_broke():
    owner = {"apiVersion": "apps/v1", "kind": "Deployment", "name": "spark-master", "uid": "u-1"}
    good = worker_pod(template(owner=owner))

    def check(pod, owner_uid="u-1"):
        return hook_result_error(pod, namespace="spark", pool="default", owner_uid=owner_uid)

    assert check(good) == ""
    assert check(worker_pod(template())) != "" and check(worker_pod(template()), owner_uid="") == ""
    assert check(None) == "returned NoneType, not a Pod manifest (a dict)"
    relabelled = copy.deepcopy(good)
    relabelled["metadata"]["labels"]["jhub-spark-scaler/pool"] = "other"
    assert check(relabelled) == "removed or changed the pool's labels jhub-spark-scaler/pool"
    moved = copy.deepcopy(good)
    moved["metadata"]["namespace"] = "default"
    assert check(moved) == "moved the pod to namespace 'default' (the pool's is 'spark')"
    named = copy.deepcopy(good)
    named["metadata"]["name"] = "w"
    assert "fixed name 'w'" in check(named)


def test_workers_find_a_replaced_master_through_its_service():
    """The worker registers at the Service's DNS name and goes back to it on reconnect, not to
    the IP the master announced (a pod that may be gone)."""
    from jhub_spark_scaler.backends.kubernetes import KubernetesBackend

    backend = KubernetesBackend(namespace="spark", master_name="spark-master")
    container = worker_pod(template(master_url=backend.master_url))["spec"]["containers"][0]
    assert container["command"][-1] == "spark://spark-master.spark.svc:7077"
    opts = next(e["value"] for e in container["env"] if e["name"] == "SPARK_WORKER_OPTS").split()
    assert "-Dspark.worker.preferConfiguredMasterAddress=true" in opts
    assert "-Dspark.decommission.enabled=true" in opts


def test_a_deleted_worker_pod_decommissions_and_waits_for_its_executors():
    pod = worker_pod(template(drain_seconds=600, stop_grace_period=30))
    (container,) = pod["spec"]["containers"]
    command = container["lifecycle"]["preStop"]["exec"]["command"]
    assert command[:2] == ["/bin/sh", "-c"]
    script = command[2]
    assert script.startswith("kill -PWR 1;"), "SIGPWR to the worker JVM, the container's PID 1"
    assert "[ $i -lt 600 ]" in script and "sleep 1" in script, "waits at most 600 s"
    assert "CoarseGrainedExecutorBacken[d]" in script, "until no executor JVM is left"
    # the kubelet counts the hook in the grace period: the wait, then the JVM's exit
    assert pod["spec"]["terminationGracePeriodSeconds"] == 630


def test_the_backend_derives_the_hook_and_the_grace_period_from_the_drain_settings():
    from traitlets.config import Config

    from jhub_spark_scaler.app import SparkScalerApp
    from jhub_spark_scaler.backends.kubernetes import KubernetesBackend

    def backend(**app_settings):
        app = SparkScalerApp(config=Config({"SparkScalerApp": app_settings}), max_workers=2)
        return KubernetesBackend(parent=app, namespace="spark", stop_grace_period=20)

    assert backend().pod_drain_timeout == 600, "drain_timeout off: cluster-autoscaler's 600 s"
    assert backend(drain_timeout=900.5).pod_drain_timeout == 901
    assert worker_pod(backend(drain_timeout=120).template())["spec"]["terminationGracePeriodSeconds"] == 140
    configured = KubernetesBackend(namespace="spark", pod_drain_timeout=60, stop_grace_period=20)
    assert worker_pod(configured.template())["spec"]["terminationGracePeriodSeconds"] == 80


def test_start_timeout_defaults_to_the_backends():
    from jhub_spark_scaler.app import SparkScalerApp
    from jhub_spark_scaler.backends.kubernetes import KubernetesBackend
    from jhub_spark_scaler.backends.local import LocalBackend

    assert SparkScalerApp(max_workers=2).start_timeout == LocalBackend.default_start_timeout == 120
    app = SparkScalerApp(max_workers=2, backend_class=KubernetesBackend)
    assert app.start_timeout == KubernetesBackend.default_start_timeout == 300
    assert SparkScalerApp(max_workers=2, backend_class=KubernetesBackend,
                          start_timeout=60).start_timeout == 60


def test_default_cores_are_two_workers():
    from traitlets import TraitError

    from jhub_spark_scaler.backends.kubernetes import KubernetesBackend

    assert KubernetesBackend(namespace="spark").default_cores == 2  # cpu_limit 1
    assert KubernetesBackend(namespace="spark", cpu_limit="3").default_cores == 6
    assert KubernetesBackend(namespace="spark", cpu_limit="4", worker_cores=2).default_cores == 4
    assert KubernetesBackend(namespace="spark", default_cores=1).default_cores == 1
    with pytest.raises(TraitError, match=r"KubernetesBackend.default_cores: 0 must be at least 1"):
        KubernetesBackend(namespace="spark", default_cores=0)


@pytest.mark.parametrize("memory, heap", [("512Mi", 256), ("1Gi", 768), ("1536Mi", 1152), ("4Gi", 3072)])
def test_the_masters_heap_fits_its_memory_limit(memory, heap):
    from jhub_spark_scaler.backends.master_manifests import master_heap_mib

    assert master_heap_mib(memory) == heap
    deployment = master_deployment(name="m", namespace="spark", image="i", run_as_user=185, default_cores=4,
                                   memory=memory)
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["SPARK_DAEMON_MEMORY"] == f"{heap}m"
    assert container["resources"]["limits"]["memory"] == memory
    assert "-Dspark.deploy.defaultCores=4" in env["SPARK_MASTER_OPTS"].split()


def test_a_master_limit_too_small_for_a_jvm_names_the_setting():
    from jhub_spark_scaler.backends.master_manifests import master_heap_mib

    with pytest.raises(ValueError, match=r"^KubernetesBackend.master_memory 500Mi is below 512Mi"):
        master_heap_mib("500Mi")
