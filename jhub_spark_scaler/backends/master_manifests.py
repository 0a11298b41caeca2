"""The Spark master Deployment and its two Services, for `manage_master`. Pure.

The master binds to its pod IP and announces it (workers reach it through the
`<name>` Service, then talk to the address it announces; they go back to the
Service when it is replaced: `worker_pod`); decommission is
enabled and `/workers/kill/` is allowed from other pods (the scaler's), which is
why the deployment guide's NetworkPolicy admits only the hub to the UI port.
Its JVM heap (SPARK_DAEMON_MEMORY) is derived from the container's memory limit,
and `spark.deploy.defaultCores` bounds an app that sets no `spark.cores.max`.
"""

from __future__ import annotations

import math

from .worker_pod import (
    DAEMON_OVERHEAD_MIB,
    container_security_context,
    parse_quantity,
    pod_security_context,
)

MASTER_CLASS = "org.apache.spark.deploy.master.Master"
MASTER_PORT = 7077
MASTER_UI_PORT = 8080
LABEL_COMPONENT = "jhub-spark-scaler/component"


def _labels(name: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "spark-master",
        "app.kubernetes.io/instance": name,
        "app.kubernetes.io/managed-by": "jhub-spark-scaler",
        LABEL_COMPONENT: "spark-master",
    }


def master_url(name: str, namespace: str) -> str:
    return f"spark://{name}.{namespace}.svc:{MASTER_PORT}"


def master_ui_url(name: str, namespace: str) -> str:
    return f"http://{name}-ui.{namespace}.svc:{MASTER_UI_PORT}"


#: the least memory limit of the master's container: a 256 MiB heap and its non-heap
MASTER_MEMORY_MIN_MIB = 2 * DAEMON_OVERHEAD_MIB


def master_heap_mib(memory: str) -> int:
    """The master JVM's heap (SPARK_DAEMON_MEMORY) inside its container's memory limit
    `memory` (a Kubernetes quantity). Spark's launcher default, -Xmx1g, fills a 1Gi limit
    with heap alone, and metaspace, thread stacks and the code cache then push the
    container over it (OOMKilled). The rest of the limit is kept for them: a quarter, at
    least DAEMON_OVERHEAD_MIB (1Gi: 768 MiB heap). ValueError naming the setting if the
    limit is below MASTER_MEMORY_MIN_MIB."""
    limit_mib = math.floor(parse_quantity(memory) / 2**20)
    if limit_mib < MASTER_MEMORY_MIN_MIB:
        raise ValueError(f"KubernetesBackend.master_memory {memory} is below {MASTER_MEMORY_MIN_MIB}Mi: "
                         "the master's JVM needs a heap of 256 MiB and as much beside it")
    return limit_mib - max(DAEMON_OVERHEAD_MIB, math.ceil(limit_mib / 4))


def master_deployment(*, name: str, namespace: str, image: str, run_as_user: int, default_cores: int,
                      image_pull_policy: str = "IfNotPresent", memory: str = "1Gi", cpu: str = "1") -> dict:
    """The master's Deployment; its pod passes Pod Security Standards `restricted` as the
    workers' do, running as `run_as_user`. `default_cores` is `spark.deploy.defaultCores`:
    the cores an app that sets no `spark.cores.max` gets at most."""
    selector = {"app.kubernetes.io/instance": name, LABEL_COMPONENT: "spark-master"}
    options = " ".join([
        "-Dspark.decommission.enabled=true",
        "-Dspark.master.ui.decommission.allow.mode=ALLOW",
        "-Dspark.master.rest.enabled=false",
        # pack an app's executors onto as few workers as hold them: the rest stay idle, retirable
        "-Dspark.deploy.spreadOut=false",
        f"-Dspark.deploy.defaultCores={default_cores}",
    ])
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": namespace, "labels": _labels(name)},
        "spec": {
            "replicas": 1,
            "strategy": {"type": "Recreate"},  # never two masters
            "selector": {"matchLabels": selector},
            "template": {
                "metadata": {"labels": _labels(name)},
                "spec": {
                    "automountServiceAccountToken": False,
                    # the Service <name>'s link variables would set SPARK_MASTER_PORT=tcp://...:7077,
                    # which the master reads as its port and exits on
                    "enableServiceLinks": False,
                    "securityContext": pod_security_context(run_as_user),
                    "containers": [{
                        "name": "spark-master",
                        "image": image,
                        "imagePullPolicy": image_pull_policy,
                        "command": [
                            "/opt/spark/bin/spark-class", MASTER_CLASS,
                            "--host", "$(POD_IP)", "--port", str(MASTER_PORT),
                            "--webui-port", str(MASTER_UI_PORT),
                        ],
                        "env": [
                            {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                            {"name": "SPARK_MASTER_OPTS", "value": options},
                            {"name": "SPARK_DAEMON_MEMORY", "value": f"{master_heap_mib(memory)}m"},
                        ],
                        "ports": [
                            {"name": "master", "containerPort": MASTER_PORT},
                            {"name": "master-ui", "containerPort": MASTER_UI_PORT},
                        ],
                        "readinessProbe": {"httpGet": {"path": "/json/", "port": MASTER_UI_PORT}},
                        "resources": {
                            "requests": {"cpu": cpu, "memory": memory},
                            "limits": {"memory": memory},
                        },
                        "securityContext": container_security_context(),
                    }],
                },
            },
        },
    }


def master_services(*, name: str, namespace: str) -> list[dict]:
    """`<name>` (7077, for workers and drivers) and `<name>-ui` (8080, for the scaler)."""
    selector = {"app.kubernetes.io/instance": name, LABEL_COMPONENT: "spark-master"}

    def service(service_name: str, port_name: str, port: int) -> dict:
        return {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": service_name, "namespace": namespace, "labels": _labels(name)},
            "spec": {
                "selector": selector,
                "ports": [{"name": port_name, "port": port, "targetPort": port}],
            },
        }

    return [service(name, "master", MASTER_PORT), service(f"{name}-ui", "master-ui", MASTER_UI_PORT)]
