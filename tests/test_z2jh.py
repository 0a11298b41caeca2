"""Deploying on zero-to-jupyterhub: helm-values/ and docs/deploy-z2jh.md.

Pure: helm-values/values.yaml, merged over the z2jh 4.4.0 chart defaults as Helm merges,
validates against the chart's values schema; the chart's way of turning values into
JupyterHub config (tests/data/z2jh-4.4.0/hub/, a stand-in for z2jh.py and the chart's
jupyterhub_config.py) runs hub.extraConfig's configure() and yields one service, its roles
and the hooks; every manifest passes kubernetes-validate --strict (1.30); the network
policies admit exactly what they say, for the labels the code and the values give the
pods; the hub image recipe builds the package; the notebooks and the Spark pods run one image,
whose recipe pins the suite's pyspark on the Debian suite of the tests' image; the guide's
commands name what these tests use.

On the real kube-apiserver: server-side dry run of every manifest the guide applies. On a
real JupyterHub (MockHub): the values start the scaler as the hub's service, which works
as the hub's service account holding only helm-values/rbac.yaml's Role on real Spark
workers (tests/kubelet.py): an idle worker, pre-warm through the hooks, a driver with the
notebooks' Spark defaults gets an executor, the admin page for the operators' group
through the proxy, and scale-in when all of it stops.
"""

from __future__ import annotations

import asyncio
import copy
import importlib.metadata
import json
import os
import re
import secrets
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml
from jupyterhub.app import JupyterHub
from jupyterhub.utils import random_port
from kubernetes_asyncio import client
from tornado.httpclient import AsyncHTTPClient
from traitlets.config import Config
from traitlets.config.loader import PyFileConfigLoader

import jhub_spark_scaler
from jhub_spark_scaler.app import SparkScalerApp
from jhub_spark_scaler.backends.kubernetes import KubernetesBackend
from jhub_spark_scaler.backends.master_manifests import master_deployment, master_services, master_url
from jhub_spark_scaler.backends.worker_pod import pool_selector, worker_pod
from jhub_spark_scaler.constants import ADMIN_SCOPE, EVENTS_SECRET_ENV, READ_SCOPE, SERVICE_SCOPES
from jhub_spark_scaler.driver_user import SUBMIT_OPTS, DriverUser
from jhub_spark_scaler.hub import SpawnerHook, configure
from jhub_spark_scaler.spark import SparkClient

from .notebook_image import CHOSEN_VERSIONS, LOCKED_VERSIONS, pinned_versions
from .real_hub import ADMIN_TOKEN, hub_api, hub_config, start_server
from .settings import HTTP_TIMEOUT
from .spark_image import build_spark_image
from .waiting import always, until

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
HELM = ROOT / "helm-values"
CHART = HERE / "data" / "z2jh-4.4.0"
GUIDE = ROOT / "docs" / "deploy-z2jh.md"
Z2JH_VERSION = "4.4.0"
HUB_NAMESPACE, SPARK_NAMESPACE = "jhub", "spark"
#: every Kubernetes manifest beside the values
MANIFESTS = sorted(p.relative_to(ROOT).as_posix() for p in HELM.glob("*.yaml") if p.name != "values.yaml")


