"""Tests of `activity`: the pure state functions, then `HubActivity` against a real
in-process JupyterHub (pytest-jupyterhub's MockHub, real single-user processes)
and against a tiny tornado stand-in for failure cases."""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import re
import secrets
import time
from pathlib import Path
from types import MappingProxyType

import pytest
from tornado.httpclient import AsyncHTTPClient
from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets
from tornado.web import Application, RequestHandler

from jhub_spark_scaler import activity as act
from jhub_spark_scaler.activity import Event, HubActivity, HubError, Server, apply_event, merge_poll
from jhub_spark_scaler.activity import parse_users_page, prewarm_credit, warm_servers
from jhub_spark_scaler.model import AppStart

from .waiting import until

PROXY = Path(__file__).resolve().parents[1] / ".cache/node/node_modules/.bin/configurable-http-proxy"
LOG = logging.getLogger("test-activity")


def server(user: str, name: str = "", started: float | None = 1000.0) -> Server:
    return Server(user=user, name=name, started=started, pending=None, ready=True)


def state(*servers: Server):
    return MappingProxyType({s.key: s for s in servers})


# -- prewarm_credit -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("started", "credit"),
    [
        (1000.0 - 600.0, 1),  # exactly `window` ago: still counts
        (1000.0 - 600.001, 0),  # just outside the window
        (1000.0, 1),  # just now
        (1005.0, 1),  # the hub's clock a little ahead of ours
        (None, 0),  # no `started`: nothing
    ],
)
def test_prewarm_credit_window_edges(started, credit):
    assert prewarm_credit([server("a", started=started)], now=1000.0, window=600.0, per_server=1) == credit


def test_prewarm_credit_per_server_multiples():
    servers = [server("a", started=990.0), server("a", "spark", started=900.0), server("b", started=10.0)]
    assert prewarm_credit(servers, now=1000.0, window=600.0, per_server=3) == 6
    assert prewarm_credit(servers, now=1000.0, window=600.0, per_server=0) == 0
    assert prewarm_credit([], now=1000.0, window=600.0, per_server=2) == 0


def apps(*starts: float, user: str = "root") -> list[AppStart]:
    """App starts under one user: by default the OS user no hub user is named after."""
    return [AppStart(at, user) for at in starts]


def test_each_app_of_no_hub_user_uses_up_the_oldest_credit_before_it():
    servers = [server("a", started=900.0), server("b", started=950.0), server("c", started=990.0)]
    credit = functools.partial(prewarm_credit, servers, now=1000.0, window=600.0, per_server=2)
    assert credit(app_starts=[]) == 6
    assert credit(app_starts=apps(10.0, 899.0)) == 6, "apps that started before every server use up nothing"
    assert credit(app_starts=apps(960.0)) == 4, "one app after a and b: a's credit is used up"
    assert credit(app_starts=apps(991.0, 905.0)) == 2, "in start order: 905 takes a, 991 takes b"
    assert credit(app_starts=apps(905.0, 906.0)) == 4, "906 is before b started: only a is used up"
    assert credit(app_starts=apps(995.0, 996.0, 997.0, 998.0)) == 0
    assert credit(app_starts=apps(960.0, user="")) == 4, "an app with no user: as any other"
    left = warm_servers(servers, now=1000.0, window=600.0, app_starts=apps(960.0))
    assert [s.user for s in left] == ["b", "c"]


def test_an_app_named_after_a_hub_user_uses_up_that_users_credit():
    servers = [server("a", started=900.0), server("b", started=950.0), server("b", "spark", started=960.0),
               server("c", started=990.0)]

    def warm(*starts: AppStart) -> list[tuple[str, str]]:
        return [(s.user, s.name) for s in warm_servers(servers, now=1000.0, window=600.0, app_starts=starts)]

    everyone = [("a", ""), ("b", ""), ("b", "spark"), ("c", "")]
    assert warm(AppStart(995.0, "c")) == everyone[:3], "c's app: c's credit, not a's older one"
    assert warm(AppStart(970.0, "b"), AppStart(971.0, "b")) == [("a", ""), ("c", "")], "b's oldest first"
    assert warm(AppStart(970.0, "b"), AppStart(971.0, "b"), AppStart(972.0, "b")) == [("a", ""), ("c", "")], \
        "a third app of b's takes no one else's credit"
    assert warm(AppStart(980.0, "c")) == everyone, "c's app before c's server started: nothing"
    assert warm(AppStart(955.0, "b")) == [("a", ""), ("b", "spark"), ("c", "")], \
        "only b's default server had started by then"


