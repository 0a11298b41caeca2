"""The pre-warm history on Kubernetes: one key of a ConfigMap in the pool's namespace.

The admin creates the ConfigMap (helm-values/rbac.yaml holds it, beside the Role): the
scaler may only get and patch that one object by name, so it can neither create
ConfigMaps nor read or change any other. The record is JSON in one data key: user
names are data, never keys (a ConfigMap key allows only [-._a-zA-Z0-9]), so any hub
user name round-trips; `json.dumps` escapes everything past ASCII.
"""

from __future__ import annotations

import json
from collections.abc import Callable

from . import BackendError
from .history_store import HistoryStore, StoreError, Unreadable
from .kube_api import KubeApi, NotFound
from .lease import lease_name

#: the data key holding the record
KEY = "prewarm-history.json"


def history_name(pool: str) -> str:
    """The pool's ConfigMap, named after its Lease (a valid name for any valid pool)."""
    return f"{lease_name(pool)}-prewarm-history"


def history_permissions(name: str) -> list[tuple[str, str, str, str]]:
    """(verb, API group, resource, name) the store needs: that ConfigMap only."""
    return [("get", "", "configmaps", name), ("patch", "", "configmaps", name)]


class ConfigMapStore(HistoryStore):
    """ConfigMap `name` in `namespace`, through the backend's API client (`api()`)."""

    def __init__(self, *, api: Callable[[], KubeApi], name: str, namespace: str):
        self._api = api
        self.name = name
        self.namespace = namespace
        self.what = f"ConfigMap {namespace}/{name}"

    def _missing(self) -> StoreError:
        return StoreError(f"{self.what} does not exist: create it (kubectl apply -f helm-values/rbac.yaml, "
                          "with the name of KubernetesBackend.pool)")

    async def read(self) -> dict | None:
        try:
            config_map = await self._api().read("ConfigMap", self.name)
        except NotFound:
            raise self._missing() from None
        except BackendError as e:
            raise StoreError(str(e)) from None
        text = (config_map.get("data") or {}).get(KEY)
        if not text:
            return None
        try:
            doc = json.loads(text)
        except (ValueError, RecursionError) as e:
            raise Unreadable(f"{self.what}: key {KEY} is not JSON ({e})") from None
        if not isinstance(doc, dict):
            raise Unreadable(f"{self.what}: key {KEY} is not a JSON object")
        return doc

    async def write(self, record: dict) -> None:
        text = json.dumps(record, separators=(",", ":"))
        try:
            await self._api().patch_config_map(self.name, {KEY: text})
        except NotFound:
            raise self._missing() from None
        except BackendError as e:
            raise StoreError(str(e)) from None
