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
    from jhub_spark_scaler.driver_user import DriverUser

    token, events_secret = secrets.token_hex(32), secrets.token_hex(32)
    c.JupyterHub.services.append({
        "name": "spark-scaler",
        "url": "http://127.0.0.1:10101",
        "command": [sys.executable, "-m", "jhub_spark_scaler", "--max-workers=20", "--standby",
                    "--SparkScalerApp.idle_workers=2", "--LocalBackend.worker_cores=4"],
        "display": True,
        "oauth_no_confirm": True,
        "oauth_client_allowed_scopes": ["custom:spark-scaler:admin", "custom:spark-scaler:read"],
        "api_token": token,  # the hub hands it to the service as JUPYTERHUB_API_TOKEN
        # what the hooks send: a secret of their own, not the service's API token
        "environment": {"JHUB_SPARK_SCALER_EVENTS_SECRET": events_secret},
    })
    c.JupyterHub.load_roles.append({
        "name": "spark-scaler-service",
        "services": ["spark-scaler"],
        "scopes": ["list:users", "read:servers"],
    })
    c.JupyterHub.custom_scopes = {  # the descriptions: constants.ADMIN_SCOPE_DESCRIPTION, ...
        "custom:spark-scaler:admin": {"description": "...", "subscopes": ["custom:spark-scaler:read"]},
        "custom:spark-scaler:read": {"description": "..."},
    }
    notifier = Notifier(name="spark-scaler", url="http://127.0.0.1:10101", token=events_secret)
    c.Spawner.pre_spawn_hook = SpawnerHook(notifier, "start", then=None)  # then=: your own hook
    c.Spawner.post_stop_hook = SpawnerHook(notifier, "stop", then=None)
    # drivers named after the hub user (driver_user=False leaves this out); an admin's own
    # SPARK_SUBMIT_OPTS goes in DriverUser(theirs)
    c.Spawner.environment["SPARK_SUBMIT_OPTS"] = DriverUser()
    # notebook Spark JVMs that start from class data archives (fast_jvm=False leaves this out)
    from jhub_spark_scaler.jvm_archives import DEFAULT_DIR, SubmitArgs, spark_conf
    conf = spark_conf(DEFAULT_DIR, java="java", spark_home="<the hub's pyspark>")
    c.Spawner.environment["PYSPARK_SUBMIT_ARGS"] = SubmitArgs(conf)

