"""The few Kubernetes API calls the backend makes, as plain JSON, with one-line errors.

Built on `kubernetes_asyncio` (the async form of the official client, which the
z2jh hub image already has). Responses are read raw (`_preload_content=False`)
and parsed with `json`: the backend keeps pods as dicts, and building the
client's model objects for thousands of pods would cost more than the rest of a
reconcile cycle.
"""

from __future__ import annotations

import asyncio
import json
import os
from typing import Any

import aiohttp
from kubernetes_asyncio import client, config

from ..errors import ConfigError
from . import BackendError

IN_CLUSTER_NAMESPACE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"


class NotFound(BackendError):
    """The object does not exist."""


class Conflict(BackendError):
    """The object already exists (or changed under us)."""


async def make_api_client(kubeconfig: str = "", context: str = "") -> client.ApiClient:
    """In the cluster: the pod's service account. Outside: a kubeconfig file.
    ConfigError if there are no credentials or they cannot be loaded."""
    configuration = client.Configuration()
    if kubeconfig and not os.path.isfile(kubeconfig):
        raise ConfigError(f"KubernetesBackend.kubeconfig {kubeconfig!r} is not a file")
    in_cluster = not kubeconfig and os.environ.get("KUBERNETES_SERVICE_HOST")
    default = os.environ.get("KUBECONFIG") or os.path.expanduser("~/.kube/config")
    if not kubeconfig and not in_cluster and not any(
        os.path.exists(os.path.expanduser(p)) for p in default.split(os.pathsep) if p
    ):  # the client would log a warning of its own before failing: one line instead
        raise ConfigError(
            f"no Kubernetes credentials: not in a cluster and no kubeconfig at {default}; "
            "set KubernetesBackend.kubeconfig"
        )
    try:
        if in_cluster:
            config.load_incluster_config(client_configuration=configuration)
        else:
            await config.load_kube_config(
                config_file=kubeconfig or None, context=context or None, client_configuration=configuration
            )
    except (config.ConfigException, OSError, TypeError, ValueError) as e:
        where = kubeconfig or "$KUBECONFIG / ~/.kube/config"
        where += f", KubernetesBackend.context {context!r}" if context else ""
        raise ConfigError(f"cannot load Kubernetes credentials ({where}): {e}") from None
    return client.ApiClient(configuration)


def default_namespace() -> str:
    """The namespace the scaler's pod runs in, else "default"."""
    try:
        with open(IN_CLUSTER_NAMESPACE, encoding="utf-8") as f:
            return f.read().strip() or "default"
    except OSError:
        return "default"


def _message(body: bytes) -> str:
    try:
        return json.loads(body).get("message", "")
    except (ValueError, AttributeError):
        return body[:200].decode("utf-8", "replace")


def request_error(status: int, body: bytes, verb: str, resource: str, namespace: str) -> BackendError:
    """One line naming what failed and what to fix."""
    message = _message(body)
    if status == 403 and ("PodSecurity" in message or "pod security policy" in message):
        return BackendError(
            f"the namespace's pod security refused to {verb} {resource} in namespace {namespace!r} "
            f"({message}); see KubernetesBackend.run_as_user and modify_pod_hook"
        )
    if status == 403:
        return BackendError(
            f"missing RBAC permission: cannot {verb} {resource} in namespace {namespace!r} "
            f"({message}); grant it in the scaler's Role (helm-values/rbac.yaml)"
        )
    if status == 401:
        return BackendError(f"the Kubernetes API rejected the scaler's credentials ({message})")
    if status == 404:
        return NotFound(f"{resource} not found in namespace {namespace!r}: {message}")
    if status == 409:
        return Conflict(f"cannot {verb} {resource} in namespace {namespace!r}: {message}")
    return BackendError(f"cannot {verb} {resource} in namespace {namespace!r}: HTTP {status}: {message}")


