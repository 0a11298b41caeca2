"""The Spark master Deployment and its two Services, for `manage_master`. Pure.

The master binds to its pod IP and announces it (workers reach it through the
`<name>` Service, then talk to the address it announces); decommission is
enabled and `/workers/kill/` is allowed from other pods (the scaler's), which is
why the deployment guide's NetworkPolicy admits only the hub to the UI port.
"""

from __future__ import annotations

from .worker_pod import container_security_context, pod_security_context

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


def master_deployment(*, name: str, namespace: str, image: str, run_as_user: int,
                      image_pull_policy: str = "IfNotPresent", memory: str = "1Gi", cpu: str = "1") -> dict:
    """The master's Deployment; its pod passes Pod Security Standards `restricted` as the
    workers' do, running as `run_as_user`."""
    selector = {"app.kubernetes.io/instance": name, LABEL_COMPONENT: "spark-master"}
    options = " ".join([
        "-Dspark.decommission.enabled=true",
        "-Dspark.master.ui.decommission.allow.mode=ALLOW",
        "-Dspark.master.rest.enabled=false",
        # pack an app's executors onto as few workers as hold them: the rest stay idle, retirable
        "-Dspark.deploy.spreadOut=false",
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