A spawner class's own section (`c.KubeSpawner.pre_spawn_hook = ...`) takes precedence over
`c.Spawner`'s for that class: `configure()` wraps the hooks of every section set before the
call in the same way. Set such hooks before calling `configure()` (on z2jh: in an extraConfig
snippet whose name sorts before the scaler's); one set after it replaces the scaler's hook.

Users and services see the admin page with a role granting `custom:spark-scaler:read` (read
only: the page, `api/pool`, `/metrics`) or `custom:spark-scaler:admin` (also pause, resume and
the idle override), plus `access:services!service=spark-scaler` to log in to the page; hub
admins need no role. A Prometheus token with the hub's own `read:metrics` may read `/metrics`.
JupyterHub's `internal_ssl` is refused: the service serves plain HTTP.

On Kubernetes (zero-to-jupyterhub) the proxy runs in another pod: it reaches the
service through the hub's Service (`url="http://hub:10101"`), so the service must
listen on all addresses (`listen="0.0.0.0"`); the hooks, in the hub's own process,
still post to the loopback address. The chart defines the service itself from
`hub.services.spark-scaler` (with an `api_token` it generates and keeps in its
Secret) and its role from `hub.loadRoles`; `existing_service=True` completes that
entry instead of adding a second one:

    from z2jh import get_config
    configure(c, existing_service=True, listen="0.0.0.0", max_workers=20,
              pass_env=["KUBERNETES_SERVICE_HOST", "KUBERNETES_SERVICE_PORT"],
              backend_class="kubernetes", KubernetesBackend__namespace="spark")

(helm-values/values.yaml does this with the settings read from `custom.sparkScaler`.)
A managed service does not inherit the hub's environment; `pass_env` names the
variables it needs anyway, such as the in-cluster address of the Kubernetes API.

The hooks run in the hub. They only schedule a POST of
`{"action": "start"|"stop", "user": ..., "server": ...}` to the service's
`<prefix>events` (see `jhub_spark_scaler.events`) and return at once; a
failed delivery is logged at warning and never reaches the spawn. The service
polls the hub's users API anyway, so a lost event only delays a reaction.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import sys
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import urlsplit

from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest
from tornado.log import app_log  # the hub wires tornado's loggers into its own
from traitlets.config import Config

# Only `constants`, `driver_user`, `jvm_archives` and `spawner_env` of this package: this
# module is imported by the hub's own process.
from .constants import (
    ADMIN_SCOPE,
    ADMIN_SCOPE_DESCRIPTION,
    EVENT_START,
    EVENT_STOP,
    EVENTS_PATH,
    EVENTS_SECRET_ENV,
    READ_SCOPE,
    READ_SCOPE_DESCRIPTION,
    SERVICE_HOST,
    SERVICE_NAME,
    SERVICE_PORT,
    SERVICE_SCOPES,
)
from .driver_user import install as install_driver_user
from .jvm_archives import DEFAULT_DIR as JVM_ARCHIVES_DIR
from .jvm_archives import install as install_fast_jvm
from .spawner_env import current

#: Seconds a hook's POST to the service may take: the service runs beside the hub, and a
#: lost event only delays a reaction until the service's next poll of the hub.
NOTIFY_TIMEOUT = 2.0


class Notifier:
    """Sends spawn events to the service, fire-and-forget."""

    def __init__(self, *, name: str, url: str, token: str, timeout: float = NOTIFY_TIMEOUT):
        self.name = name
        self.url = url.rstrip("/")
        self.token = token
        self.timeout = timeout
        self.pending: set[asyncio.Task] = set()  # strong references until each POST ends

    def events_url(self, base_url: str) -> str:
        """The service's events endpoint: its url plus the prefix the hub gives it
        (JUPYTERHUB_SERVICE_PREFIX = <hub base_url>services/<name>/)."""
        return f"{self.url}{base_url}services/{self.name}/{EVENTS_PATH}"

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
            follow_redirects=False,  # never send the token on to where an answer points
        )
        try:
            await AsyncHTTPClient().fetch(request)
        except Exception as e:
            app_log.warning(
                "%s: %s event for %s/%s not delivered to %s: %s",
                self.name, event["action"], event["user"], event["server"], url, _why(e),
            )


