"""The admin page and its JSON API, behind the hub's OAuth.

    GET  <prefix>                  the page (anonymous browsers go to the hub's login)
    GET  <prefix>api/pool          the page's data as JSON (`view.pool_view`), filtered, sorted and
                                   paged by its query arguments (`query.py`); a bad one: 400
    GET  <prefix>api/chart         the pool-by-state chart as SVG
    GET  <prefix>static/<file>     the page's script and stylesheet (no data: no login needed)
    POST <prefix>api/pause         stop acting (observe and plan go on, shown as "would")
    POST <prefix>api/resume
    POST <prefix>api/idle-target   idle_workers=N overrides the configured value; empty clears it
    GET  <prefix>metrics           Prometheus metrics (readers, and holders of the hub's `read:metrics`,
                                   unless authenticate_prometheus is off)
    GET  <prefix>oauth_callback    the end of the hub's OAuth dance

Who may: hub admins (whose token may access this service) everything; holders of
`custom:spark-scaler:admin` everything; holders of `custom:spark-scaler:read` the GETs
only (`constants`). The hub only lets users who may access the service
(`access:services!service=<name>`) log in to it at all; API tokens need only the scope.

Pause, resume and the idle override are the reconciler's own controls
(`Reconciler.pause`, `resume`, `set_idle_override`): the handlers call them with
the admin's name; what the page shows comes from `PoolState` (`web/pool.py`).

Authentication runs in `prepare`, asynchronously (HubAuthenticated's own
`get_current_user` would block the event loop on a thread). A request with an
`Authorization: token ...` header is token-authenticated and needs no XSRF
token; a cookie-authenticated POST (or script GET) must carry the `_xsrf`
value, as JupyterHub's own handlers require.
"""

from __future__ import annotations

import os
import re
from typing import Any

import jinja2
from jupyterhub.services.auth import (
    HubOAuth,
    HubOAuthCallbackHandler,
    HubOAuthenticated,
    UserNotAllowed,
    check_scopes,
)
from tornado import web
from tornado.httputil import HTTPHeaders

from ..constants import ADMIN_SCOPE, HUB_METRICS_SCOPE, READ_SCOPE
from ..httpjson import json_object
from ..reconciler import Reconciler
from .pool import PoolState
from .query import PAGE_SIZE, Query, answer, page_query, parse
from .view import STATE_BADGES

TEMPLATES = os.path.join(os.path.dirname(__file__), "templates")
STATIC = os.path.join(os.path.dirname(__file__), "static")
#: Bytes of a request body the handlers take: `_xsrf` and `idle_workers` are under 200.
MAX_BODY = 4096


