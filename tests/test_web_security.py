"""What the service's HTTP clients and its hub helper refuse: redirects that would carry a
token elsewhere (real tornado servers on 127.0.0.1), JupyterHub's internal_ssl (the real
command), and spawner-class hooks that would drop the scaler's (a real Spawner's config)."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from types import SimpleNamespace

import pytest
import pytest_asyncio
from jupyterhub.spawner import LocalProcessSpawner
from tornado.httpclient import AsyncHTTPClient
from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets
from tornado.web import Application, RequestHandler
from traitlets.config import Config

from jhub_spark_scaler.activity import HubActivity
from jhub_spark_scaler.constants import ADMIN_SCOPE, EVENTS_SECRET_ENV, READ_SCOPE
from jhub_spark_scaler.hub import Notifier, SpawnerHook, configure
from jhub_spark_scaler.spark import SparkClient, SparkError

from .real_hub import hub_api
from .test_admin_page import Browser, xsrf_of
from .waiting import until

TOKEN = "secret-" + "7" * 32
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class Trap(RequestHandler):
    """Where the redirects point (`/elsewhere/...`): records every request's Authorization header.
    On the same origin as the redirector, as a user's server is behind the hub's proxy: tornado
    strips Authorization on a redirect to another origin, never on one within the origin."""

    SUPPORTED_METHODS = ("GET", "POST")

    def initialize(self, seen: list) -> None:
        self.seen = seen

    def get(self, path: str) -> None:
        self.seen.append((self.request.method, self.request.path, self.request.headers.get("Authorization")))
        self.finish({"status": "ALIVE", "items": [], "_pagination": {"next": None}})

    post = get


class Redirect(RequestHandler):
    """Answers every other request with a redirect to the trap, keeping the method (307) for a POST."""

    SUPPORTED_METHODS = ("GET", "POST")

    def initialize(self, seen: list) -> None:
        self.seen = seen

    def get(self, path: str) -> None:
        self.seen.append((self.request.method, self.request.path, self.request.headers.get("Authorization")))
        self.redirect("/elsewhere" + self.request.uri, status=302 if self.request.method == "GET" else 307)

    post = get


@pytest_asyncio.fixture
async def redirect():
    """A server redirecting everything to its own `/elsewhere/`: (its url, the trap's url,
    what the redirecting side saw, what the trap saw)."""
    seen_there, seen_here = [], []
    sockets = bind_sockets(0, "127.0.0.1")
    url = f"http://127.0.0.1:{sockets[0].getsockname()[1]}"
    server = HTTPServer(Application([
        (r"/elsewhere(.*)", Trap, {"seen": seen_there}), (r"(.*)", Redirect, {"seen": seen_here}),
    ]))
    server.add_sockets(sockets)
    try:
        yield SimpleNamespace(url=url, trap=url + "/elsewhere", seen_here=seen_here, seen_there=seen_there)
    finally:
        server.stop()
        await server.close_all_connections()


async def test_the_attack_works_on_a_client_that_follows_redirects(redirect):
    """The control: tornado, following a redirect within the origin, sends the token on."""
    await AsyncHTTPClient().fetch(redirect.url + "/hub/api/users",
                                  headers={"Authorization": f"token {TOKEN}"})
    assert redirect.seen_there == [("GET", "/elsewhere/hub/api/users", f"token {TOKEN}")]


async def test_the_hub_api_client_does_not_follow_a_redirect(redirect):
    activity = HubActivity(api_url=redirect.url + "/hub/api", api_token=TOKEN,
                           log=logging.getLogger("test"), stale_after=300)
    await activity.poll()
    assert not activity.healthy
    assert "redirect (HTTP 302) to /elsewhere/hub/api/users" in activity.last_error, activity.last_error
    assert "\n" not in activity.last_error
    assert redirect.seen_here and redirect.seen_here[0][2] == f"token {TOKEN}", "it did ask the redirector"
    assert redirect.seen_there == [], "the token reached the redirect's target"


async def test_the_spark_client_sends_no_credentials_and_follows_no_redirect(redirect):
    client = SparkClient(redirect.url, timeout=5)
    with pytest.raises(SparkError, match=r"Spark master at .* answered a redirect \(HTTP 302\)"):
        await client.master()
    with pytest.raises(SparkError, match="redirect"):
        await client.worker(redirect.url)
    with pytest.raises(SparkError, match=r"answered a redirect \(HTTP 307\)"):  # 302/303: Spark's "done"
        await client.decommission_host("10.0.0.1")
    assert [auth for _, _, auth in redirect.seen_here] == [None, None, None]
    assert redirect.seen_there == []


def stand_in_spawner(user: str = "alice", server: str = "") -> SimpleNamespace:
    """What a hook reads of a Spawner: its user's name and settings, its name."""
    return SimpleNamespace(user=SimpleNamespace(name=user, settings={"base_url": "/"}), name=server)