def test_a_hub_user_without_a_warm_server_uses_up_nothing():
    servers = [server("old", started=100.0), server("a", started=900.0)]
    assert [s.user for s in warm_servers(servers, now=1000.0, window=600.0,
                                         app_starts=[AppStart(950.0, "old")])] == ["a"], \
        "old's server is past the window: old is a hub user, so a's credit stays a's"


def test_apps_of_no_hub_user_and_of_a_hub_user_share_out_in_start_order():
    servers = [server("a", started=900.0), server("b", started=950.0)]
    starts = [AppStart(960.0, "root"), AppStart(970.0, "a")]
    assert [s.user for s in warm_servers(servers, now=1000.0, window=600.0, app_starts=starts)] == ["b"], \
        "root's app takes a's (the oldest), a's own app then finds none left and takes nothing"
    starts = [AppStart(955.0, "a"), AppStart(960.0, "root")]
    assert [s.user for s in warm_servers(servers, now=1000.0, window=600.0, app_starts=starts)] == [], \
        "a's app first takes a's; root's then takes the oldest left, b's"


def test_crediting_thousands_of_servers_and_apps_is_fast():
    servers = [server(f"u{i}", started=500.0 + i * 0.1) for i in range(3000)]
    starts = [AppStart(600.0 + i * 0.1, f"u{i}" if i % 2 else "root") for i in range(3000)]
    began = time.perf_counter()
    left = warm_servers(servers, now=1000.0, window=600.0, app_starts=starts)
    assert time.perf_counter() - began < 0.5
    assert not left, "each app, in start order, finds its own or the oldest server started before it"


# -- apply_event / merge_poll ---------------------------------------------------------


def test_apply_event_start_stop_idempotent():
    empty = state()
    started = apply_event(empty, "start", "a", "", 50.0)
    assert started == {("a", ""): Server("a", "", 50.0, "spawn", False)}
    assert empty == {}  # the input is not changed
    assert apply_event(started, "start", "a", "", 99.0) == started  # keeps the first `started`
    known = state(server("a", started=10.0))
    assert apply_event(known, "start", "a", "", 99.0) == known
    assert apply_event(started, "stop", "a", "", 60.0) == {}
    assert apply_event(empty, "stop", "a", "", 60.0) == {}
    named = apply_event(started, "start", "a", "spark", 55.0)
    assert set(named) == {("a", ""), ("a", "spark")}
    assert apply_event(named, "stop", "a", "spark", 60.0) == started
    with pytest.raises(ValueError, match="unknown hub event action 'restart'"):
        apply_event(empty, "restart", "a", "", 1.0)


def test_merge_poll_start_during_poll_is_kept():
    polled = {("a", ""): server("a")}
    merged = merge_poll(polled, [Event("start", "b", "", 1010.0)])
    assert merged == {("a", ""): server("a"), ("b", ""): Server("b", "", 1010.0, "spawn", False)}


def test_merge_poll_start_during_poll_keeps_the_hubs_started():
    polled = {("a", ""): server("a", started=1000.0)}
    assert merge_poll(polled, [Event("start", "a", "", 1010.0)]) == polled


def test_merge_poll_stop_during_poll_wins():
    polled = {("a", ""): server("a"), ("b", ""): server("b")}
    assert merge_poll(polled, [Event("stop", "a", "", 1010.0)]) == {("b", ""): server("b")}


def test_merge_poll_events_apply_in_order():
    events = [Event("stop", "a", "", 1010.0), Event("start", "a", "", 1011.0)]
    restarted = Server("a", "", 1011.0, "spawn", False)
    assert merge_poll({("a", ""): server("a")}, events) == {("a", ""): restarted}


def test_merge_poll_drops_servers_that_stopped_without_an_event():
    # a crash sends no event: the state before the poll does not matter, the poll is the truth
    assert merge_poll({("b", ""): server("b")}, []) == {("b", ""): server("b")}
    assert merge_poll({}, []) == {}