class AdminHandler(HubOAuthenticated, web.RequestHandler):
    """Base: hub OAuth, admins or holders of a scope (`hub_scopes`); `self.user` is the model."""

    #: any one of these admits a user, service or token to a GET; admins are admitted too
    read_scopes = frozenset({READ_SCOPE, ADMIN_SCOPE})
    #: any one of these admits to anything else (POST)
    write_scopes = frozenset({ADMIN_SCOPE})
    #: anonymous GET: True redirects to the hub's login, False answers 403 (APIs)
    login_redirect = False

    @property
    def hub_scopes(self) -> frozenset[str]:
        """The scopes of which one admits this request: reading or acting."""
        return self.read_scopes if self.request.method in ("GET", "HEAD") else self.write_scopes

    @property
    def hub_auth(self) -> HubOAuth:
        return self.settings["hub_auth"]

    @property
    def pool(self) -> PoolState:
        return self.settings["pool"]

    @property
    def reconciler(self) -> Reconciler:
        """The scaler's reconciler: `prepare` answers 503 until there is one."""
        return self.pool.reconciler

    def check_hub_user(self, model: dict) -> dict:
        scopes = set(model.get("scopes", ()))
        if check_scopes(self.hub_scopes, scopes):
            return model
        # Hub admins do not hold custom scopes; admit them when the token used may
        # access this service (their OAuth tokens for it, or their full API tokens),
        # not with any narrowly scoped token an admin happens to own.
        access = self.hub_auth.access_scopes
        if (
            model.get("kind", "user") == "user" and model.get("admin") and access
            and check_scopes(access, scopes)
        ):
            return model
        raise UserNotAllowed(model)

    def check_xsrf_cookie(self) -> None:
        # tornado calls this before prepare, when we cannot tell a token-authenticated
        # request from a cookie one; HubOAuth calls it again during authentication.
        if getattr(self, "_authenticating", False):
            super().check_xsrf_cookie()

    async def prepare(self) -> None:
        if len(self.request.body) > MAX_BODY:  # the server's max_body_size bounds what was read
            raise web.HTTPError(413, "body over %d bytes: a form or JSON object of idle_workers is enough",
                                MAX_BODY)
        self._authenticating = True
        try:
            model = await self.hub_auth.get_user(self, sync=False)
        finally:
            self._authenticating = False
        if model is None:
            self.current_user = None
            self.refuse_anonymous()
            return
        try:
            self.current_user = self.check_hub_user(model)
        except UserNotAllowed:
            kind = model.get("kind", "user")
            raise web.HTTPError(
                403, "%s %s may not %s: it needs to be a hub admin or hold the scope %s",
                kind, model.get("name"), self.refused_what(), " or ".join(sorted(self.hub_scopes)),
            ) from None
        if self.pool.reconciler is None:
            raise web.HTTPError(503, "the scaler is starting: no pool observed yet")

    def refused_what(self) -> str:
        if self.request.method in ("GET", "HEAD"):
            return "use the Spark scaler"
        return "change the Spark scaler"

    def refuse_anonymous(self) -> None:
        if self.request.method in ("GET", "HEAD") and self.login_redirect:
            self.redirect(self.get_login_url())
            return
        # a login cookie, yet no user: HubOAuth refused it (for a POST or a script, no valid XSRF token)
        logged_in = self.get_secure_cookie(self.hub_auth.cookie_name)
        if logged_in and self.request.method not in ("GET", "HEAD"):
            raise web.HTTPError(403, "the '_xsrf' value is missing or wrong: reload the page and try again")
        if logged_in:
            raise web.HTTPError(403, "a script's request needs the X-XSRFToken header")
        raise web.HTTPError(403, "not logged in: log in at the hub, "
                                 "or send 'Authorization: token <hub API token>'")

    @property
    def user_name(self) -> str:
        return self.current_user["name"]

    def wants_html(self) -> bool:
        """A browser's form post (no script) is answered by going back to the page."""
        return "text/html" in self.request.headers.get("Accept", "")

    def write_error(self, status_code: int, **kwargs) -> None:
        error = kwargs.get("exc_info", (None, None, None))[1]
        if isinstance(error, web.HTTPError) and error.log_message:
            message = error.log_message % error.args
        else:
            message = self._reason
        if self.wants_html() and self.request.method in ("GET", "HEAD"):
            self.set_header("Content-Type", "text/html; charset=utf-8")
            self.finish(render(self, "error.html", status=status_code, reason=self._reason, message=message))
        else:
            self.finish({"error": message})

    def render_page(self, name: str, **values: Any) -> None:
        self.set_header("Content-Type", "text/html; charset=utf-8")
        self.finish(render(self, name, **values))

    def acted(self) -> None:
        if self.wants_html():
            self.redirect(self.hub_auth.base_url, status=303)
        else:  # the pool as the page first shows it
            self.finish(answer(self.pool.view(), page_query()))


def render(handler: AdminHandler, name: str, **values: Any) -> bytes:
    """The page as UTF-8. A name from Spark or the hub may hold a lone surrogate ("\\ud800" in
    JSON), which UTF-8 cannot encode: it becomes "?" instead of failing the page."""
    env: jinja2.Environment = handler.settings["jinja2_env"]
    user = handler.current_user if getattr(handler, "_current_user", None) else None
    return env.get_template(name).render(
        hub_prefix=handler.hub_auth.hub_prefix,
        prefix=handler.hub_auth.base_url,
        user=user["name"] if user else None,
        static_url=handler.static_url,  # "<prefix>static/pool.js?v=<hash of its content>"
        **values,
    ).encode("utf-8", "replace")


class PageHandler(AdminHandler):
    login_redirect = True

    def get(self) -> None:
        self.render_page(
            "pool.html",
            pool=answer(self.pool.view(), page_query()),
            chart=self.pool.chart(),
            xsrf=self.xsrf_token.decode("ascii"),
            poll_ms=int(max(self.pool.poll_interval, 1.0) * 1000),
            badges=STATE_BADGES,
            page_size=PAGE_SIZE,
        )


class PoolAPIHandler(AdminHandler):
    def get(self) -> None:
        self.set_header("Cache-Control", "no-store")
        self.finish(answer(self.pool.view(), self.query()))

    def query(self) -> Query:
        """The query arguments as a `Query`; a bad one is a 400 naming it."""
        arguments = {name: [v.decode("utf-8", "replace") for v in values]
                     for name, values in self.request.query_arguments.items()}
        try:
            return parse(arguments)
        except ValueError as e:
            raise web.HTTPError(400, "%s", e) from None


class ChartHandler(AdminHandler):
    def get(self) -> None:
        self.set_header("Content-Type", "image/svg+xml; charset=utf-8")
        self.set_header("Cache-Control", "no-store")
        self.finish(str(self.pool.chart()))


class PauseHandler(AdminHandler):
    def post(self) -> None:
        self.reconciler.pause(by=self.user_name)
        self.acted()


class ResumeHandler(AdminHandler):
    def post(self) -> None:
        self.reconciler.resume(by=self.user_name)
        self.pool.on_change()
        self.acted()