def _why(error: Exception) -> str:
    """What went wrong with a POST, in words; a redirect says where it pointed."""
    if isinstance(error, HTTPClientError) and 300 <= error.code < 400:
        location = error.response.headers.get("Location", "?") if error.response is not None else "?"
        return f"answered a redirect (HTTP {error.code}) to {location[:200]}, not followed"
    return str(error)


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
    name: str = SERVICE_NAME,
    port: int = SERVICE_PORT,
    max_workers: int,
    admin_scope: bool = True,
    url: str | None = None,
    listen: str = SERVICE_HOST,
    existing_service: bool = False,
    pass_env: Iterable[str] = (),
    user: str | None = None,
    driver_user: bool = True,
    fast_jvm: bool = True,
    jvm_archives_dir: str = JVM_ARCHIVES_DIR,
    **settings: Any,
) -> dict:
    """Add the scaler to a hub's config `c`: managed service, its role, the admin and read
    scopes and the spawn hooks (composed with any the admin had set, in `c.Spawner` or a
    spawner class's section). Returns the
    service entry; its `api_token` is fresh on every call unless the entry existed.

    `url` is where the hub and its proxy reach the service (default
    `http://127.0.0.1:<port>`); the service listens on `listen`:`port`. The hooks
    post to `listen` (to loopback when it is a wildcard address).

    `existing_service=True`: `c.JupyterHub.services` already has the entry `name`
    (z2jh's `hub.services`): complete it (command, and the url, display and OAuth
    settings it lacks) and keep its `api_token`; the service's role is added only
    if no role in `c.JupyterHub.load_roles` names the service yet, and one that does
    must grant it the scopes the scaler needs. Without it, an entry `name` is an error.

    `pass_env`: names of the hub's environment variables to hand to the service
    (those that are set), e.g. KUBERNETES_SERVICE_HOST/PORT for in-cluster access.

    `user`: the Unix user the hub runs the service as (the entry's `user` key; the hub
    must run as root). Without it the service runs as the hub's user; a hub running as
    root then needs `LocalBackend__run_as` for the local backend (docs/backends.md).

    `driver_user`: give each notebook server a `SPARK_SUBMIT_OPTS` that names its Spark
    drivers after the hub user (`jhub_spark_scaler.driver_user`), so that the master reports
    their apps under that name and each app uses up its own user's pre-warm credit.

    `fast_jvm`: give each local notebook server a `PYSPARK_SUBMIT_ARGS` whose Spark drivers and
    executors start from the class data archives in `jvm_archives_dir`, written by
    `python -m jhub_spark_scaler.jvm_archives build` (`jhub_spark_scaler.jvm_archives`).
    """
    if current(c.JupyterHub, "internal_ssl", False):
        raise ValueError(
            "configure: c.JupyterHub.internal_ssl is True, which the Spark scaler does not support "
            "(its service serves plain HTTP): set it to False"
        )
    services = current(c.JupyterHub, "services", [])
    existing = _existing_entry(services, name, existing_service=existing_service)
    service = _service_entry(
        existing or {"name": name}, url=url, port=port, listen=listen,
        flags=[f"--max-workers={max_workers}", *(_flag(key, value) for key, value in settings.items())],
        admin_scope=admin_scope, environment={key: os.environ[key] for key in pass_env if key in os.environ},
    )
    if user is not None:
        service["user"] = user
    if existing:
        c.JupyterHub.services = [service if s.get("name") == name else s for s in services]
    else:
        c.JupyterHub.services = [*services, service]
    _add_service_role(c, name, existing_service=existing_service)
    if admin_scope:
        custom_scopes = current(c.JupyterHub, "custom_scopes", {})
        c.JupyterHub.custom_scopes = {
            ADMIN_SCOPE: {"description": ADMIN_SCOPE_DESCRIPTION, "subscopes": [READ_SCOPE]},
            READ_SCOPE: {"description": READ_SCOPE_DESCRIPTION},
            **custom_scopes,
        }
    _install_hooks(c, Notifier(name=name, url=_notify_url(listen, port), token=_events_secret(service)))
    if driver_user:
        install_driver_user(c)
    if fast_jvm:
        install_fast_jvm(c, jvm_archives_dir)
    return service


def _events_secret(service: dict) -> str:
    """The secret the hooks send with each event (`EVENTS_SECRET_ENV`): the entry's own, or a
    fresh one put in its environment."""
    environment = service.setdefault("environment", {})
    return environment.setdefault(EVENTS_SECRET_ENV, secrets.token_hex(32))


def _add_service_role(c: Config, name: str, *, existing_service: bool) -> None:
    """The role granting service `name` its scopes, unless an existing service's roles do."""
    roles = current(c.JupyterHub, "load_roles", [])
    if not (existing_service and _has_service_role(roles, name)):
        role = {"name": f"{name}-service", "services": [name], "scopes": list(SERVICE_SCOPES)}
        c.JupyterHub.load_roles = [*roles, role]


def _existing_entry(services: list, name: str, *, existing_service: bool) -> dict | None:
    """The entry `name` of `services` (`c.JupyterHub.services`): required with
    `existing_service`, refused without it."""
    existing = [service for service in services if service.get("name") == name]
    if existing and not existing_service:
        raise ValueError(f"configure: c.JupyterHub.services already has a service named {name!r}")
    if existing_service and not existing:
        raise ValueError(
            f"configure: existing_service=True, but c.JupyterHub.services has no service named {name!r} "
            f"(on z2jh: hub.services.{name} in the Helm values)"
        )
    return existing[0] if existing else None


def _notify_url(listen: str, port: int) -> str:
    """Where the hooks post: they run in the hub's process, beside the service, so at the
    address it listens on, or on loopback when that is a wildcard address."""
    wildcard = listen.strip("[]") in ("0.0.0.0", "::", "")
    host = ("[::1]" if ":" in listen else "127.0.0.1") if wildcard else _host(listen)
    return f"http://{host}:{port}"


