"""A notebook server's Spark driver in a pod on the real node (tests/kube_node.py), set up the
way z2jh sets up a singleuser pod from helm-values/values.yaml: the notebook image, uid 1000
with fsGroup 100 and no privilege escalation, `singleuser.extraEnv` (SPARK_CONF_DIR and
SPARK_DRIVER_HOST from the pod IP), `singleuser.extraFiles`' spark-defaults.conf mounted from a
Secret with a subPath (as the chart does), and the hub user's SPARK_SUBMIT_OPTS as
`configure()` gives it (jhub_spark_scaler/driver_user.py).

The notebook's code is a Python file (a "cell") from a ConfigMap, run with the image's
`python3`, as a kernel would run it; what it prints comes back through the container's log
file (the node's kubelet serves no logs: tests/kube_node.py). The values' Spark defaults are used
as they are: `spark.master` names the master's Service, which the node's STAND-IN for cluster
DNS resolves (tests/node_dns.py), so tests using this carry `stand-in-dns` in their ids.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from types import SimpleNamespace

import yaml
from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

from jhub_spark_scaler.driver_user import SUBMIT_OPTS, DriverUser

from .waiting import until

VALUES = Path(__file__).resolve().parent.parent / "helm-values" / "values.yaml"
CELL_DIR = "/srv/notebook"
RESULT = "RESULT "  # the cell's line of JSON for the test starts with this
NOTEBOOK_UID, NOTEBOOK_FS_GID = 1000, 100  # z2jh's singleuser.uid and singleuser.fsGid


def singleuser_values() -> dict:
    return yaml.safe_load(VALUES.read_text())["singleuser"]


def spark_defaults() -> tuple[str, str]:
    """(mount path, text) of the values' spark-defaults.conf."""
    (entry,) = singleuser_values()["extraFiles"].values()
    return entry["mountPath"], entry["stringData"]


def values_master_url() -> str:
    """The master the values' spark-defaults.conf names (its Service)."""
    (url,) = re.findall(r"(?m)^spark\.master\s+(\S+)$", spark_defaults()[1])
    return url


def notebook_env(hub_user: str) -> list[dict]:
    """`singleuser.extraEnv` as a container's env, plus the hub's SPARK_SUBMIT_OPTS for `hub_user`."""
    env = [{"name": name, **(value if isinstance(value, dict) else {"value": str(value)})}
           for name, value in singleuser_values()["extraEnv"].items()]
    spawner = SimpleNamespace(user=SimpleNamespace(name=hub_user))
    return [*env, {"name": SUBMIT_OPTS, "value": DriverUser()(spawner)}]


def notebook_pod(name: str, *, image: str, hub_user: str, conf_path: str) -> dict:
    conf_dir, conf_file = conf_path.rsplit("/", 1)
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": singleuser_values()["extraLabels"]},
        "spec": {
            "restartPolicy": "Never",
            "automountServiceAccountToken": False,
            "enableServiceLinks": False,
            "securityContext": {"fsGroup": NOTEBOOK_FS_GID},
            "containers": [{
                "name": "notebook", "image": image, "imagePullPolicy": "Never",
                "command": ["python3", f"{CELL_DIR}/cell.py"], "workingDir": "/tmp",
                "env": notebook_env(hub_user),
                "securityContext": {"runAsUser": NOTEBOOK_UID, "allowPrivilegeEscalation": False},
                "resources": {"limits": {"memory": "1536Mi"}, "requests": {"cpu": "100m", "memory": "1Gi"}},
                "volumeMounts": [{"name": "cell", "mountPath": CELL_DIR, "readOnly": True},
                                 {"name": "files", "mountPath": conf_path, "subPath": conf_file}],
            }],
            "volumes": [{"name": "cell", "configMap": {"name": name}},
                        {"name": "files", "secret": {"secretName": name}}],
        },
    }


def container_log(real_node, pod: str) -> str:
    """The notebook container's output (CRI log lines: time, stream, tag, text)."""
    files = sorted(real_node.log_dir.glob(f"{real_node.namespace}_{pod}_*/notebook/*.log"))
    lines = (line for f in files for line in f.read_text(errors="replace").splitlines())
    return "\n".join(line.split(" ", 3)[-1] for line in lines)


async def run_cell(real_node, *, image: str, name: str, cell: str, hub_user: str,
                   timeout: float = 300) -> dict:
    """Run `cell` (Python source) as a notebook's code in a pod of `image` and return the JSON
    it printed after RESULT; a cell that fails or prints none fails with its output."""
    ns = real_node.namespace
    conf_path, conf_text = spark_defaults()
    async with await real_node.api_client("admin") as admin:
        core = client.CoreV1Api(admin)
        await core.create_namespaced_config_map(ns, {"metadata": {"name": name}, "data": {"cell.py": cell}})
        await core.create_namespaced_secret(ns, {"metadata": {"name": name},
                                                 "stringData": {conf_path.rsplit("/", 1)[1]: conf_text}})
        try:
            await core.create_namespaced_pod(ns, notebook_pod(name, image=image, hub_user=hub_user,
                                                              conf_path=conf_path))

            async def ended():
                phase = (await core.read_namespaced_pod(name, ns)).status.phase
                return phase if phase in ("Succeeded", "Failed") else None

            phase = await until(ended, timeout=timeout, interval=1, what=f"the notebook pod {name} to end")
            output = container_log(real_node, name)
        finally:
            for delete in (core.delete_namespaced_pod, core.delete_namespaced_config_map,
                           core.delete_namespaced_secret):
                try:
                    await delete(name, ns, grace_period_seconds=1)
                except ApiException as e:
                    if e.status != 404:
                        raise
    results = [line[len(RESULT):] for line in output.splitlines() if line.startswith(RESULT)]
    assert phase == "Succeeded" and results, f"the notebook pod {name} ended {phase}:\n{output[-4000:]}"
    return json.loads(results[-1])