class IdleTargetHandler(AdminHandler):
    def post(self) -> None:
        raw = self.idle_argument()
        if raw == "":
            return self.set_idle_override(None)
        maximum = self.reconciler.policy.max_workers
        try:
            value = int(raw)
        except ValueError:
            raise web.HTTPError(400, "idle_workers must be a whole number, got %r", raw[:40]) from None
        if not 0 <= value <= maximum:
            raise web.HTTPError(400, "idle_workers must be between 0 and max_workers (%d)", maximum)
        self.set_idle_override(value)

    def set_idle_override(self, value: int | None) -> None:
        self.reconciler.set_idle_override(value, by=self.user_name)
        self.pool.on_change()
        self.acted()

    def idle_argument(self) -> str:
        """`idle_workers` from a form, a query or a JSON body; "" when absent, or when the form's
        "Clear override" button (`clear`) sent it (without a script the field's value comes too)."""
        if self.get_argument("clear", ""):
            return ""
        if self.request.headers.get("Content-Type", "").startswith("application/json") and self.request.body:
            document = json_object(self.request.body, like='{"idle_workers": 2}')
            value = document.get("idle_workers")
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, str))):
                raise web.HTTPError(400, "idle_workers must be a whole number or a string of one, got %s",
                                    type(value).__name__)
            return "" if value is None else str(value).strip()
        return self.get_argument("idle_workers", "").strip()


class MetricsHandler(AdminHandler):
    """Prometheus metrics, for admins, readers, and the hub's scrapers (the default)."""

    read_scopes = AdminHandler.read_scopes | {HUB_METRICS_SCOPE}

    def get(self) -> None:
        body, content_type = self.pool.metrics.render()
        self.set_header("Content-Type", content_type)
        self.finish(body)


class OpenMetricsHandler(web.RequestHandler):
    """Prometheus metrics for anyone who reaches the service (authenticate_prometheus False)."""

    def get(self) -> None:
        body, content_type = self.settings["pool"].metrics.render()
        self.set_header("Content-Type", content_type)
        self.finish(body)


class CallbackHandler(HubOAuthCallbackHandler):
    @property
    def hub_auth(self) -> HubOAuth:
        return self.settings["hub_auth"]


class SecurityHeaders(web.OutputTransform):
    """Headers on every answer of the service's application (pages, JSON, errors, redirects,
    404s): framing refused, as the hub refuses it for its own pages, so that no page (another
    site, or a user's server on the hub's origin) can frame the buttons; no MIME sniffing. A
    Content-Security-Policy a handler set is kept, with `frame-ancestors` added if it lacks one."""

    FRAME_ANCESTORS = "frame-ancestors 'none'"

    def transform_first_chunk(self, status_code: int, headers: HTTPHeaders, chunk: bytes,
                              finishing: bool) -> tuple[int, HTTPHeaders, bytes]:
        policy = headers.get("Content-Security-Policy", "").strip().rstrip(";")
        if "frame-ancestors" not in policy:
            policy = "; ".join(part for part in (policy, self.FRAME_ANCESTORS) if part)
        headers["Content-Security-Policy"] = policy
        headers["X-Frame-Options"] = "DENY"  # for browsers without CSP frame-ancestors
        headers["X-Content-Type-Options"] = "nosniff"
        return status_code, headers, chunk


def admin_routes(prefix: str, *, authenticate_prometheus: bool) -> list[tuple[str, type]]:
    """The tornado routes under the service's prefix (JUPYTERHUB_SERVICE_PREFIX). The static
    files' route (`<prefix>static/`) comes from `admin_settings`: tornado adds it itself."""
    p = re.escape(prefix.rstrip("/"))
    return [
        (p + "/metrics", MetricsHandler if authenticate_prometheus else OpenMetricsHandler),
        (p + "/?", PageHandler),
        (p + "/api/pool", PoolAPIHandler),
        (p + "/api/chart", ChartHandler),
        (p + "/api/pause", PauseHandler),
        (p + "/api/resume", ResumeHandler),
        (p + "/api/idle-target", IdleTargetHandler),
        (p + "/oauth_callback", CallbackHandler),
    ]


def admin_settings(*, pool: PoolState, api_url: str, api_token: str, prefix: str) -> dict[str, Any]:
    """tornado Application settings for the admin routes. The OAuth client id, callback URL,
    access scopes and the hub's prefix come from the JUPYTERHUB_* variables the hub sets."""
    hub_auth = HubOAuth(api_url=api_url, api_token=api_token, base_url=prefix, cache_max_age=60)
    return {
        "pool": pool,
        "hub_auth": hub_auth,
        # signs the OAuth state and token cookies; a new one per process only means
        # admins log in again (silently, through the hub) after a restart
        "cookie_secret": os.urandom(32),
        "xsrf_cookies": True,
        "template_path": TEMPLATES,
        # tornado serves these under the prefix (StaticFileHandler, no login: they hold no data)
        # and `static_url` versions their URLs by content, so a browser never runs a stale script
        "static_path": STATIC,
        "static_url_prefix": prefix.rstrip("/") + "/static/",
        "jinja2_env": jinja2.Environment(
            loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=True, undefined=jinja2.StrictUndefined
        ),
    }