def load_all(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


# ---- the guide: its commands, as the tests use them -----------------------------------------


def guide_commands() -> list[list[str]]:
    """Every command of the guide's ```bash blocks, split as the shell would (comments and
    line continuations removed)."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", GUIDE.read_text(), re.S):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            if words:
                commands.append(words)
    return commands


def guide_exports() -> dict[str, str]:
    """The variables the guide exports, first value of each (the install's, not the upgrade's)."""
    exports: dict[str, str] = {}
    for words in guide_commands():
        if words[0] == "export":
            name, _, value = words[1].partition("=")
            exports.setdefault(name, value)
    return exports


def guide_helm_installs() -> list[list[str]]:
    """The guide's `helm upgrade` commands that install the scaler (those with our values)."""
    return [w for w in guide_commands() if w[:2] == ["helm", "upgrade"] and "helm-values/values.yaml" in w]


def flag_values(words: list[str], flag: str) -> list[str]:
    return [words[i + 1] for i, word in enumerate(words[:-1]) if word == flag]


def guide_applied_manifests() -> list[str]:
    return [f for w in guide_commands() if w[:2] == ["kubectl", "apply"] for f in flag_values(w, "-f")]


def guide_values_files() -> list[str]:
    """Our values files in the guide's install command (the admin's config.yaml aside)."""
    (install, *_) = guide_helm_installs()
    return [f for f in flag_values(install, "--values") if f.startswith("helm-values/")]


def guide_set_values() -> dict:
    """The install's `--set a.b=value` options as a values layer, with the exported variables."""
    (install, *_) = guide_helm_installs()
    layer: dict = {}
    for option in flag_values(install, "--set"):
        path, _, value = option.partition("=")
        for name, exported in guide_exports().items():
            value = value.replace(f"${name}", exported)
        *parents, leaf = path.split(".")
        node = layer
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    return layer


# ---- values, merged as Helm merges them ------------------------------------------------------


def helm_merge(defaults: dict, override: dict) -> dict:
    """Helm's coalescing of user values over a chart's defaults: maps merge recursively,
    lists and scalars replace, a null deletes the key."""
    merged = copy.deepcopy(defaults)
    for key, value in override.items():
        if value is None:
            merged.pop(key, None)
        elif isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = helm_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def chart_values(*layers: dict) -> dict:
    """The chart's defaults, then the values files of the guide's install, then `layers`."""
    merged = yaml.safe_load((CHART / "values.yaml").read_text())
    for layer in [*(yaml.safe_load((ROOT / f).read_text()) for f in guide_values_files()), *layers]:
        merged = helm_merge(merged, layer)
    return merged


VALUES = chart_values(guide_set_values())
SCALER = VALUES["custom"]["sparkScaler"]
RUN_AS_USER = SCALER.get("KubernetesBackend__run_as_user", KubernetesBackend.run_as_user.default_value)


def chart_config(values: dict, root: Path) -> tuple[Config, dict[str, str]]:
    """What the chart's hub pod makes of `values`: the chart's Secret (the values, with the
    Chart and Release entries, and an api_token for each hub.services entry, generated where
    the values set none) under `root`, then tests/data/z2jh-4.4.0/hub/jupyterhub_config.py
    loaded as JupyterHub loads its config file. Returns the config and the tokens.
    The caller sets $Z2JH_STANDIN_ROOT to `root`."""
    secret = root / "secret"
    secret.mkdir(parents=True)
    rendered = {**values, "Chart": {"Name": "jupyterhub", "Version": Z2JH_VERSION},
                "Release": {"Name": "jhub", "Namespace": HUB_NAMESPACE, "Service": "Helm"}}
    (secret / "values.yaml").write_text(yaml.safe_dump(rendered))
    tokens = {}
    for key, service in (values["hub"]["services"] or {}).items():
        tokens[key] = service.get("apiToken") or secrets.token_hex(32)
        (secret / f"hub.services.{key}.apiToken").write_text(tokens[key])
    hub_dir = str(CHART / "hub")
    sys.modules.pop("z2jh", None)  # its values are cached per module, like in a hub pod
    try:
        config = PyFileConfigLoader("jupyterhub_config.py", path=hub_dir).load_config()
    finally:
        sys.modules.pop("z2jh", None)
        while hub_dir in sys.path:
            sys.path.remove(hub_dir)
    return config, tokens


# ---- the values ------------------------------------------------------------------------------


def test_helm_merge_is_helms():
    defaults = {"a": {"b": 1, "c": [1, 2], "d": {"e": 1}}, "f": 1, "g": {"h": 1}}
    merged = helm_merge(defaults, {"a": {"c": [3], "d": {"x": 2}}, "f": None, "g": "scalar"})
    assert merged == {"a": {"b": 1, "c": [3], "d": {"e": 1, "x": 2}}, "g": "scalar"}
    assert defaults["a"]["c"] == [1, 2], "the defaults are left alone"


def test_values_merged_over_the_chart_defaults_validate_against_its_schema():
    schema = yaml.safe_load((CHART / "values.schema.yaml").read_text())
    validator = jsonschema.Draft7Validator(schema)
    errors = ["/".join(map(str, e.path)) + ": " + e.message for e in validator.iter_errors(VALUES)]
    assert errors == []
    # the schema does check the parts this file sets: a wrong type and a misspelt key fail
    wrong = chart_values({"hub": {"networkPolicy": {"ingress": {"from": []}}}})
    assert [list(e.path) for e in validator.iter_errors(wrong)] == [["hub", "networkPolicy", "ingress"]]
    misspelt = chart_values({"singleuser": {"extraLabel": {"a": "b"}}})
    assert ["singleuser"] in [list(e.path) for e in validator.iter_errors(misspelt)]
    # what the guide sets on the command line is in the validated values
    assert VALUES["hub"]["image"] == {**VALUES["hub"]["image"], "name": guide_exports()["HUB_IMAGE"],
                                      "tag": guide_exports()["HUB_TAG"]}


def test_extra_config_completes_the_charts_service_and_adds_roles_and_hooks(tmp_path, monkeypatch):
    monkeypatch.setenv("Z2JH_STANDIN_ROOT", str(tmp_path))
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.96.0.1")  # as in the hub pod
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "443")
    c, tokens = chart_config(VALUES, tmp_path)
    hub = JupyterHub(config=c)  # the hub's own traits take the config

    services = {s["name"]: s for s in hub.services}
    assert set(services) == {"jupyterhub-idle-culler", "spark-scaler"}, "one scaler service, the culler kept"
    service = services["spark-scaler"]
    command = service.pop("command")
    assert service == {
        "name": "spark-scaler",
        "url": "http://hub:10101",  # the proxy reaches it through the hub's Service
        "display": True,
        "oauth_no_confirm": True,
        "oauth_client_allowed_scopes": [ADMIN_SCOPE, READ_SCOPE],
        "api_token": tokens["spark-scaler"],  # the chart's, from its Secret
        "environment": {"KUBERNETES_SERVICE_HOST": "10.96.0.1", "KUBERNETES_SERVICE_PORT": "443",
                        EVENTS_SECRET_ENV: c.Spawner.pre_spawn_hook.notifier.token},
    }
    assert command[:3] == [sys.executable, "-m", "jhub_spark_scaler"]
    app = SparkScalerApp()
    app.parse_command_line(command[3:])
    app.check_settings()
    assert app.service_url == "http://0.0.0.0:10101", "listens on every address of the hub pod"
    assert app.backend_class is KubernetesBackend
    assert (app.max_workers, app.idle_workers, app.scale_down_delay) == (20, 1, 60)
    backend = KubernetesBackend(config=app.config)
    assert (backend.namespace, backend.pool) == ("spark", "notebooks")
    assert backend.owner == "Deployment/spark-master"
    assert backend.master_url == "spark://spark-master.spark.svc:7077"
    assert backend.master_ui_url == "http://spark-master-ui.spark.svc:8080"
    assert backend.resources().cores == 2  # the pod's limits fit a worker and its executors

    roles = {r["name"]: r for r in hub.load_roles}
    assert set(roles) == {"jupyterhub-idle-culler", "spark-scaler-service", "spark-scaler-operators"}
    assert roles["spark-scaler-service"]["services"] == ["spark-scaler"]
    assert roles["spark-scaler-service"]["scopes"] == SERVICE_SCOPES
    operators = roles["spark-scaler-operators"]
    assert set(operators["scopes"]) == {ADMIN_SCOPE, "access:services!service=spark-scaler"}
    assert ADMIN_SCOPE in hub.custom_scopes

    start, stop = c.Spawner.pre_spawn_hook, c.Spawner.post_stop_hook
    assert isinstance(start, SpawnerHook) and isinstance(stop, SpawnerHook)
    assert (start.action, stop.action) == ("start", "stop")
    assert start.notifier.url == "http://127.0.0.1:10101", "the hooks post over loopback in the hub pod"
    assert start.notifier.token == service["environment"][EVENTS_SECRET_ENV] != tokens["spark-scaler"], \
        "the hooks send their own secret, never the service's API token"

    # the notebooks' drivers carry the hub user's name; singleuser.extraEnv is kept
    kube_env = c.KubeSpawner.environment
    assert kube_env["SPARK_CONF_DIR"] == VALUES["singleuser"]["extraEnv"]["SPARK_CONF_DIR"]
    assert isinstance(kube_env[SUBMIT_OPTS], DriverUser)
    assert isinstance(c.Spawner.environment[SUBMIT_OPTS], DriverUser)


def test_configure_completes_an_existing_service_only_when_asked():
    def with_entry() -> Config:
        c = Config()
        c.JupyterHub.services = [{"name": "spark-scaler", "url": "http://hub:10101", "api_token": "t" * 64}]
        return c

    with pytest.raises(ValueError, match="already has a service named 'spark-scaler'"):
        configure(with_entry(), max_workers=2)
    with pytest.raises(ValueError, match="no service named 'spark-scaler'"):
        configure(Config(), max_workers=2, existing_service=True)
    with pytest.raises(ValueError, match="has url 'http://hub:10101', not"):
        configure(with_entry(), max_workers=2, existing_service=True, url="http://127.0.0.1:10101")
    c = with_entry()
    c.JupyterHub.services[0]["command"] = ["their", "own"]
    with pytest.raises(ValueError, match="already has a command"):
        configure(c, max_workers=2, existing_service=True)
    # a role naming the service must grant what the scaler needs
    c = with_entry()
    c.JupyterHub.load_roles = [{"name": "mine", "services": ["spark-scaler"], "scopes": ["list:users"]}]
    with pytest.raises(ValueError, match=r"\(mine\) lack the scopes read:servers"):
        configure(c, max_workers=2, existing_service=True)
    # no role yet: configure() adds its own; the entry's token and url are kept
    c = with_entry()
    service = configure(c, max_workers=2, existing_service=True, listen="::")
    assert [r["name"] for r in c.JupyterHub.load_roles] == ["spark-scaler-service"]
    assert (service["api_token"], service["url"]) == ("t" * 64, "http://hub:10101")
    assert "--SparkScalerApp.service_url=http://[::]:10101" in service["command"]
    assert c.Spawner.pre_spawn_hook.notifier.url == "http://[::1]:10101"
    assert service["environment"] == {EVENTS_SECRET_ENV: c.Spawner.pre_spawn_hook.notifier.token}, \
        "only the hooks' secret"