async def test_the_hooks_notifier_does_not_follow_a_redirect(redirect, caplog):
    notifier = Notifier(name="spark-scaler", url=redirect.url, token=TOKEN)
    with caplog.at_level(logging.WARNING, logger="tornado.application"):
        notifier.send("start", stand_in_spawner())
        await until(lambda: not notifier.pending, timeout=10, what="the event's POST to end")
    assert redirect.seen_here == [("POST", "/services/spark-scaler/events", f"token {TOKEN}")]
    assert redirect.seen_there == [], "the token reached the redirect's target"
    warnings = [r.getMessage() for r in caplog.records if "not delivered" in r.getMessage()]
    assert len(warnings) == 1 and "redirect (HTTP 307) to /elsewhere/services/" in warnings[0], warnings
    assert "\n" not in warnings[0]


# -- internal_ssl ---------------------------------------------------------------------------


def test_the_service_refuses_internal_ssl_at_start_in_one_line(tmp_path):
    """What the hub gives a managed service under internal_ssl: the command exits 2 at once,
    before it starts any Spark process (its state dir is never made)."""
    env = {
        **os.environ, "PYTHONPATH": ROOT,
        "JUPYTERHUB_API_URL": "https://127.0.0.1:1/hub/api", "JUPYTERHUB_API_TOKEN": TOKEN,
        "JUPYTERHUB_SERVICE_URL": "https://127.0.0.1:1",
        "JUPYTERHUB_SERVICE_PREFIX": "/services/spark-scaler/",
        "JUPYTERHUB_SSL_KEYFILE": str(tmp_path / "spark-scaler.key"),
        "JUPYTERHUB_SSL_CERTFILE": str(tmp_path / "spark-scaler.crt"),
        "JUPYTERHUB_SSL_CLIENT_CA": str(tmp_path / "hub-ca.crt"),
    }
    state = tmp_path / "state"
    done = subprocess.run(
        [sys.executable, "-m", "jhub_spark_scaler", "--max-workers=1", f"--LocalBackend.state_dir={state}"],
        capture_output=True, text=True, timeout=60, cwd=tmp_path, env=env,
    )
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "internal_ssl" in lines[0] and "JUPYTERHUB_SSL_KEYFILE" in lines[0], lines
    assert not state.exists()


def test_configure_refuses_internal_ssl():
    c = Config()
    c.JupyterHub.internal_ssl = True
    with pytest.raises(ValueError, match="c.JupyterHub.internal_ssl is True") as refused:
        configure(c, max_workers=2)
    assert "\n" not in str(refused.value)


# -- spawner hooks in a spawner class's section ----------------------------------------------


def test_a_spawner_class_sections_hooks_are_wrapped_not_lost(caplog):
    """`c.LocalProcessSpawner.pre_spawn_hook` takes precedence over `c.Spawner`'s for that class:
    configure() wraps it, so a real LocalProcessSpawner runs the scaler's hook and then the admin's."""
    ran = []
    c = Config()
    c.LocalProcessSpawner.pre_spawn_hook = lambda spawner: ran.append(("pre", spawner.name))
    c.Spawner.post_stop_hook = lambda spawner: ran.append(("stop", spawner.name))
    with caplog.at_level(logging.WARNING, logger="tornado.application"):
        configure(c, max_workers=2)
    warnings = [r.getMessage() for r in caplog.records if "hook" in r.getMessage()]
    assert len(warnings) == 1 and "c.LocalProcessSpawner.pre_spawn_hook" in warnings[0], warnings
    assert "before calling" in warnings[0]

    spawner = LocalProcessSpawner(config=c)
    for hook, action in ((spawner.pre_spawn_hook, "start"), (spawner.post_stop_hook, "stop")):
        assert isinstance(hook, SpawnerHook) and hook.action == action, hook
    sent = []
    spawner.pre_spawn_hook.notifier.send = lambda action, s: sent.append(action)
    spawner.pre_spawn_hook(stand_in_spawner(server="gpu"))
    spawner.post_stop_hook(stand_in_spawner(server="gpu"))
    assert sent == ["start", "stop"] and ran == [("pre", "gpu"), ("stop", "gpu")]


