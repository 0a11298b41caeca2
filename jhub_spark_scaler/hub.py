"""Register the scaler with JupyterHub: one call in `jupyterhub_config.py`.

    from jhub_spark_scaler.hub import configure
    configure(c, max_workers=20, idle_workers=2, LocalBackend__worker_cores=4)

Each extra keyword is a scaler setting passed on the service's command line:
`idle_workers=2` becomes `--SparkScalerApp.idle_workers=2`, and a key
`<Class>__<trait>` sets a trait of that class, e.g. `LocalBackend__state_dir="/srv/spark"`
becomes `--LocalBackend.state_dir=/srv/spark` (values are passed as `str(value)`).

For admins who prefer to write it out, the call is equivalent to:

    import secrets, sys
    from jhub_spark_scaler.hub import Notifier, SpawnerHook

    token = secrets.token_hex(32)
    c.JupyterHub.services.append({
        "name": "spark-scaler",
        "url": "http://127.0.0.1:10101",
        "command": [sys.executable, "-m", "jhub_spark_scaler", "--max-workers=20",
                    "--SparkScalerApp.idle_workers=2", "--LocalBackend.worker_cores=4"],
        "display": True,
        "oauth_no_confirm": True,
        "oauth_client_allowed_scopes": ["custom:spark-scaler:admin"],  # the admin page's tokens
        "api_token": token,  # the hub hands it to the service as JUPYTERHUB_API_TOKEN
    })
    c.JupyterHub.load_roles.append({
        "name": "spark-scaler-service",
        "services": ["spark-scaler"],
        "scopes": ["list:users", "read:servers"],
    })
    c.JupyterHub.custom_scopes = {
        "custom:spark-scaler:admin": {"description": "..."},  # see ADMIN_SCOPE_DESCRIPTION
    }
    notifier = Notifier(name="spark-scaler", url="http://127.0.0.1:10101", token=token)
    c.Spawner.pre_spawn_hook = SpawnerHook(notifier, "start", then=None)  # then=: your own hook
    c.Spawner.post_stop_hook = SpawnerHook(notifier, "stop", then=None)

The hooks run in the hub. They only schedule a POST of
`{"action": "start"|"stop", "user": ..., "server": ...}` to the service's
`<prefix>events` (see `jhub_spark_scaler.events`) and return at once; a
failed delivery is logged at warning and never reaches the spawn. The service
polls the hub's users API anyway, so a lost event only delays a reaction.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import sys
from collections.abc import Callable
from typing import Any

from tornado.httpclient import AsyncHTTPClient, HTTPRequest
from tornado.log import app_log  # the hub wires tornado's loggers into its own
from traitlets.config import Config, LazyConfigValue

ADMIN_SCOPE = "custom:spark-scaler:admin"
ADMIN_SCOPE_DESCRIPTION = "Use the Spark scaler's admin page and API (pool, decisions, settings)."
SERVICE_SCOPES = ["list:users", "read:servers"]


class Notifier:
    """Sends spawn events to the service, fire-and-forget."""

    def __init__(self, *, name: str, url: str, token: str, timeout: float = 2.0):
        self.name = name
        self.url = url.rstrip("/")
        self.token = token
        self.timeout = timeout
        self.pending: set[asyncio.Task] = set()  # strong references until each POST ends

    def events_url(self, base_url: str) -> str:
        """The service's events endpoint: its url plus the prefix the hub gives it
        (JUPYTERHUB_SERVICE_PREFIX = <hub base_url>services/<name>/)."""
        return f"{self.url}{base_url}services/{self.name}/events"

    def send(self, action: str, spawner: Any) -> None:
        """Schedule the POST for this spawner's server; never raises into the spawn."""
        try:
            event = {"action": action, "user": spawner.user.name, "server": spawner.name}
            url = self.events_url(spawner.user.settings["base_url"])
            task = asyncio.get_running_loop().create_task(self._post(url, event))
        except Exception as e:
            app_log.warning("%s: %s event not sent: %s", self.name, action, e)
            return
        self.pending.add(task)
        task.add_done_callback(self.pending.discard)

    async def _post(self, url: str, event: dict) -> None:
        request = HTTPRequest(
            url,
            method="POST",
            headers={"Authorization": f"token {self.token}", "Content-Type": "application/json"},
            body=json.dumps(event),
            connect_timeout=self.timeout,
            request_timeout=self.timeout,
        )
        try:
            await AsyncHTTPClient().fetch(request)
        except Exception as e:
            app_log.warning(
                "%s: %s event for %s/%s not delivered to %s: %s",
                self.name, event["action"], event["user"], event["server"], url, e,
            )