def test_the_ports_and_names_agree():
    (extra_port,) = VALUES["hub"]["service"]["extraPorts"]
    service_url = VALUES["hub"]["services"]["spark-scaler"]["url"]
    assert service_url == f"http://hub:{extra_port['port']}"
    assert extra_port["targetPort"] == SCALER["port"] == 10101
    assert SCALER["listen"] == "0.0.0.0" and SCALER["existing_service"] is True

    def ports(rules: list[dict]) -> list[int]:
        return [p["port"] for rule in rules for p in rule["ports"]]

    assert ports(VALUES["hub"]["networkPolicy"]["ingress"]) == [10101]
    assert ports(VALUES["proxy"]["chp"]["networkPolicy"]["egress"]) == [10101]
    assert SCALER["KubernetesBackend__namespace"] == SPARK_NAMESPACE
    for path in MANIFESTS:
        for doc in load_all(ROOT / path):
            assert doc["metadata"]["namespace"] == SPARK_NAMESPACE, path
            for subject in doc.get("subjects", []):
                assert (subject["kind"], subject["name"], subject["namespace"]) == (
                    "ServiceAccount", "hub", HUB_NAMESPACE), path


def spark_defaults() -> dict[str, str]:
    text = VALUES["singleuser"]["extraFiles"]["spark-defaults"]["stringData"]
    pairs = (line.split(None, 1) for line in text.splitlines() if line.strip() and not line.startswith("#"))
    return {key: value.strip() for key, value in pairs}


def test_notebook_spark_defaults_fit_the_master_and_the_policies():
    conf = spark_defaults()
    assert conf["spark.decommission.enabled"] == "true"
    assert conf["spark.storage.decommission.enabled"] == "true"
    assert conf["spark.master"] == master_url("spark-master", SPARK_NAMESPACE)
    env = VALUES["singleuser"]["extraEnv"]
    mount = VALUES["singleuser"]["extraFiles"]["spark-defaults"]["mountPath"]
    assert mount == env["SPARK_CONF_DIR"] + "/spark-defaults.conf"
    host_var = re.fullmatch(r"\$\{env:(\w+)\}", conf["spark.driver.host"]).group(1)
    assert env[host_var] == {"valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}, "the pod's IP"
    # a driver's ports (and those of further sessions in the pod) are what the notebooks admit
    (ingress,) = VALUES["singleuser"]["networkPolicy"]["ingress"]
    (driver_ports,) = ingress["ports"]
    retries = int(conf["spark.port.maxRetries"])
    assert driver_ports["port"] == int(conf["spark.driver.port"])
    assert int(conf["spark.driver.blockManager.port"]) == driver_ports["port"] + 1
    assert driver_ports["endPort"] == driver_ports["port"] + 1 + retries
    # executors' block managers: the workers admit them, the notebooks may reach them
    executor = int(conf["spark.blockManager.port"])
    policies = {d["metadata"]["name"]: d for d in load_all(HELM / "networkpolicy.yaml")}
    worker_policy = policies["spark-worker"]
    block_rule = next(r for r in worker_policy["spec"]["ingress"] if r["ports"][0]["port"] == executor)
    assert block_rule["ports"] == [{"protocol": "TCP", "port": executor, "endPort": executor + retries}]
    egress_ports = [p for rule in VALUES["singleuser"]["networkPolicy"]["egress"] for p in rule["ports"]]
    assert {"protocol": "TCP", "port": executor, "endPort": executor + retries} in egress_ports


# ---- the network policies, evaluated ---------------------------------------------------------


@dataclass(frozen=True)
class Pod:
    name: str
    namespace: str
    labels: dict


def _selects(selector: dict, labels: dict) -> bool:
    assert set(selector) <= {"matchLabels"}, "the policies only use matchLabels"
    return all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items())


def _peer_admits(peer: dict, pod: Pod, policy_namespace: str) -> bool:
    assert set(peer) <= {"podSelector", "namespaceSelector"}
    if "namespaceSelector" in peer:
        in_namespace = _selects(peer["namespaceSelector"], {"kubernetes.io/metadata.name": pod.namespace})
    else:
        in_namespace = pod.namespace == policy_namespace
    return in_namespace and _selects(peer.get("podSelector", {}), pod.labels)


def _rule_admits(rule: dict, peers_key: str, pod: Pod, port: int, policy_namespace: str) -> bool:
    ports = rule.get("ports") or [{"port": port}]
    if not any(p.get("protocol", "TCP") == "TCP" and p["port"] <= port <= p.get("endPort", p["port"])
               for p in ports):
        return False
    peers = rule.get(peers_key)
    return not peers or any(_peer_admits(peer, pod, policy_namespace) for peer in peers)


def admitted(rules: list[dict], peers_key: str, policy_namespace: str, pods: list[Pod],
             port: int) -> set[str]:
    """The names of `pods` that `rules` (ingress: "from", egress: "to") admit on `port`."""
    return {pod.name for pod in pods
            if any(_rule_admits(rule, peers_key, pod, port, policy_namespace) for rule in rules)}


def cluster_pods() -> dict[str, Pod]:
    """The pods involved, labelled as the chart, the values and this package's code label them."""
    (master,) = [d for d in load_all(HELM / "spark-master.yaml") if d["kind"] == "Deployment"]
    backend = KubernetesBackend(namespace=SPARK_NAMESPACE, pool=SCALER["KubernetesBackend__pool"],
                                master_url="spark://spark-master.spark.svc:7077")
    worker = worker_pod(backend.template())
    return {pod.name: pod for pod in [
        Pod("hub", HUB_NAMESPACE, {"component": "hub", "app": "jupyterhub", **VALUES["hub"]["labels"]}),
        Pod("proxy", HUB_NAMESPACE, {"component": "proxy", "app": "jupyterhub", **VALUES["proxy"]["labels"]}),
        Pod("notebook", HUB_NAMESPACE,
            {"component": "singleuser-server", **VALUES["singleuser"]["extraLabels"]}),
        Pod("placeholder", HUB_NAMESPACE, {"component": "user-placeholder", "app": "jupyterhub"}),
        Pod("master", SPARK_NAMESPACE, master["spec"]["template"]["metadata"]["labels"]),
        Pod("worker", SPARK_NAMESPACE, worker["metadata"]["labels"]),
        Pod("spark-stranger", SPARK_NAMESPACE, {"app": "something-else"}),
        # the right labels in the wrong namespace
        Pod("impostor", "default", {**VALUES["hub"]["labels"], **VALUES["singleuser"]["extraLabels"]}),
    ]}