def test_without_configure_the_class_section_would_replace_the_spawner_hook():
    """The control: traitlets gives a class's own section precedence over `c.Spawner`."""
    c = Config()
    c.Spawner.pre_spawn_hook = print
    c.LocalProcessSpawner.pre_spawn_hook = len
    assert LocalProcessSpawner(config=c).pre_spawn_hook is len


# -- on a real hub: who may read, who may act; the headers; bad bodies ------------------------

READER, OPERATOR, NOBODY = "reader", "operator", "nobody"
SCRAPER_TOKEN = "scraper-" + "3" * 32
GETS = ("", "api/pool", "api/chart", "metrics")
POSTS = ("api/pause", "api/resume", "api/idle-target")


@pytest_asyncio.fixture
async def hub(scaler_hub):
    """A hub with the scaler; `reader` holds the read scope, `operator` the admin scope (both may
    log in to the service's page), `nobody` neither; the service `scraper` holds the hub's
    read:metrics. Returns (app, the service's entry, its public URL)."""
    access = "access:services!service=spark-scaler"
    app, service, _ = await scaler_hub(
        services=[{"name": "scraper", "api_token": SCRAPER_TOKEN}],
        roles=[{"name": "scaler-reader", "users": [READER], "scopes": [READ_SCOPE, access]},
               {"name": "scaler-operator", "users": [OPERATOR], "scopes": [ADMIN_SCOPE, access]},
               {"name": "scraper", "services": ["scraper"], "scopes": ["read:metrics"]}],
    )
    return app, service, app.proxy.public_url.rstrip("/") + "/services/spark-scaler/"


async def token_of(app, user: str) -> str:
    """A new API token of `user` (created if missing) with all the user's permissions."""
    if user not in [u["name"] for u in await hub_api(app, "GET", "users")]:
        await hub_api(app, "POST", f"users/{user}", {})
    return (await hub_api(app, "POST", f"users/{user}/tokens", {"scopes": ["inherit"]}))["token"]


async def answer(url: str, method: str = "GET", *, token: str | None = None, body: bytes | str = b"",
                 content_type: str = "application/x-www-form-urlencoded", accept: str = "application/json"):
    headers = {"Accept": accept, **({"Authorization": f"token {token}"} if token else {})}
    if method == "POST":
        headers["Content-Type"] = content_type
    return await AsyncHTTPClient().fetch(
        url, method=method, headers=headers, body=body if method == "POST" else None, raise_error=False,
        follow_redirects=False, request_timeout=30,
    )


@pytest.mark.spark
async def test_read_scope_reads_admin_scope_acts_and_every_answer_carries_the_headers(hub):
    app, service, url = hub
    tokens = {name: await token_of(app, name) for name in (READER, OPERATOR, NOBODY)}
    tokens["scraper"] = SCRAPER_TOKEN
    # who may do what: the page, api/pool, metrics, then each POST
    allowed = {READER: {*GETS}, OPERATOR: {*GETS, *POSTS}, NOBODY: set(), "scraper": {"metrics"}}
    for who, token in tokens.items():
        for path in GETS + POSTS:
            method = "POST" if path in POSTS else "GET"
            got = await answer(url + path, method, token=token, body="idle_workers=")
            expected = 200 if path in allowed[who] else 403
            assert got.code == expected, (who, method, path, got.code, got.body[:200])
            if expected == 403:
                error = json.loads(got.body)["error"]
                assert "\n" not in error and ADMIN_SCOPE in error, error
                assert (READ_SCOPE in error) == (method == "GET"), error
    assert not json.loads((await answer(url + "api/pool", token=tokens[READER])).body)["paused"]

    # a reader logged in with the browser: the OAuth token carries the read scope, not more
    reader = Browser(url)
    await reader.login(READER)
    page = await reader.page()
    assert page.status_code == 200 and page.url.rstrip("/") == url.rstrip("/")
    refused = await reader.post("pause", {"_xsrf": xsrf_of(page)})
    assert refused.status_code == 403 and "may not change the Spark scaler" in refused.json()["error"]

    # the headers: the page, the JSON API, metrics, a refusal, a redirect, a 404, the events route
    direct = f"{service['url']}{app._service_map['spark-scaler'].prefix}"
    answers = [await answer(url, token=tokens[READER], accept="text/html"),
               await answer(url + "api/pool", token=tokens[READER]),
               await answer(url + "metrics", token=SCRAPER_TOKEN),
               await answer(url + "api/pause", "POST", token=tokens[READER]),
               await answer(url, accept="text/html"),  # anonymous: to the hub's login
               await answer(direct + "no-such-page", token=tokens[READER]),
               await answer(direct + "events", "POST", token="wrong", body="{}")]
    assert [a.code for a in answers] == [200, 200, 200, 403, 302, 404, 403]
    for got in answers:
        csp = got.headers["Content-Security-Policy"]
        assert csp == "frame-ancestors 'none'", (got.effective_url, got.code, csp)
        assert got.headers["X-Frame-Options"] == "DENY"
        assert got.headers["X-Content-Type-Options"] == "nosniff"


