"""The scaler as a JupyterHub managed service: hub activity in, pushed events in.

The hub's users API is polled as the source of truth (it also rebuilds
everything after a restart); hooks in the hub push spawn and stop events to
`<prefix>events` so a new server gets its pre-warm workers at once. The admin
page (`jhub_spark_scaler.web`) is served beside it, behind the hub's OAuth.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable, Iterable
from urllib.parse import urlsplit

from tornado.httpserver import HTTPServer
from tornado.ioloop import PeriodicCallback
from tornado.web import Application

from . import clock
from .activity import Gate, HubActivity
from .backends.history_store import HistoryStore
from .constants import EVENT_START, SERVICE_HOST
from .errors import ConfigError
from .events import make_events_route
from .metrics import ScalerMetrics
from .model import AppStart
from .prewarm_history import PrewarmHistory
from .prewarm_keeper import PrewarmKeeper
from .web.handlers import SecurityHeaders, admin_routes, admin_settings
from .web.history import PoolHistory
from .web.pool import PoolState


#: What JupyterHub sets for a managed service when it runs with internal_ssl.
INTERNAL_SSL_VARIABLES = ("JUPYTERHUB_SSL_KEYFILE", "JUPYTERHUB_SSL_CERTFILE", "JUPYTERHUB_SSL_CLIENT_CA")
#: Bodies are read before a request is authenticated: nothing the service takes (an event, a
#: form) is near this; tornado's default would buffer 100 MB for anyone.
MAX_REQUEST_BODY = 64 * 1024


class HubService:
    def __init__(
        self,
        *,
        api_url: str,
        api_token: str,
        events_secret: str,
        service_url: str,
        prefix: str,
        poll_interval: float,
        stale_after: float,
        prewarm_window: float,
        prewarm_per_server: int,
        prewarm_profiles: Iterable[str],
        prewarm_history: int,
        history_store: HistoryStore | None,
        on_change: Callable[[], None],
        log: logging.Logger,
        metrics: ScalerMetrics,
        pool_history: PoolHistory,
        cycle_interval: float,
        authenticate_prometheus: bool,
    ):
        self.activity = HubActivity(api_url=api_url, api_token=api_token, log=log, stale_after=stale_after)
        self.api_url = api_url
        self.profiles = frozenset(prewarm_profiles)
        self.history = PrewarmHistory(keep=prewarm_history)
        #: loads and saves `history` in the backend's store (`Backend.history_store()`)
        self.keeper = PrewarmKeeper(self.history, store=history_store, log=log)
        self._gate = Gate(profiles=self.profiles, history=prewarm_history)
        #: what the admin page reads; the app attaches its Reconciler
        self.pool = PoolState(
            activity=self.activity,
            prewarm_window=prewarm_window,
            prewarm_per_server=prewarm_per_server,
            poll_interval=cycle_interval,
            on_change=on_change,
            metrics=metrics,
            history=pool_history,
            gate=lambda: self._gate,
        )
        self.authenticate_prometheus = authenticate_prometheus
        self.service_url = service_url
        self.prefix = prefix if prefix.endswith("/") else prefix + "/"
        self.poll_interval = poll_interval
        self.on_change = on_change
        self.log = log
        self._token = api_token
        self._events_secret = events_secret
        self._ticker: PeriodicCallback | None = None
        self._polls: set[asyncio.Task] = set()  # strong references to the polls events start
        self._server: HTTPServer | None = None

    def credit(self, app_starts: Iterable[AppStart] = ()) -> int:
        """Extra idle workers for recently started, still running notebook servers whose credit
        no Spark app has used up yet, let through by `prewarm_profiles` and each user's history
        (`activity.warm_servers`)."""
        app_starts = tuple(app_starts)
        now = clock.now()
        if self.activity.healthy:  # servers missing from a failed poll have not ended
            self.history.observe(self.activity.servers, app_starts, now=now)
        self.keeper.tick(now)  # in the background: never holds up the cycle
        cold = self.history.cold(app_starts)
        self._gate = Gate(profiles=self.profiles, cold=cold, history=self.history.keep)
        return self.activity.credit(window=self.pool.prewarm_window, per_server=self.pool.prewarm_per_server,
                                    app_starts=app_starts, gate=self._gate)

    def _on_event(self, action: str, user: str, server: str) -> None:
        self.activity.on_event(action, user, server)
        self.log.info("hub event: %s %s/%s", action, user, server)
        self.on_change()
        if self.profiles and action == EVENT_START:
            # an event carries no profile: read it from the hub now, not at the next poll
            task = asyncio.get_running_loop().create_task(self._poll())
            self._polls.add(task)
            task.add_done_callback(self._polls.discard)

    async def _poll(self) -> None:
        await self.activity.poll()
        self.on_change()

    async def start(self) -> None:
        """First poll at once (a restarted service recovers its state) and the pre-warm
        history read from the backend's store (bounded), then serve."""
        await self.activity.poll()
        await self.keeper.load()
        self._ticker = PeriodicCallback(self._poll, self.poll_interval * 1000)
        self._ticker.start()
        web = self.make_application()
        url = urlsplit(self.service_url)
        try:
            self._server = web.listen(
                url.port or 80, url.hostname or SERVICE_HOST, xheaders=True, max_body_size=MAX_REQUEST_BODY
            )
        except OSError as e:
            raise ConfigError(f"service_url {self.service_url}: cannot listen: {e.strerror or e}") from None
        self.log.info("serving %s%s", self.service_url.rstrip("/"), self.prefix)

    def make_application(self) -> Application:
        """The events route, plus the admin page when the hub gave us an OAuth client."""
        routes: list = [make_events_route(self.prefix, token=self._events_secret, on_event=self._on_event)]
        settings: dict = {}
        if os.environ.get("JUPYTERHUB_CLIENT_ID"):
            routes += admin_routes(self.prefix, authenticate_prometheus=self.authenticate_prometheus)
            settings = admin_settings(
                pool=self.pool, api_url=self.api_url, api_token=self._token, prefix=self.prefix
            )
        else:
            self.log.warning("admin page off: no OAuth client ($JUPYTERHUB_CLIENT_ID); run as a hub service")
        return Application(routes, transforms=[SecurityHeaders], **settings)

    def stop(self) -> None:
        if self._ticker:
            self._ticker.stop()
        if self._server:
            self._server.stop()


def refuse_internal_ssl() -> None:
    """ConfigError when the hub runs with internal_ssl: the hub's proxy and hooks would then
    need TLS with client certificates from the service's server, which it does not serve."""
    found = [name for name in INTERNAL_SSL_VARIABLES if os.environ.get(name)]
    if found:
        raise ConfigError(
            f"the hub runs with internal_ssl ({found[0]} is set), which the Spark scaler does not support: "
            "set c.JupyterHub.internal_ssl = False"
        )