# -- parsing the users API ------------------------------------------------------------


def user_doc(name: str, servers: dict) -> dict:
    return {"kind": "user", "name": name, "servers": servers}


def test_parse_users_page():
    doc = {
        "items": [
            user_doc("a", {"": {"started": "2025-01-02T03:04:05.250000Z", "pending": "spawn",
                                "ready": False}}),
            user_doc("b", {"spark": {"started": None, "pending": None, "ready": True}}),
        ],
        "_pagination": {"offset": 0, "limit": 2, "total": 3, "next": {"offset": 2, "limit": 2, "url": "x"}},
    }
    servers, next_offset = parse_users_page(doc)
    assert servers == [Server("a", "", 1735787045.25, "spawn", False), Server("b", "spark", None, None, True)]
    assert next_offset == 2
    doc["_pagination"]["next"] = None
    assert parse_users_page(doc)[1] is None


@pytest.mark.parametrize(
    ("doc", "error"),
    [
        ([], "expected an object with an 'items' list"),
        ({"items": [{"servers": {}}]}, "not a user object with a 'name'"),
        ({"items": [{"name": "a"}]}, "user 'a' came without 'servers': .* read:servers scope"),
        ({"items": [user_doc("a", [])]}, "'servers' is list, expected object"),
        ({"items": [user_doc("a", {"": "x"})]}, "server a/: expected a name and a JSON object"),
        ({"items": [user_doc("a", {"": {"started": 5}})]}, "'started' is int"),
        ({"items": [user_doc("a", {"": {"started": "yesterday"}})]}, "not an ISO 8601 time: 'yesterday'"),
        ({"items": [user_doc("a", {"": {"ready": "yes"}})]}, "'ready' is str, expected boolean"),
        ({"items": [user_doc("a", {"": {"pending": 1}})]}, "'pending' is int"),
        ({"items": [], "_pagination": {"next": {"url": "x"}}}, "'_pagination.next' has no integer 'offset'"),
    ],
)
def test_parse_users_page_errors_are_one_line(doc, error):
    with pytest.raises(HubError, match=error) as info:
        parse_users_page(doc)
    assert "\n" not in str(info.value)


# -- HubActivity against a stand-in hub ------------------------------------------------


class FakeClock:
    def __init__(self, start: float):
        self.t = start

    def __call__(self) -> float:
        return self.t


class FakeUsers(RequestHandler):
    """`GET /users`: one page of the given users; waits for `gate` when set."""

    def initialize(self, hub: dict):
        self.hub = hub

    async def get(self):
        self.hub["requests"].append(self.request)
        if self.hub.get("gate") is not None:
            await self.hub["gate"].wait()
        self.write(json.dumps({"items": self.hub["items"], "_pagination": {"next": None}}))


class FakeHub:
    """A tornado app answering `/hub/api/users` on 127.0.0.1; can go away and come back."""

    def __init__(self, items: list):
        self.state = {"items": items, "requests": [], "gate": None}
        self.app = Application([(r"/hub/api/users", FakeUsers, {"hub": self.state})])
        self.http: HTTPServer | None = None
        self.port = 0

    def up(self) -> None:
        sockets = bind_sockets(self.port, "127.0.0.1")
        self.port = sockets[0].getsockname()[1]
        self.http = HTTPServer(self.app)
        self.http.add_sockets(sockets)

    async def down(self) -> None:
        self.http.stop()
        await self.http.close_all_connections()

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hub/api"


@pytest.fixture
async def fake_hub():
    hub = FakeHub([user_doc("a", {"": {"started": "2025-01-01T00:00:00Z", "pending": None, "ready": True}})])
    hub.up()
    yield hub
    await hub.down()


@pytest.fixture
def fake_clock(monkeypatch):
    fake = FakeClock(1735689600.0 + 60)  # a minute after server a/ started
    monkeypatch.setattr(act.clock, "now", fake)
    return fake


def activity_for(url: str, **kwargs) -> HubActivity:
    return HubActivity(api_url=url, api_token="secret-token", log=LOG, timeout=2, **kwargs)