class SpawnerHook:
    """A `Spawner.pre_spawn_hook` / `post_stop_hook`: notify the service, then run `then`.

    `then` is the hook the admin had set; its result (a value, or an awaitable
    from an async hook) is returned for JupyterHub to await. The service is
    notified first: it is the earliest signal, and a `then` that fails a spawn
    is followed by the hub's stop, which sends "stop".
    """

    def __init__(self, notifier: Notifier, action: str, then: Callable | None = None):
        self.notifier = notifier
        self.action = action
        self.then = then

    def __call__(self, spawner: Any) -> Any:
        self.notifier.send(self.action, spawner)
        if self.then is None:
            return None
        return self.then(spawner)

    def __deepcopy__(self, memo: dict) -> SpawnerHook:
        # traitlets deep-copies config values into every Spawner: share one hook
        # (and its pending tasks, which cannot be copied) instead.
        return self

    def __repr__(self) -> str:
        return f"<SpawnerHook {self.action} -> {self.notifier.name}, then {self.then!r}>"


def configure(
    c: Config,
    *,
    name: str = "spark-scaler",
    port: int = 10101,
    max_workers: int,
    admin_scope: bool = True,
    **settings: Any,
) -> dict:
    """Add the scaler to a hub's config `c`: managed service, its role, the admin
    scope and the spawn hooks (composed with any the admin had set). Returns the
    service entry; its `api_token` is fresh on every call."""
    services = _current(c.JupyterHub, "services", [])
    if any(service.get("name") == name for service in services):
        raise ValueError(f"configure: c.JupyterHub.services already has a service named {name!r}")
    url = f"http://127.0.0.1:{port}"
    service = {
        "name": name,
        "url": url,
        "command": [sys.executable, "-m", "jhub_spark_scaler", f"--max-workers={max_workers}",
                    *(_flag(key, value) for key, value in settings.items())],
        "display": True,
        "oauth_no_confirm": True,
        # the admin page's OAuth tokens carry the admin scope of users who hold it
        # (the hub drops it for those who do not)
        "oauth_client_allowed_scopes": [ADMIN_SCOPE] if admin_scope else [],
        "api_token": secrets.token_hex(32),
    }
    c.JupyterHub.services = [*services, service]
    role = {"name": f"{name}-service", "services": [name], "scopes": list(SERVICE_SCOPES)}
    c.JupyterHub.load_roles = [*_current(c.JupyterHub, "load_roles", []), role]
    if admin_scope:
        custom_scopes = _current(c.JupyterHub, "custom_scopes", {})
        c.JupyterHub.custom_scopes = {ADMIN_SCOPE: {"description": ADMIN_SCOPE_DESCRIPTION}, **custom_scopes}
    notifier = Notifier(name=name, url=url, token=service["api_token"])
    c.Spawner.pre_spawn_hook = SpawnerHook(notifier, "start", _current(c.Spawner, "pre_spawn_hook", None))
    c.Spawner.post_stop_hook = SpawnerHook(notifier, "stop", _current(c.Spawner, "post_stop_hook", None))
    return service


def _flag(key: str, value: Any) -> str:
    """`idle_workers=2` -> `--SparkScalerApp.idle_workers=2`; `LocalBackend__x=1` -> `--LocalBackend.x=1`."""
    cls, _, trait = key.rpartition("__")
    return f"--{cls or 'SparkScalerApp'}.{trait}={value}"


def _current(section: Config, key: str, empty: Any) -> Any:
    """What `section` already holds for `key`, or `empty`; reading a missing key
    would create a LazyConfigValue, and one built by `.append()`/`.update()` on
    an unset key is resolved against `empty`."""
    if key not in section:
        return empty
    value = section[key]
    if isinstance(value, LazyConfigValue):
        return value.get_value(empty)
    return value