def service_log(request) -> str:
    """What the hub's managed service wrote since the last call: it writes to the pytest
    process's captured stdout and stderr, which it inherited when the hub started it."""
    capture = request.config.pluginmanager.getplugin("capturemanager")
    if not capture.is_globally_capturing():
        pytest.skip("the service's log is read from pytest's capture: run without -s")
    captured = capture.read_global_capture()
    return captured.out + captured.err


@pytest.mark.spark
async def test_bad_bodies_are_a_400_or_413_in_one_line_never_a_500(hub, request):
    """Deep, oversized, non-object and mistyped bodies to the admin API (an admin's token) and to
    the hooks' events route (their secret): refused in one JSON line; the service logs
    no traceback and goes on serving."""
    app, service, url = hub
    operator = await token_of(app, OPERATOR)
    events = f"{service['url']}{app._service_map['spark-scaler'].prefix}events"
    secret = service["environment"][EVENTS_SECRET_ENV]
    as_json = "application/json"
    cases = [  # (url, token, body, content type, status, what the error says)
        (url + "api/idle-target", operator, "[" * 3000, as_json, 400, "nested too deeply"),
        (url + "api/idle-target", operator, '{"":' * 1020, as_json, 400, "nested too deeply"),
        (url + "api/idle-target", operator, '{"idle_workers": ' + "[" * 2000, as_json, 400,
         "nested too deeply"),
        (url + "api/idle-target", operator, "[1, 2]", as_json, 400, "must be a JSON object"),
        (url + "api/idle-target", operator, '"2"', as_json, 400, "must be a JSON object"),
        (url + "api/idle-target", operator, '{"idle_workers": 1.5}', as_json, 400, "idle_workers must be"),
        (url + "api/idle-target", operator, '{"idle_workers": [1]}', as_json, 400, "idle_workers must be"),
        (url + "api/idle-target", operator, '{"idle_workers": false}', as_json, 400, "idle_workers must be"),
        (url + "api/idle-target", operator, "idle_workers=1&x=" + "y" * 5000, None, 413, "body over 4096"),
        (url + "api/pause", operator, "[" * 50_000, as_json, 413, "body over 4096"),
        (events, secret, "[" * 4000, as_json, 400, "nested too deeply"),
        (events, secret, '{"":' * 1020, as_json, 400, "nested too deeply"),
        (events, secret, '["start", "alice", ""]', as_json, 400, "must be a JSON object"),
        (events, secret, '{"action": "start", "user": 7, "server": ""}', as_json, 400,
         "user must"),
        (events, secret, '{"action": ["start"], "user": "a", "server": ""}', as_json, 400,
         "action must"),
        (events, secret, '{"action": "stop", "user": "a", "server": null}', as_json, 400,
         "server must"),
        (events, secret, "[" * 100_000, as_json, 413, "body over 4096"),
    ]
    service_log(request)  # what came before
    for target, token, body, content_type, status, says in cases:
        got = await answer(target, "POST", token=token, body=body,
                           content_type=content_type or "application/x-www-form-urlencoded")
        assert got.code == status, (target, body[:40], got.code, got.body[:200])
        assert got.headers["Content-Type"].startswith("application/json"), got.headers
        error = json.loads(got.body)["error"]
        assert says in error and "\n" not in error, (body[:40], error)

    # past the server's limit (64 KiB) tornado refuses before any handler: a plain 400, no 500
    # (straight to the service: the hub's proxy turns a refused upload into its own 503)
    direct = events.replace("events", "api/idle-target")
    for target, token in ((direct, operator), (events, secret)):
        got = await answer(target, "POST", token=token, body="[" * 100_000, content_type=as_json)
        assert got.code in (400, 413), (target, got.code)
    pool = await answer(url + "api/pool", token=operator)
    assert pool.code == 200 and json.loads(pool.body)["target"]["idle_override"] is None
    log = service_log(request)
    assert "body is JSON nested too deeply" in log, "the service's log is read"
    assert "Traceback" not in log and "RecursionError" not in log and " 500 " not in log, log[-3000:]