async def test_poll_sends_token_and_pagination_header(fake_hub, fake_clock):
    hub = activity_for(fake_hub.api_url + "/", stale_after=300)
    await hub.poll()
    assert hub.healthy and not hub.stale and hub.last_error == ""
    assert hub.servers == (Server("a", "", 1735689600.0, None, True),)
    assert hub.credit(window=600, per_server=2) == 2
    (request,) = fake_hub.state["requests"]
    assert request.headers["Authorization"] == "token secret-token"
    assert request.headers["Accept"] == "application/jupyterhub-pagination+json"
    assert request.path == "/hub/api/users" and request.query_arguments["state"] == [b"active"]


async def test_events_pushed_during_a_slow_poll(fake_hub, fake_clock):
    hub = activity_for(fake_hub.api_url, stale_after=300)
    fake_hub.state["gate"] = asyncio.Event()
    polling = asyncio.ensure_future(hub.poll())
    await until(lambda: fake_hub.state["requests"], timeout=5, what="the poll's request")
    await hub.poll()  # an overlapping poll is skipped, not queued
    assert len(fake_hub.state["requests"]) == 1
    hub.on_event("start", "b", "")  # after the hub answered (its answer lacks b)
    hub.on_event("stop", "a", "")  # the hub's answer still lists a
    fake_hub.state["gate"].set()
    await polling
    assert [s.key for s in hub.servers] == [("b", "")]
    assert hub.servers[0].started == fake_clock.t


async def test_unreachable_hub_keeps_state_then_expires(fake_hub, fake_clock, caplog):
    caplog.set_level(logging.INFO, logger=LOG.name)
    hub = activity_for(fake_hub.api_url, stale_after=300)
    await hub.poll()
    known = hub.servers
    await fake_hub.down()  # the port is closed now

    fake_clock.t += 100
    await hub.poll()  # does not raise
    assert not hub.healthy and not hub.stale and hub.servers == known
    assert hub.last_error.startswith(f"cannot reach the hub API at {fake_hub.api_url}/users?")
    fake_clock.t += 100
    await hub.poll()
    assert hub.servers == known
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and r.name == LOG.name]
    assert len(warnings) == 1 and "keeping the 1 known servers" in warnings[0].getMessage()

    fake_clock.t += 101  # 301 s since the last good poll
    await hub.poll()
    assert hub.stale and hub.servers == () and hub.credit(window=1e9, per_server=1) == 0
    hub.on_event("start", "c", "")  # pushed events still count while stale
    assert [s.key for s in hub.servers] == [("c", "")]
    fake_clock.t += 10
    await hub.poll()
    assert [s.key for s in hub.servers] == [("c", "")]  # expired once, not at every failure

    fake_hub.up()  # back, on the same port
    caplog.clear()
    await hub.poll()
    assert hub.healthy and not hub.stale and hub.last_error == ""
    assert [s.key for s in hub.servers] == [("a", "")]  # the poll is the truth
    ours = [r for r in caplog.records if r.name == LOG.name]  # not the access log of a hub of another test
    assert [r.levelname for r in ours] == ["INFO"]
    assert "readable again" in ours[0].getMessage()


async def test_never_reachable_hub(fake_clock):
    sock = bind_sockets(0, "127.0.0.1")[0]
    port = sock.getsockname()[1]
    sock.close()
    hub = activity_for(f"http://127.0.0.1:{port}/hub/api", stale_after=30)
    hub.on_event("start", "a", "")
    await hub.poll()
    assert not hub.healthy and [s.key for s in hub.servers] == [("a", "")]
    fake_clock.t += 31
    await hub.poll()
    assert hub.stale and hub.servers == ()


@pytest.mark.parametrize(
    ("status", "body", "error"),
    [
        (403, "{}", "answered HTTP 403: check hub_api_token .* list:users and read:servers"),
        (500, "{}", "answered HTTP 500"),
        (200, "<html>", "did not answer JSON \\(starts '<html>'\\)"),
        (200, "[1]", "expected an object with an 'items' list"),
    ],
)
async def test_hub_errors_are_one_line(status, body, error, fake_clock):
    class Answer(RequestHandler):
        def get(self):
            self.set_status(status)
            self.finish(body)

    sockets = bind_sockets(0, "127.0.0.1")
    http = HTTPServer(Application([(r"/api/users", Answer)]))
    http.add_sockets(sockets)
    try:
        hub = activity_for(f"http://127.0.0.1:{sockets[0].getsockname()[1]}/api", stale_after=30)
        await hub.poll()
    finally:
        http.stop()
        await http.close_all_connections()
    assert not hub.healthy
    assert "\n" not in hub.last_error
    assert re.search(error, hub.last_error), hub.last_error