def test_spark_namespace_policies_admit_exactly_what_they_say():
    pods = cluster_pods()
    everyone = list(pods.values())
    policies = load_all(HELM / "networkpolicy.yaml")

    def ingress(target: str, port: int) -> set[str]:
        pod = pods[target]
        selecting = [p for p in policies if _selects(p["spec"]["podSelector"], pod.labels)]
        assert selecting and all(p["spec"]["policyTypes"] == ["Ingress", "Egress"] for p in selecting)
        rules = [rule for p in selecting for rule in p["spec"]["ingress"]]
        return admitted(rules, "from", SPARK_NAMESPACE, everyone, port)

    def egress(source: str, port: int) -> set[str]:
        """The pods `source` may reach on `port` (the ipBlock rules, DNS on private addresses,
        name no pod: tests/test_kube_security.py checks them)."""
        rules = [rule for p in policies if _selects(p["spec"]["podSelector"], pods[source].labels)
                 for rule in p["spec"]["egress"] if not any("ipBlock" in peer for peer in rule["to"])]
        return admitted(rules, "to", SPARK_NAMESPACE, everyone, port)

    assert ingress("master", 8080) == {"hub"}, "the UI and its /workers/kill/: the scaler only"
    assert ingress("master", 7077) == {"worker", "notebook"}
    assert ingress("master", 6066) == set(), "no REST submission port"
    assert ingress("worker", 7078) == {"master"}
    assert ingress("worker", 8081) == {"hub"}
    for port in (7800, 7816):
        assert ingress("worker", port) == {"worker", "notebook"}
    for port in (7799, 7817, 4040):
        assert ingress("worker", port) == set()
    # the external shuffle service (Spark's default spark.shuffle.service.port): executors only
    assert ingress("worker", 7337) == {"worker"}
    assert not any(_selects(p["spec"]["podSelector"], pods["spark-stranger"].labels) for p in policies)
    # egress: the executors on the workers reach what a notebook's code reaches, no more
    assert egress("worker", 7077) == {"master"}
    assert egress("worker", 7078) == set(), "no worker RPC to other workers"
    assert egress("worker", 7337) == {"worker"}
    assert egress("master", 7337) == set()
    for port in (7800, 7816):
        assert egress("worker", port) == {"worker"}
    for port in (7777, 7778, 7794):
        assert egress("worker", port) == egress("master", port) == {"notebook"}
    assert egress("master", 7078) == {"worker"}
    for port in (8080, 8081, 10101, 443):
        assert egress("worker", port) == egress("master", port) == set(), port


def test_values_policies_admit_the_proxy_and_the_spark_pods():
    pods = cluster_pods()
    everyone = list(pods.values())
    hub_policy, notebook_policy = VALUES["hub"]["networkPolicy"], VALUES["singleuser"]["networkPolicy"]
    assert hub_policy["enabled"] and notebook_policy["enabled"]
    # ingress rules the chart adds to the hub's and the notebooks' own policies
    assert admitted(hub_policy["ingress"], "from", HUB_NAMESPACE, everyone, 10101) == {"proxy", "hub"}
    for port in (7777, 7778, 7794):
        assert admitted(notebook_policy["ingress"], "from", HUB_NAMESPACE, everyone, port) == {
            "master", "worker"}
    assert admitted(notebook_policy["ingress"], "from", HUB_NAMESPACE, everyone, 7795) == set()

    # egress: where each may go beyond the chart's own rules
    def egress(rules: list[dict], port: int) -> set[str]:
        return admitted(rules, "to", HUB_NAMESPACE, everyone, port)

    assert egress(VALUES["proxy"]["chp"]["networkPolicy"]["egress"], 10101) == {"hub"}
    assert egress(hub_policy["egress"], 8080) == {"master", "worker"}
    assert egress(hub_policy["egress"], 8081) == {"master", "worker"}
    assert egress(notebook_policy["egress"], 7077) == {"master"}
    assert egress(notebook_policy["egress"], 7800) == {"worker"}
    assert egress(notebook_policy["egress"], 8080) == set(), "notebooks never reach the master's UI"
    # the chart denies notebooks the cluster's private IPs unless told otherwise
    assert notebook_policy["egressAllowRules"]["privateIPs"] is False


# ---- the manifests ---------------------------------------------------------------------------


def values_manifests() -> list[dict]:
    """What the chart renders from the values' Kubernetes parts, in namespace `spark` (the
    test apiserver has no `jhub`): the hub's Service ports, the rules the values add to
    the chart's NetworkPolicies, and a notebook pod's environment."""

    def policy(name: str, ingress: list, egress: list) -> dict:
        return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                "metadata": {"name": name, "namespace": SPARK_NAMESPACE},
                "spec": {"podSelector": {"matchLabels": {"component": name}},
                         "policyTypes": ["Ingress", "Egress"], "ingress": ingress, "egress": egress}}

    env = [{"name": k, "value": v} if isinstance(v, str) else {"name": k, **v}
           for k, v in VALUES["singleuser"]["extraEnv"].items()]
    return [
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "hub", "namespace": SPARK_NAMESPACE},
         "spec": {"selector": {"component": "hub"},
                  "ports": [{"name": "hub", "port": 8081, "targetPort": "http"},
                            *VALUES["hub"]["service"]["extraPorts"]]}},
        policy("hub", VALUES["hub"]["networkPolicy"]["ingress"], VALUES["hub"]["networkPolicy"]["egress"]),
        policy("proxy", [], VALUES["proxy"]["chp"]["networkPolicy"]["egress"]),
        policy("singleuser-server", VALUES["singleuser"]["networkPolicy"]["ingress"],
               VALUES["singleuser"]["networkPolicy"]["egress"]),
        {"apiVersion": "v1", "kind": "Pod",
         "metadata": {"name": "jupyter-someone", "namespace": SPARK_NAMESPACE,
                      "labels": VALUES["singleuser"]["extraLabels"]},
         "spec": {"containers": [{"name": "notebook", "image": "jupyter/pyspark-notebook", "env": env}]}},
    ]


def all_manifests() -> list[tuple[str, dict]]:
    return [*((path, doc) for path in MANIFESTS for doc in load_all(ROOT / path)),
            *(("values.yaml", doc) for doc in values_manifests())]


def test_every_manifest_passes_kubernetes_validate_strict():
    for where, doc in all_manifests():
        kubernetes_validate.validate(doc, "1.30", strict=True)
    # strict: a misspelt field fails
    (policy, *_) = load_all(HELM / "networkpolicy.yaml")
    policy["spec"]["podSelectr"] = policy["spec"].pop("podSelector")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(policy, "1.30", strict=True)


def values_backend() -> KubernetesBackend:
    """The backend as custom.sparkScaler configures it."""
    prefix = "KubernetesBackend__"
    return KubernetesBackend(**{k[len(prefix):]: v for k, v in SCALER.items() if k.startswith(prefix)})