class KubeApi:
    """Pods (and, for `manage_master`, Deployments and Services) in one namespace."""

    def __init__(self, api_client: client.ApiClient, namespace: str, timeout: float = 30.0):
        self.api_client = api_client
        self.namespace = namespace
        self.timeout = timeout
        self.core = client.CoreV1Api(api_client)
        self.apps = client.AppsV1Api(api_client)
        self.authorization = client.AuthorizationV1Api(api_client)
        #: requests sent, by "verb resource": benchmarks/kube_api.py and the tests count them
        self.requests: dict[str, int] = {}

    async def _call(self, verb: str, resource: str, method, *args, expect_json=True, **kwargs) -> Any:
        key = f"{verb} {resource}"
        self.requests[key] = self.requests.get(key, 0) + 1
        try:
            response = await method(
                *args, _preload_content=False, _request_timeout=kwargs.pop("_request_timeout", self.timeout),
                **kwargs,
            )
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as e:
            host = self.api_client.configuration.host
            raise BackendError(
                f"cannot reach the Kubernetes API at {host}: {e or type(e).__name__}") from None
        if not expect_json:
            if not 200 <= response.status <= 299:
                raise request_error(response.status, await response.read(), verb, resource, self.namespace)
            return response
        async with response:
            body = await response.read()
            if not 200 <= response.status <= 299:
                raise request_error(response.status, body, verb, resource, self.namespace)
        return json.loads(body)

    # -- pods ------------------------------------------------------------------

    async def list_pods(self, selector: str, limit: int = 0, continue_from: str = "") -> dict:
        """One page of pods (all of them when `limit` is 0)."""
        kwargs = {"limit": limit} if limit else {}
        if continue_from:
            kwargs["_continue"] = continue_from
        return await self._call("list", "pods", self.core.list_namespaced_pod, self.namespace,
                                label_selector=selector, **kwargs)

    async def watch_pods(self, selector: str, resource_version: str, timeout: int):
        """The open watch response (newline-delimited JSON events); the caller closes it."""
        return await self._call(
            "watch", "pods", self.core.list_namespaced_pod, self.namespace, label_selector=selector,
            watch=True, resource_version=resource_version, timeout_seconds=timeout,
            _request_timeout=aiohttp.ClientTimeout(sock_connect=self.timeout, sock_read=timeout + 30),
            expect_json=False,
        )

    async def create_pod(self, pod: dict, dry_run: bool = False) -> dict:
        kwargs = {"dry_run": "All"} if dry_run else {}
        return await self._call("create", "pods", self.core.create_namespaced_pod, self.namespace, pod,
                                **kwargs)

    async def annotate_pod(self, name: str, annotations: dict[str, str], uid: str = "") -> dict:
        """Set annotations of the pod `name`; with `uid`, only if it is still that pod (the
        apiserver refuses a patch that would change a pod's uid: HTTP 422)."""
        metadata: dict[str, Any] = {"annotations": annotations}
        if uid:
            metadata["uid"] = uid
        return await self._call("patch", "pods", self.core.patch_namespaced_pod, name, self.namespace,
                                {"metadata": metadata})

    async def delete_pod(self, name: str, grace_period: int, uid: str = "") -> dict:
        """Delete the pod `name`; with `uid`, only if it is still that pod (Conflict if a
        pod of the same name replaced it)."""
        # in the body: the apiserver ignores query parameters when a delete has a body
        body: dict[str, Any] = {"gracePeriodSeconds": grace_period}
        if uid:
            body["preconditions"] = {"uid": uid}
        return await self._call("delete", "pods", self.core.delete_namespaced_pod, name, self.namespace,
                                body=body)

    async def list_events(self, field_selector: str, limit: int) -> dict:
        """The namespace's Events that `field_selector` selects, the first `limit` of them."""
        return await self._call("list", "events", self.core.list_namespaced_event, self.namespace,
                                field_selector=field_selector, limit=limit)

    # -- other objects ---------------------------------------------------------

    async def read(self, kind: str, name: str) -> dict:
        """A Deployment, StatefulSet, Service, ConfigMap or Pod by name (with its uid)."""
        readers = {
            "Deployment": ("deployments", self.apps.read_namespaced_deployment, "apps/v1"),
            "StatefulSet": ("statefulsets", self.apps.read_namespaced_stateful_set, "apps/v1"),
            "Service": ("services", self.core.read_namespaced_service, "v1"),
            "ConfigMap": ("configmaps", self.core.read_namespaced_config_map, "v1"),
            "Pod": ("pods", self.core.read_namespaced_pod, "v1"),
        }
        if kind not in readers:
            raise ConfigError(f"cannot use a {kind} as owner: use one of {', '.join(readers)}")
        resource, method, api_version = readers[kind]
        obj = await self._call("get", resource, method, name, self.namespace)
        obj.setdefault("apiVersion", api_version)
        obj.setdefault("kind", kind)
        return obj

    async def patch_config_map(self, name: str, data: dict[str, str]) -> dict:
        """Set these keys of ConfigMap `name`'s data (a merge: its other keys stay)."""
        return await self._call("patch", "configmaps", self.core.patch_namespaced_config_map, name,
                                self.namespace, {"data": data})

    async def create(self, manifest: dict, dry_run: bool = False) -> dict:
        """Create a Deployment or Service (the managed master)."""
        kind = manifest["kind"]
        resource, method = {
            "Deployment": ("deployments", self.apps.create_namespaced_deployment),
            "Service": ("services", self.core.create_namespaced_service),
        }[kind]
        kwargs = {"dry_run": "All"} if dry_run else {}
        return await self._call("create", resource, method, self.namespace, manifest, **kwargs)

    async def missing_permissions(self, needed: list[tuple[str, str, str, str]]) -> list[str]:
        """Of (verb, API group, resource, name or ""), the ones the credentials lack,
        as "verb resource[/name]"."""

        async def allowed(verb: str, group: str, resource: str, name: str) -> bool:
            review = {
                "apiVersion": "authorization.k8s.io/v1",
                "kind": "SelfSubjectAccessReview",
                "spec": {"resourceAttributes": {
                    "namespace": self.namespace, "verb": verb, "group": group, "resource": resource,
                    "name": name,
                }},
            }
            answer = await self._call("create", "selfsubjectaccessreviews",
                                      self.authorization.create_self_subject_access_review, review)
            return bool(answer.get("status", {}).get("allowed"))

        answers = await asyncio.gather(*(allowed(*n) for n in needed))
        return [
            f"{verb} {resource}" + (f"/{name}" if name else "")
            for (verb, _, resource, name), ok in zip(needed, answers) if not ok
        ]