# -- HubActivity against a real hub ---------------------------------------------------

READER_TOKEN = secrets.token_hex(16)
ADMIN_TOKEN = secrets.token_hex(16)


@pytest.fixture
async def real_hub(hub_app, tmp_path):
    """A MockHub (real proxy, real single-user processes), pages of 2 users, named servers.

    Service `activity-test` has exactly list:users + read:servers; `activity-admin`
    creates users and starts and stops servers through the REST API.
    """
    if not PROXY.exists():
        pytest.fail(f"configurable-http-proxy not found at {PROXY}: run scripts/install-proxy.sh")
    return await hub_app({
        "JupyterHub": {
            "allow_named_servers": True,
            "cookie_secret_file": str(tmp_path / "cookie_secret"),  # not ./jupyterhub_cookie_secret
            "api_page_default_limit": 2,
            "api_page_max_limit": 2,
            "services": [
                {"name": "activity-test", "api_token": READER_TOKEN},
                {"name": "activity-admin", "api_token": ADMIN_TOKEN},
            ],
            "load_roles": [
                {"name": "activity-test", "scopes": ["list:users", "read:servers"],
                 "services": ["activity-test"]},
                {"name": "activity-admin", "scopes": ["admin:users", "admin:servers"],
                 "services": ["activity-admin"]},
            ],
        },
        "ConfigurableHTTPProxy": {"command": [str(PROXY)]},
        # the mock spawner's home directories, /tmp/<user> by default
        "SimpleLocalProcessSpawner": {"home_dir_template": str(tmp_path / "{username}")},
    })


async def admin(app, method: str, path: str, body: dict | None = None) -> int:
    """A hub REST API call as `activity-admin`; returns the HTTP status."""
    response = await AsyncHTTPClient().fetch(
        app.hub.api_url + path,
        method=method,
        headers={"Authorization": f"token {ADMIN_TOKEN}"},
        body=json.dumps(body or {}) if method == "POST" else None,
        allow_nonstandard_methods=True,
        request_timeout=30,
    )
    return response.code


async def test_real_hub_start_paginate_stop(real_hub, monkeypatch):
    app = real_hub
    users = [f"u{i}" for i in range(5)]
    assert await admin(app, "POST", "/users", {"usernames": users}) == 201
    before = time.time()
    starts = [f"/users/{u}/server" for u in users[:4]] + ["/users/u1/servers/spark"]
    assert set(await asyncio.gather(*(admin(app, "POST", path) for path in starts))) <= {201, 202}

    hub = HubActivity(api_url=app.hub.api_url, api_token=READER_TOKEN, log=LOG, stale_after=300)
    pages = []
    fetch = hub._get_json

    async def recording(url):
        pages.append(url)
        return await fetch(url)

    monkeypatch.setattr(hub, "_get_json", recording)
    await hub.poll()
    assert hub.healthy, hub.last_error
    # 4 active users, 2 a page: every server is found across the pages
    assert [url.split("offset=")[1].split("&")[0] for url in pages] == ["0", "2"]
    assert [s.key for s in hub.servers] == [("u0", ""), ("u1", ""), ("u1", "spark"), ("u2", ""), ("u3", "")]
    assert all(before - 1 <= s.started <= time.time() + 1 for s in hub.servers)
    assert hub.credit(window=600, per_server=2) == 10

    assert await admin(app, "DELETE", "/users/u1/servers/spark") in (202, 204)
    assert await admin(app, "DELETE", "/users/u2/server") in (202, 204)

    async def stopped():
        await hub.poll()
        return [s.key for s in hub.servers] == [("u0", ""), ("u1", ""), ("u3", "")]

    # bounded by JupyterHub's own escalation (SIGINT, SIGTERM, SIGKILL: 10 + 5 + 5 s)
    await until(stopped, timeout=30, what="the stopped servers to leave the hub's answer")
    assert hub.healthy