def test_the_master_manifest_is_what_the_backend_would_create():
    backend = values_backend()
    assert load_all(HELM / "spark-master.yaml") == [
        master_deployment(name="spark-master", namespace=SPARK_NAMESPACE, image=backend.image,
                          run_as_user=RUN_AS_USER, default_cores=backend.default_cores,
                          memory=backend.master_memory),
        *master_services(name="spark-master", namespace=SPARK_NAMESPACE),
    ]


def test_an_apps_cores_are_bounded_alike_by_the_master_and_the_notebooks():
    """One getOrCreate() without spark.cores.max must not take the whole pool: the master's
    spark.deploy.defaultCores and the notebooks' spark.cores.max are the backend's default_cores,
    two workers' cores."""
    backend = values_backend()
    assert backend.default_cores == 2 * backend.resources().cores == 4
    assert spark_defaults()["spark.cores.max"] == str(backend.default_cores)
    (master,) = [d for d in load_all(HELM / "spark-master.yaml") if d["kind"] == "Deployment"]
    (container,) = master["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert f"-Dspark.deploy.defaultCores={backend.default_cores}" in env["SPARK_MASTER_OPTS"].split()
    # the master's heap fits its memory limit with room for the JVM's other memory
    limit = container["resources"]["limits"]["memory"]
    assert (limit, env["SPARK_DAEMON_MEMORY"]) == ("1Gi", "768m")


def test_rbac_grants_what_the_backend_checks_and_nothing_more():
    from jhub_spark_scaler.backends.kubernetes import MASTER_PERMISSIONS, WORKER_PERMISSIONS
    from jhub_spark_scaler.backends.kube_history import history_name, history_permissions
    from jhub_spark_scaler.backends.lease import lease_name, lease_permissions

    def granted(path: str) -> set[tuple[str, str, str, str]]:
        (role,) = [d for d in load_all(HELM / path) if d["kind"] == "Role"]
        return {(verb, group, resource, name) for rule in role["rules"] for verb in rule["verbs"]
                for group in rule["apiGroups"] for resource in rule["resources"]
                for name in rule.get("resourceNames", [""])}

    lease = lease_permissions(lease_name(SCALER["KubernetesBackend__pool"]))  # the pool's Lease only
    owner = ("get", "apps", "deployments", "spark-master")
    history = history_permissions(history_name(SCALER["KubernetesBackend__pool"]))  # its ConfigMap only
    assert granted("rbac.yaml") == {*WORKER_PERMISSIONS, owner, *lease, *history}
    (config_map,) = [d for d in load_all(HELM / "rbac.yaml") if d["kind"] == "ConfigMap"]
    assert config_map["metadata"]["name"] == history_name(SCALER["KubernetesBackend__pool"])
    assert granted("rbac-manage-master.yaml") == set(MASTER_PERMISSIONS)


# ---- the hub image ---------------------------------------------------------------------------


def test_hub_image_recipe_builds_from_the_charts_hub_image(tmp_path):
    dockerfile = HELM / "hub-image" / "Dockerfile"
    text = dockerfile.read_text()
    assert re.search(rf"^ARG Z2JH_VERSION={re.escape(Z2JH_VERSION)}$", text, re.M)
    assert re.search(r"^FROM quay\.io/jupyterhub/k8s-hub:\$\{Z2JH_VERSION\}$", text, re.M)
    assert re.search(r"^USER 1000$", text.strip().splitlines()[-1]), "back to the chart's hub user"
    # the files the recipe copies make an installable package with everything in it
    context = tmp_path / "context"
    for line in re.findall(r"^COPY (.+)$", text, re.M):
        *sources, destination = line.split()
        for source in sources:
            target = context / Path(destination).relative_to("/tmp/jhub-spark-scaler")
            if (ROOT / source).is_dir():
                copy_tree(ROOT / source, target)
            else:
                target.mkdir(parents=True, exist_ok=True)
                (target / source).write_bytes((ROOT / source).read_bytes())
    built = build_package(context, tmp_path / "built")
    assert built.returncode == 0, built.stdout[-2000:] + built.stderr[-2000:]
    assert "cannot be found" not in built.stderr, built.stderr[-2000:]
    for needed in ("jhub_spark_scaler/hub.py", "jhub_spark_scaler/backends/kubernetes.py",
                   "jhub_spark_scaler/web/templates/page.html"):
        assert (tmp_path / "built" / needed).is_file(), needed
    # (the project's metadata reads README.md: without it, the package has no description)
    (context / "README.md").unlink()
    assert "README.md' cannot be found" in build_package(context, tmp_path / "built-2").stderr
    # the build context holds only what the recipe copies
    ignored = (HELM / "hub-image" / "Dockerfile.dockerignore").read_text().split()
    assert ignored[ignored.index("*"):] == ["*", "!pyproject.toml", "!README.md", "!jhub_spark_scaler",
                                            "**/__pycache__"]
    assert VALUES["hub"]["image"]["tag"].startswith(f"{Z2JH_VERSION}-")


# ---- the notebook and Spark image -----------------------------------------------------------


def dockerfile_args(text: str) -> dict[str, str]:
    return dict(re.findall(r"^ARG (\w+)=(\S+)$", text, re.M))


def test_the_notebooks_and_the_spark_pods_run_one_image_with_the_suites_spark_and_python():
    """helm-values/spark-image/Dockerfile is the production twin of the tests' image
    (scripts/build_spark_image.py, run by tests/test_spark_image.py): the same Debian suite and
    packages (whose python3 that build checks against the suite's) and the suite's pyspark."""
    singleuser = VALUES["singleuser"]["image"]
    image = f"{singleuser['name']}:{singleuser['tag']}"
    assert SCALER["KubernetesBackend__image"] == image, "the workers run the notebooks' image"
    (master,) = [d for d in load_all(HELM / "spark-master.yaml") if d["kind"] == "Deployment"]
    assert [c["image"] for c in master["spec"]["template"]["spec"]["containers"]] == [image]
    text = (HELM / "spark-image" / "Dockerfile").read_text()
    args = dockerfile_args(text)
    chosen, locked = pinned_versions(CHOSEN_VERSIONS), pinned_versions(LOCKED_VERSIONS)
    pyspark = importlib.metadata.version("pyspark")
    python = f"{sys.version_info.major}.{sys.version_info.minor}"
    assert chosen["pyspark"] == pyspark
    assert singleuser["tag"] == f"{pyspark}-py{python}", "tagged <pyspark>-py<major.minor>"
    assert args["BASE_IMAGE"] == f"debian:{build_spark_image.SUITE}-slim", "a Debian base, no registry named"
    assert re.search(r"^FROM \$\{BASE_IMAGE\}$", text, re.M)
    (install,) = re.findall(r"^ && apt-get install (.+?) \\?$", text, re.M)
    assert set(build_spark_image.PACKAGES) <= set(install.split())
    # what the admin chose is in the lock at that version; every locked package has its hashes
    assert sorted(chosen) == ["jupyterhub", "jupyterlab", "pyspark"]
    assert {name: locked[name] for name in chosen} == chosen, "requirements.txt compiled from requirements.in"
    hashed = re.findall(r"^\S+==\S+((?: \\\n +--hash=sha256:[0-9a-f]{64})+)$",
                        LOCKED_VERSIONS.read_text(), re.M)
    assert len(hashed) == len(locked), "every package in requirements.txt with its hashes"
    assert "pip install --no-cache-dir --require-hashes --requirement /tmp/requirements.txt" in text
    # the users: the chart's notebook uid and group, the workers' and the master's uid
    assert f"useradd --uid {VALUES['singleuser']['uid']} --gid {VALUES['singleuser']['fsGid']} " in text
    assert f"useradd --uid {RUN_AS_USER} --gid {RUN_AS_USER} " in text
    assert master["spec"]["template"]["spec"]["securityContext"]["runAsUser"] == RUN_AS_USER
    assert text.strip().splitlines()[-1] == f"USER {VALUES['singleuser']['uid']}"
    ignored = (HELM / "spark-image" / "Dockerfile.dockerignore").read_text().split()
    # the lock and the modules the JVM-archive step runs (scripts/build_notebook_image.py copies the same)
    assert ignored[ignored.index("*"):] == ["*", "!helm-values/spark-image/requirements.txt", *(
        f"!jhub_spark_scaler/{name}.py" for name in ("__init__", "jvm_archives", "spawner_env"))]


def build_package(source: Path, out: Path) -> subprocess.CompletedProcess:
    """setuptools' build of the package from `source` (pyproject.toml: metadata, packages,
    package data) into `out`, offline: what `pip install` of that directory builds."""
    return subprocess.run(
        [sys.executable, "-c", "from setuptools import setup; setup()", "--quiet", "egg_info",
         "--egg-base", str(out.parent), "build_py", "--build-lib", str(out)],  # egg-info beside
        cwd=source, capture_output=True, text=True, timeout=300,
    )


def copy_tree(source: Path, target: Path) -> None:
    for path in source.rglob("*"):
        if path.is_file() and "__pycache__" not in path.parts:
            (target / path.relative_to(source)).parent.mkdir(parents=True, exist_ok=True)
            (target / path.relative_to(source)).write_bytes(path.read_bytes())


# ---- the guide -------------------------------------------------------------------------------


def test_the_guide_uses_what_the_tests_use():
    commands = guide_commands()
    exports = guide_exports()
    # kubectl apply: every manifest, each tested below (strict validation, server dry run)
    assert sorted(set(guide_applied_manifests())) == MANIFESTS
    assert ["kubectl", "create", "namespace", SPARK_NAMESPACE] in commands
    # the Spark pods pass `restricted` (tests/test_kube_security.py): the namespace enforces it
    assert ["kubectl", "label", "namespace", SPARK_NAMESPACE, "pod-security.kubernetes.io/enforce=restricted"
            ] in commands
    deleted = [f for w in commands if w[:2] == ["kubectl", "delete"] for f in flag_values(w, "-f")]
    assert set(deleted) == set(guide_applied_manifests()) - {"helm-values/rbac-manage-master.yaml"}
    assert ["kubectl", "delete", "namespace", SPARK_NAMESPACE] in commands
    # helm: the chart version the tests' schema comes from, the values the tests validate and run
    helm = [w for w in commands if w[0] == "helm"]
    assert helm and all(w[:4] == ["helm", "upgrade", "jhub", "jupyterhub/jupyterhub"] for w in helm)
    for words in helm:
        assert flag_values(words, "--version") == [Z2JH_VERSION]
        assert flag_values(words, "--namespace") == [HUB_NAMESPACE]
        assert flag_values(words, "--values")[0] == "config.yaml"
    installs = guide_helm_installs()
    assert len(installs) == 2 and len(helm) == 3, "install, upgrade, and uninstall without our values"
    for words in installs:
        assert flag_values(words, "--values") == ["config.yaml", "helm-values/values.yaml"]
        assert flag_values(words, "--set") == ["hub.image.name=$HUB_IMAGE", "hub.image.tag=$HUB_TAG"]
    assert guide_values_files() == ["helm-values/values.yaml"]
    # the image: built FROM the chart's version, tagged as the values say
    builds = [w for w in commands if w[:2] == ["docker", "build"]]
    assert len(builds) == 2
    for words in builds:
        assert flag_values(words, "--file") == ["helm-values/hub-image/Dockerfile"]
        assert flag_values(words, "--build-arg") == [f"Z2JH_VERSION={Z2JH_VERSION}"]
        assert flag_values(words, "--tag") == ["$HUB_IMAGE:$HUB_TAG"] and words[-1] == "."
    assert exports["HUB_TAG"] == f"{Z2JH_VERSION}-{jhub_spark_scaler.__version__}"
    assert yaml.safe_load((HELM / "values.yaml").read_text())["hub"]["image"]["tag"] == exports["HUB_TAG"]
    # the permission check names the subject of rbac.yaml; rollouts name real objects
    (binding,) = [d for d in load_all(HELM / "rbac.yaml") if d["kind"] == "RoleBinding"]
    subject = binding["subjects"][0]
    assert ["kubectl", "auth", "can-i", "create", "pods", "--namespace", SPARK_NAMESPACE, "--as",
            f"system:serviceaccount:{subject['namespace']}:{subject['name']}"] in commands
    rollouts = {(w[2], w[5]) for w in commands
                if w[:2] == ["kubectl", "--namespace"] and w[3:5] == ["rollout", "status"]}
    assert rollouts == {(SPARK_NAMESPACE, "deployment/spark-master"), (HUB_NAMESPACE, "deployment/hub")}


def test_the_guides_error_messages_are_the_services():
    sources = "\n".join(p.read_text() for p in (ROOT / "jhub_spark_scaler").rglob("*.py"))
    headings = re.findall(r"^### `([^`]+)`$", GUIDE.read_text(), re.M)
    assert len(headings) >= 7
    for message in headings:
        assert message in sources, f"the guide names {message!r}, which the service never says"


# ---- on the real kube-apiserver --------------------------------------------------------------


#: kind -> (the kubernetes_asyncio API class, the suffix of its namespaced methods)
_APIS = {
    "Role": (client.RbacAuthorizationV1Api, "namespaced_role"),
    "RoleBinding": (client.RbacAuthorizationV1Api, "namespaced_role_binding"),
    "NetworkPolicy": (client.NetworkingV1Api, "namespaced_network_policy"),
    "Deployment": (client.AppsV1Api, "namespaced_deployment"),
    "Service": (client.CoreV1Api, "namespaced_service"),
    "Pod": (client.CoreV1Api, "namespaced_pod"),
    "ConfigMap": (client.CoreV1Api, "namespaced_config_map"),
}


def _method(api: client.ApiClient, verb: str, doc: dict):
    """The client method that does `verb` ("create", "replace", "delete") to `doc`'s kind."""
    api_class, suffix = _APIS[doc["kind"]]
    return getattr(api_class(api), f"{verb}_{suffix}")


async def create(api: client.ApiClient, doc: dict, *, dry_run: bool = False) -> tuple[int, dict]:
    """Create `doc` in its namespace; the HTTP status and the answer."""
    kwargs = {"dry_run": "All"} if dry_run else {}
    create_it = _method(api, "create", doc)
    response = await create_it(doc["metadata"]["namespace"], doc, _preload_content=False, **kwargs)
    async with response:
        return response.status, json.loads(await response.read())


async def dry_run_apply(api: client.ApiClient, doc: dict) -> tuple[int, dict]:
    """`kubectl apply --dry-run=server`: a dry-run create, or, for an object that exists
    (another test of the session made it), a dry-run replace."""
    status, answer = await create(api, doc, dry_run=True)
    if status != 409:
        return status, answer
    name, namespace = doc["metadata"]["name"], doc["metadata"]["namespace"]
    response = await _method(api, "replace", doc)(name, namespace, doc, dry_run="All", _preload_content=False)
    async with response:
        return response.status, json.loads(await response.read())


def dropped_fields(sent, stored, path: str = "") -> list[str]:
    """Fields of `sent` the apiserver did not keep (it drops fields it does not know)."""
    if isinstance(sent, dict):
        missing = []
        for key, value in sent.items():
            if value in ([], {}):
                continue  # the apiserver leaves empty lists and maps out of its answer
            if not isinstance(stored, dict) or key not in stored:
                missing.append(f"{path}.{key}")
            else:
                missing += dropped_fields(value, stored[key], f"{path}.{key}")
        return missing
    if isinstance(sent, list):
        return [m for i, item in enumerate(sent) for m in dropped_fields(item, stored[i], f"{path}[{i}]")]
    return []


async def test_manifests_pass_server_side_dry_run(kube_cluster):
    async with await kube_cluster.api_client("admin") as api:
        version = await client.VersionApi(api).get_code()
        # NetworkPolicy `endPort` came in 1.21 (alpha), GA in 1.25: older apiservers drop it
        old = (int(version.major), int(re.match(r"\d+", version.minor).group())) < (1, 21)
        for where, doc in all_manifests():
            status, answer = await dry_run_apply(api, doc)
            what = f"{where}: {doc['kind']} {doc['metadata']['name']}"
            assert status in (200, 201), f"{what}: {answer.get('message')}"
            assert (answer["kind"], answer["metadata"]["name"]) == (doc["kind"], doc["metadata"]["name"])
            dropped = dropped_fields(doc, answer)
            assert dropped == [d for d in dropped if old and d.endswith(".endPort")], (where, dropped)
        # a dry run created nothing
        listed = await client.NetworkingV1Api(api).list_namespaced_network_policy(SPARK_NAMESPACE)
        assert listed.items == []
        # and the apiserver does check: a port out of range is refused
        (policy, *_) = load_all(HELM / "networkpolicy.yaml")
        policy["spec"]["ingress"][0]["ports"][0]["port"] = 70000
        status, answer = await dry_run_apply(api, policy)
        assert status == 422 and "65535" in answer["message"], answer


# ---- on a real hub ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
async def spark_namespace(kube_cluster):
    """rbac.yaml and spark-master.yaml applied as the guide applies them (created here, or
    adopted from another test module of the session); what this module created is deleted
    at its end. No controller runs the master's Deployment: it is there as the owner."""
    created = []
    async with await kube_cluster.api_client("admin") as api:
        for path in ("helm-values/rbac.yaml", "helm-values/spark-master.yaml"):
            assert path in guide_applied_manifests()
            for doc in load_all(ROOT / path):
                status, answer = await create(api, doc)
                assert status in (201, 409), answer.get("message")
                if status == 201:
                    created.append(doc)
    yield
    async with await kube_cluster.api_client("admin") as api:
        for doc in reversed(created):
            name, namespace = doc["metadata"]["name"], doc["metadata"]["namespace"]
            await _method(api, "delete", doc)(name, namespace)


DRIVER = """
import json, pathlib, sys
from pyspark.sql import SparkSession

master, control = sys.argv[1], pathlib.Path(sys.argv[2])
# what a notebook user writes: the rest comes from $SPARK_CONF_DIR/spark-defaults.conf
spark = (SparkSession.builder.master(master).appName("z2jh-notebook")
         .config("spark.cores.max", "1").config("spark.executor.memory", "512m").getOrCreate())
sc = spark.sparkContext
total = sc.parallelize(range(1000), 2).sum()
(control / "app.json").write_text(json.dumps({"app": sc.applicationId, "ui": sc.uiWebUrl, "total": total}))
while not (control / "stop").exists():
    sc.parallelize(range(10), 1).count()  # an app in use, as long as the test wants
spark.stop()
"""


async def pods_of(kube_cluster, pool: str) -> list[dict]:
    """The pool's pods as the apiserver has them (read as admin)."""
    async with await kube_cluster.api_client("admin") as api:
        listed = await client.CoreV1Api(api).list_namespaced_pod(
            SPARK_NAMESPACE, label_selector=pool_selector(pool))
        return [api.sanitize_for_serialization(p) for p in listed.items]


async def get_json(url: str):
    response = await AsyncHTTPClient().fetch(url, request_timeout=10)
    return json.loads(response.body)


@pytest.mark.spark
async def test_the_values_run_the_scaler_in_a_real_hub(
    spark_namespace, kube_cluster, kubelet, spark_master, hub_app, tmp_path, monkeypatch,
):
    from .test_admin_page import Browser

    port = random_port()
    # where the test machine differs from a cluster; everything else is the values as installed
    test_layer = {
        "cull": {"enabled": False},  # jupyterhub-idle-culler is not installed here
        "hub": {"services": {"spark-scaler": {"url": f"http://127.0.0.1:{port}"}}},  # no Service `hub`
        "custom": {"sparkScaler": {
            "port": port,  # a free one
            "KubernetesBackend__kubeconfig": str(kube_cluster.kubeconfig("hub")),  # not in a pod
            "KubernetesBackend__master_url": spark_master.master_url,  # no cluster DNS
            "KubernetesBackend__master_ui_url": spark_master.master_ui_url,
            "KubernetesBackend__cpu_limit": "1", "KubernetesBackend__memory_limit": "1280Mi",  # small JVMs
            "max_workers": 4,
            "scale_down_delay": 1, "poll_interval": 0.5,
            "hub_poll_interval": 60,  # reactions within seconds are the hooks'
        }},
    }
    values = chart_values(guide_set_values(), test_layer)
    monkeypatch.setenv("Z2JH_STANDIN_ROOT", str(tmp_path / "z2jh"))
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.96.0.1")  # the hub pod's, handed on by pass_env
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "443")
    chart, _ = chart_config(values, tmp_path / "z2jh")
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST")
    monkeypatch.delenv("KUBERNETES_SERVICE_PORT")
    c = hub_config(tmp_path)
    c.merge(chart)
    c.JupyterHub.services.append({"name": "test-admin", "api_token": ADMIN_TOKEN})
    c.JupyterHub.load_roles.append({"name": "test-admin", "services": ["test-admin"],
                                    "scopes": ["admin:users", "admin:servers", "admin:groups"]})
    pool = values["custom"]["sparkScaler"]["KubernetesBackend__pool"]
    spark = SparkClient(spark_master.master_ui_url, timeout=HTTP_TIMEOUT)
    driver = None

    async def pool_pods() -> list[dict]:
        return [p for p in await pods_of(kube_cluster, pool) if not p["metadata"].get("deletionTimestamp")]

    async def alive(n: int) -> list[dict] | None:
        """The pool's pods when there are `n`, each ALIVE at the master under its pod IP."""
        pods = await pods_of(kube_cluster, pool)
        hosts = {w.host for w in (await spark.master()).workers if w.state == "ALIVE"}
        ok = len(pods) == n and all(p["status"].get("podIP") in hosts for p in pods)
        return pods if ok else None

    await assert_hub_holds_only_the_guides_role(kube_cluster)
    app = await hub_app(c)
    service = app._service_map["spark-scaler"]
    try:
        # the service the values define, started by the hub with what pass_env handed on
        environ = Path(f"/proc/{service.proc.pid}/environ").read_bytes().split(b"\0")
        assert b"KUBERNETES_SERVICE_HOST=10.96.0.1" in environ
        (pod,) = await until(lambda: alive(1), timeout=90, what="the idle worker pod (idle_workers: 1)")
        settings = values["custom"]["sparkScaler"]
        assert pod["spec"]["containers"][0]["image"] == settings["KubernetesBackend__image"]
        (owner,) = pod["metadata"]["ownerReferences"]
        assert (owner["kind"], owner["name"]) == ("Deployment", "spark-master")

        # the admin page through the proxy, for the operators' group of hub.loadRoles
        url = app.proxy.public_url.rstrip("/") + "/services/spark-scaler/"
        await hub_api(app, "POST", "users/operator", {})
        await hub_api(app, "POST", "groups/spark-operators/users", {"users": ["operator"]})
        operator, outsider = Browser(url), Browser(url)
        await operator.login("operator")
        assert (await operator.page()).status_code == 200
        assert (await operator.pool())["status"] == "healthy"
        await outsider.login("someone")
        assert (await outsider.page()).status_code == 403

        # a notebook server: the hook pre-warms a second worker within seconds
        await start_server(app, "alice")
        await until(lambda: _count(pool_pods(), 2), timeout=5, what="a pre-warm pod within seconds (hooks)")
        await until(lambda: alive(2), timeout=90, what="two ALIVE worker pods")

        # a notebook's driver with the values' Spark defaults (its pod IP: a loopback address)
        conf_dir, control = tmp_path / "spark-conf", tmp_path / "driver"
        conf_dir.mkdir()
        control.mkdir()
        (conf_dir / "spark-defaults.conf").write_text(
            values["singleuser"]["extraFiles"]["spark-defaults"]["stringData"])
        pod_ip = "127.0.3.77"
        log = open(tmp_path / "driver.log", "w")
        driver = subprocess.Popen(
            [sys.executable, "-c", DRIVER, spark_master.master_url, str(control)],
            env={**os.environ, "SPARK_CONF_DIR": str(conf_dir), "SPARK_DRIVER_HOST": pod_ip},
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )

        def started():
            assert driver.poll() is None, (tmp_path / "driver.log").read_text()[-3000:]
            path = control / "app.json"
            return json.loads(path.read_text()) if path.exists() else None

        started_app = await until(started, timeout=180, what="the driver's first job")
        assert started_app["total"] == sum(range(1000))
        assert started_app["ui"].startswith(f"http://{pod_ip}:"), "spark.driver.host is the pod IP"
        api = f"{started_app['ui']}/api/v1/applications/{started_app['app']}"
        executors = {e["id"]: e["hostPort"] for e in await get_json(f"{api}/executors")}
        assert executors.pop("driver") == f"{pod_ip}:7778"  # spark.driver.blockManager.port
        (executor,) = executors.values()
        worker_ips = {p["status"]["podIP"] for p in await pool_pods()}
        assert executor.rpartition(":")[0] in worker_ips and executor.endswith(":7800")
        properties = dict((await get_json(f"{api}/environment"))["sparkProperties"])
        assert properties["spark.decommission.enabled"] == "true"
        assert properties["spark.driver.port"] == "7777"
        # A + I: alice's driver used up her pre-warm credit: the busy worker and the idle one,
        # no third (an absence can only be watched for a while: 5 s is 10 of the scaler's cycles)

        async def one_busy():
            return sum(1 for w in (await spark.master()).workers if w.state == "ALIVE" and w.cores_used) == 1

        await until(one_busy, timeout=30, what="alice's driver on one worker")
        await always(lambda: alive(2), seconds=5, interval=0.25,
                     what="1 busy + 1 idle worker pod, and nothing for a credit already used up")

        # all stops: back to idle_workers, through decommission and pod deletion
        (control / "stop").touch()
        await asyncio.to_thread(driver.wait, 60)
        assert driver.returncode == 0, (tmp_path / "driver.log").read_text()[-3000:]
        await hub_api(app, "DELETE", "users/alice/server")
        await until(lambda: alive(1), timeout=120, what="scale-in to the one idle worker")
    finally:
        if driver is not None and driver.poll() is None:
            os.killpg(driver.pid, 9)
            driver.wait()
        await service.stop()