#: The Spawner traits configure() sets, and the event each hook sends.
HOOKS = (("pre_spawn_hook", EVENT_START), ("post_stop_hook", EVENT_STOP))


def _install_hooks(c: Config, notifier: Notifier) -> None:
    """The spawn hooks, each followed by the hook the admin had set: in `c.Spawner`, and in
    any other section (a spawner class's, e.g. `c.KubeSpawner`) that sets one, since a class's
    own section takes precedence over `c.Spawner` for that class and would drop the scaler's."""
    for trait, action in HOOKS:
        c.Spawner[trait] = SpawnerHook(notifier, action, current(c.Spawner, trait, None))
    for section in [key for key in c if key != "Spawner" and isinstance(c[key], Config)]:
        for trait, action in HOOKS:
            theirs = current(c[section], trait, None)
            if theirs is not None and not isinstance(theirs, SpawnerHook):
                c[section][trait] = SpawnerHook(notifier, action, theirs)
                app_log.warning(
                    "%s: c.%s.%s is set; the scaler's hook now runs before it. A %s set after "
                    "configure() would replace the scaler's hook: set spawner hooks before calling it",
                    notifier.name, section, trait, trait,
                )


def _service_entry(entry: dict, *, url: str | None, port: int, listen: str, flags: list[str],
                   admin_scope: bool, environment: dict[str, str]) -> dict:
    """The service's entry: `entry`'s keys (an existing entry, or just the name), the
    command, and the defaults for what `entry` lacks."""
    name = entry["name"]
    if "command" in entry:
        raise ValueError(f"configure: service {name!r} already has a command: it would be defined twice")
    if url is not None and entry.get("url", url) != url:
        raise ValueError(f"configure: service {name!r} has url {entry['url']!r}, not {url!r}")
    url = entry.get("url") or url or f"http://{SERVICE_HOST}:{port}"
    # --standby: the hub restarts a service that exits at once, so one that found the pool
    # still held (by a scaler the hub left behind) waits for it instead of exiting in a loop
    command = [sys.executable, "-m", "jhub_spark_scaler", flags[0], "--standby"]
    where = urlsplit(url)
    if (where.hostname, where.port) != (listen.strip("[]"), port):
        # the hub hands the service `url` as JUPYTERHUB_SERVICE_URL: listen elsewhere
        command.append(f"--SparkScalerApp.service_url=http://{_host(listen)}:{port}")
    service = {
        "name": name,
        "url": url,
        "command": [*command, *flags[1:]],
        "display": True,
        "oauth_no_confirm": True,
        # the admin page's OAuth tokens carry the admin scope of users who hold it
        # (the hub drops it for those who do not)
        "oauth_client_allowed_scopes": [ADMIN_SCOPE, READ_SCOPE] if admin_scope else [],
        "api_token": secrets.token_hex(32),
    }
    service.update({key: value for key, value in entry.items() if key != "environment"})
    service["url"] = url
    if environment or "environment" in entry:
        service["environment"] = {**environment, **entry.get("environment", {})}
    return service


def _host(address: str) -> str:
    """An address as the host part of a URL (IPv6 in brackets)."""
    address = address.strip("[]")
    return f"[{address}]" if ":" in address else address


def _has_service_role(roles: list, name: str) -> bool:
    """Whether a role already names service `name`; ValueError if together they
    miss scopes the scaler needs."""
    theirs = [role for role in roles if name in role.get("services", [])]
    if not theirs:
        return False
    granted = {scope for role in theirs for scope in role.get("scopes", [])}
    missing = [scope for scope in SERVICE_SCOPES if scope not in granted]
    if missing:
        names = ", ".join(role.get("name", "?") for role in theirs)
        raise ValueError(
            f"configure: the roles of service {name!r} ({names}) lack the scopes {', '.join(missing)} "
            "(on z2jh: hub.loadRoles)"
        )
    return True


def _flag(key: str, value: Any) -> str:
    """`idle_workers=2` -> `--SparkScalerApp.idle_workers=2`; `LocalBackend__x=1` -> `--LocalBackend.x=1`."""
    cls, _, trait = key.rpartition("__")
    return f"--{cls or 'SparkScalerApp'}.{trait}={value}"