async def assert_hub_holds_only_the_guides_role(kube_cluster) -> None:
    """Whatever the session's other tests bound: the hub's service account holds exactly
    helm-values/rbac.yaml's Role, and no cluster-wide binding names it."""
    role_doc, binding_doc, _ = load_all(HELM / "rbac.yaml")  # and the pre-warm history's ConfigMap
    sa = {"kind": "ServiceAccount", "name": "hub", "namespace": HUB_NAMESPACE}
    async with await kube_cluster.api_client("admin") as api:
        rbac = client.RbacAuthorizationV1Api(api)

        def names_hub(binding) -> bool:
            return any({"kind": s.kind, "name": s.name, "namespace": s.namespace} == sa
                       for s in binding.subjects or [])

        bindings = [b for b in (await rbac.list_role_binding_for_all_namespaces()).items if names_hub(b)]
        assert [(b.metadata.namespace, b.role_ref.kind, b.role_ref.name) for b in bindings] == [
            (SPARK_NAMESPACE, "Role", role_doc["metadata"]["name"])]
        assert bindings[0].metadata.name == binding_doc["metadata"]["name"]
        role = await rbac.read_namespaced_role(role_doc["metadata"]["name"], SPARK_NAMESPACE)
        role = api.sanitize_for_serialization(role)
        assert role["rules"] == role_doc["rules"]
        assert not [b for b in (await rbac.list_cluster_role_binding()).items if names_hub(b)]


async def _count(pods, n: int) -> bool:
    return len(await pods) >= n
