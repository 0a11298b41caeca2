"""Hub integration: the events endpoint, `configure()`, and a real hub running both.

The last test starts pytest-jupyterhub's MockHub (the real JupyterHub application
with mock authentication and mock single-user servers, which are real processes)
with a stand-in service (tests/standin_service.py) in place of the scaler.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from jupyterhub.utils import maybe_future, random_port
from tornado.httpclient import AsyncHTTPClient
from tornado.httpserver import HTTPServer
from tornado.testing import bind_unused_port
from tornado.web import Application, RequestHandler
from traitlets.config import Config

from jhub_spark_scaler.app import SparkScalerApp
from jhub_spark_scaler.events import MAX_BODY, make_events_route
from jhub_spark_scaler.constants import ADMIN_SCOPE, EVENTS_SECRET_ENV, READ_SCOPE
from jhub_spark_scaler.hub import configure

from .real_hub import ADMIN_TOKEN, hub_api, hub_config
from .waiting import until

HERE = Path(__file__).resolve().parent
PREFIX = "/services/spark-scaler/"
TOKEN = "a" * 64
GOOD = json.dumps({"action": "start", "user": "alice", "server": ""})


def fake_spawner(user: str = "alice", server: str = "") -> SimpleNamespace:
    """What the hooks read from a Spawner: user name, server name, the hub's base_url."""
    return SimpleNamespace(name=server, user=SimpleNamespace(name=user, settings={"base_url": "/"}))


@pytest.fixture
async def serve_events():
    """Serve make_events_route with a token on a bound socket (real tornado, 127.0.0.1);
    returns the list the events are appended to."""
    servers = []

    def serve(token: str, sock) -> list:
        received = []
        route = make_events_route(PREFIX, token=token, on_event=lambda *event: received.append(event))
        server = HTTPServer(Application([route]))
        server.add_sockets([sock])
        servers.append(server)
        return received

    yield serve
    for server in servers:
        server.stop()
        await server.close_all_connections()


@pytest.fixture
async def events(serve_events):
    """An events endpoint expecting TOKEN: (url, received). Async, so that the server
    listens on the loop the tests run in, whatever the thread's current loop is."""
    sock, port = bind_unused_port()
    return f"http://127.0.0.1:{port}{PREFIX}events", serve_events(TOKEN, sock)


async def send(url: str, body=GOOD, *, auth: str | None = f"token {TOKEN}", method="POST", **kwargs):
    headers = {} if auth is None else {"Authorization": auth}
    return await AsyncHTTPClient().fetch(
        url, method=method, headers=headers, body=body, raise_error=False, **kwargs
    )


def error_of(response) -> str:
    assert b"\n" not in response.body.strip()
    return json.loads(response.body)["error"]


# --- the service's events endpoint ---


async def test_good_event_is_accepted_and_handed_over(events):
    url, received = events
    response = await send(url)
    assert response.code == 202
    assert received == [("start", "alice", "")]


@pytest.mark.parametrize("auth", [None, "token", "token ", "Bearer " + TOKEN, TOKEN])
async def test_missing_or_malformed_authorization_is_401(events, auth):
    url, received = events
    response = await send(url, auth=auth)
    assert response.code == 401, response.body
    assert response.headers["WWW-Authenticate"] == "token"
    assert "Authorization" in error_of(response)
    assert received == []


async def test_wrong_token_is_403(events):
    url, received = events
    response = await send(url, auth="token " + "b" * 64)
    assert response.code == 403
    assert received == []


async def test_oversized_body_is_refused(events):
    url, received = events
    padded = json.dumps({"action": "start", "user": "alice", "server": "", "pad": "x" * MAX_BODY})
    assert (await send(url, padded)).code == 413

    async def chunked(write):  # no Content-Length: tornado stops reading at MAX_BODY
        for _ in range(4):
            await write(b"x" * 2000)

    response = await send(url, None, body_producer=chunked)
    assert response.code in (400, 413)
    assert received == []


NAMES = "user must be a non-empty string of at most 255 characters"


@pytest.mark.parametrize("body, error", [
    ("{not json", "body is not JSON"),
    (b"\xff\xfe", "body is not JSON"),
    ('["start", "alice", ""]', "body must be a JSON object"),
    ('{"action": "explode", "user": "alice", "server": ""}', "action must be 'start' or 'stop'"),
    ('{"action": ["start"], "user": "alice", "server": ""}', "action must be 'start' or 'stop'"),
    ('{"action": "stop", "user": "", "server": ""}', NAMES),
    ('{"action": "stop", "user": 7, "server": ""}', NAMES),
    (json.dumps({"action": "stop", "user": "u" * 256, "server": ""}), NAMES),
    ('{"action": "stop", "user": "alice"}', "server must be a string"),
    ('{"action": "stop", "user": "alice", "server": null}', "server must be a string"),
])
async def test_malformed_event_is_400_with_one_line_error(events, body, error):
    url, received = events
    response = await send(url, body)
    assert response.code == 400
    assert error_of(response).startswith(error)
    assert received == []


async def test_only_post_is_allowed(events):
    url, _ = events
    assert (await send(url, None, method="GET")).code == 405
    assert (await send(url, GOOD, method="PUT")).code == 405


def test_an_empty_events_secret_is_refused():
    with pytest.raises(ValueError, match="JUPYTERHUB_API_TOKEN"):
        make_events_route("/services/spark-scaler/", token="", on_event=print)


# --- configure() ---


def config_with_admin_hooks(ran: list) -> Config:
    """A config where the admin already set a service, a custom scope and both hooks."""
    c = Config()
    c.JupyterHub.services = [{"name": "test-admin", "api_token": ADMIN_TOKEN}]
    c.JupyterHub.custom_scopes = {"custom:other:thing": {"description": "theirs"}}

    def their_pre(spawner):
        ran.append(("pre", spawner.user.name))
        return "pre-result"

    async def their_post(spawner):
        await asyncio.sleep(0)
        ran.append(("post", spawner.user.name))
        return "post-result"

    c.Spawner.pre_spawn_hook = their_pre
    c.Spawner.post_stop_hook = their_post
    return c


async def test_configure_keeps_the_admins_hooks_and_notifies(serve_events):
    ran = []
    c = config_with_admin_hooks(ran)
    sock, port = bind_unused_port()
    service = configure(c, port=port, max_workers=2)
    received = serve_events(service["environment"][EVENTS_SECRET_ENV], sock)

    spawner = fake_spawner("bob")
    assert await maybe_future(c.Spawner.pre_spawn_hook(spawner)) == "pre-result"
    # fire-and-forget POSTs sent at the same moment may arrive in either order (a spawn
    # and its stop are seconds apart in a hub, and the poll is the truth anyway)
    await until(lambda: len(received) == 1, timeout=5, what="the start event at the service")
    assert await maybe_future(c.Spawner.post_stop_hook(spawner)) == "post-result"
    assert ran == [("pre", "bob"), ("post", "bob")]
    await until(lambda: len(received) == 2, timeout=5, what="both events at the service")
    assert received == [("start", "bob", ""), ("stop", "bob", "")]


def test_configure_writes_exactly_the_service_role_and_scope():
    c = config_with_admin_hooks([])
    service = configure(c, max_workers=3, idle_workers=2, scale_down_delay=10.5,
                        LocalBackend__state_dir="/srv/spark")
    token, secret = service["api_token"], service["environment"][EVENTS_SECRET_ENV]
    assert len(bytes.fromhex(token)) == 32 and len(bytes.fromhex(secret)) == 32 and secret != token
    assert service == {
        "name": "spark-scaler",
        "url": "http://127.0.0.1:10101",
        "command": [sys.executable, "-m", "jhub_spark_scaler", "--max-workers=3", "--standby",
                    "--SparkScalerApp.idle_workers=2", "--SparkScalerApp.scale_down_delay=10.5",
                    "--LocalBackend.state_dir=/srv/spark"],
        "display": True,
        "oauth_no_confirm": True,
        "oauth_client_allowed_scopes": [ADMIN_SCOPE, READ_SCOPE],
        "api_token": token,
        # the hooks' secret, not the API token (test_a_listener_in_the_services_place_gets_no_api_token)
        "environment": {EVENTS_SECRET_ENV: secret},
    }
    assert c.JupyterHub.services == [{"name": "test-admin", "api_token": ADMIN_TOKEN}, service]
    assert c.JupyterHub.load_roles == [
        {"name": "spark-scaler-service", "services": ["spark-scaler"],
         "scopes": ["list:users", "read:servers"]},
    ]
    assert set(c.JupyterHub.custom_scopes) == {"custom:other:thing", ADMIN_SCOPE, READ_SCOPE}
    assert c.JupyterHub.custom_scopes[ADMIN_SCOPE]["description"]
    assert c.JupyterHub.custom_scopes[ADMIN_SCOPE]["subscopes"] == [READ_SCOPE]  # acting implies reading

    app = SparkScalerApp()
    app.parse_command_line(service["command"][3:])  # the scaler understands its command line
    assert (app.max_workers, app.idle_workers, app.scale_down_delay) == (3, 2, 10.5)
    assert app.config.LocalBackend.state_dir == "/srv/spark"


def test_configure_on_an_empty_config_and_without_the_admin_scope():
    c = Config()
    c.JupyterHub.load_roles.append({"name": "theirs", "scopes": ["self"]})  # a LazyConfigValue
    service = configure(c, name="scaler-2", port=10102, max_workers=1, admin_scope=False)
    assert c.JupyterHub.services == [service]
    assert [role["name"] for role in c.JupyterHub.load_roles] == ["theirs", "scaler-2-service"]
    assert "custom_scopes" not in c.JupyterHub
    assert c.Spawner.pre_spawn_hook.then is None and c.Spawner.post_stop_hook.then is None


def test_configure_twice_with_the_same_name_is_an_error():
    c = Config()
    configure(c, max_workers=2)
    with pytest.raises(ValueError, match="already has a service named 'spark-scaler'"):
        configure(c, max_workers=2)


async def test_a_listener_in_the_services_place_gets_no_api_token():
    """While the service is down, anyone on the machine may listen on its port and take
    the hooks' posts. What they carry is the events secret, which can only send spawn
    events (and the service polls the hub for the truth), never the service's API token."""
    c = Config()
    sock, port = bind_unused_port()
    service = configure(c, port=port, max_workers=2)
    seen = []

    class Impostor(RequestHandler):
        def post(self, *args) -> None:
            seen.append(self.request.headers.get("Authorization", ""))

    server = HTTPServer(Application([(r".*", Impostor)]))
    server.add_sockets([sock])
    try:
        await maybe_future(c.Spawner.pre_spawn_hook(fake_spawner("mallory")))
        await until(lambda: seen, timeout=5, what="the hook's post at the impostor")
    finally:
        server.stop()
    assert service["api_token"] not in seen[0]
    assert seen[0] == f"token {service['environment'][EVENTS_SECRET_ENV]}"


async def test_hook_costs_well_under_a_millisecond(serve_events):
    c = Config()
    sock, port = bind_unused_port()
    received = serve_events(configure(c, port=port, max_workers=2)["environment"][EVENTS_SECRET_ENV], sock)
    hook = c.Spawner.pre_spawn_hook
    spawner = fake_spawner()
    costs = []
    for _ in range(200):
        began = time.perf_counter()
        hook(spawner)
        costs.append(time.perf_counter() - began)
    median = statistics.median(costs)
    assert median < 1e-3, f"median hook cost {median * 1e6:.0f} µs"
    await asyncio.gather(*hook.notifier.pending)
    assert len(received) == 200


async def test_an_undeliverable_event_is_one_warning_and_never_reaches_the_spawn(caplog):
    c = Config()
    configure(c, port=random_port(), max_workers=2)  # nothing listens there
    hook = c.Spawner.pre_spawn_hook
    with caplog.at_level("WARNING", logger="tornado.application"):
        assert hook(fake_spawner()) is None
        await asyncio.gather(*hook.notifier.pending)
    [record] = [r for r in caplog.records if "not delivered" in r.getMessage()]
    assert "start event for alice/ not delivered" in record.getMessage()
    assert "\n" not in record.getMessage()
    assert not hook.notifier.pending


# --- a real hub ---


@pytest.fixture
def started_processes():
    """Processes (Popen) the hub test saw its hub start: after the hub fixture's own
    cleanup, each must exit within seconds; one that does not is killed, and the test fails."""
    processes: dict[str, subprocess.Popen] = {}
    yield processes
    left = {}
    for what, process in processes.items():
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            left[what] = process.pid
            process.kill()
            process.wait()
    assert not left, f"left running after the hub stopped: {left}"


async def server_state(app, user: str) -> dict | None:
    """The user's default server as the hub's API shows it; None when there is none."""
    return (await hub_api(app, "GET", f"users/{user}"))["servers"].get("")


# started_processes before hub_app: its check runs after the hub fixture has stopped everything
async def test_a_real_hub_runs_the_hooks_and_the_service_gets_events(started_processes, hub_app, tmp_path):
    ran = []
    c = config_with_admin_hooks(ran)
    c.merge(hub_config(tmp_path))
    c.JupyterHub.load_roles = [
        {"name": "test-admin", "services": ["test-admin"], "scopes": ["admin:servers"]},
    ]
    service = configure(c, port=random_port(), max_workers=2)
    received = tmp_path / "events.jsonl"
    service["command"] = [sys.executable, str(HERE / "standin_service.py"), str(received)]

    app = await hub_app(c)
    started_processes["proxy"] = app.proxy.proxy_process
    started_processes["service"] = app._service_map["spark-scaler"].proc
    hook = c.Spawner.pre_spawn_hook
    assert app.users["user"].spawner.pre_spawn_hook is hook  # shared, not deep-copied per Spawner
    events_url = hook.notifier.events_url(app.base_url)  # MockHub's base_url is not "/"
    assert events_url == service["url"] + app._service_map["spark-scaler"].prefix + "events"

    async def service_up():
        return (await send(events_url, None, method="GET")).code == 405

    await until(service_up, timeout=20, what="the stand-in service")

    await hub_api(app, "POST", "users/user/server")
    started_processes["server"] = app.users["user"].spawner.proc

    async def ready():
        return ((await server_state(app, "user")) or {}).get("ready")

    async def gone():
        return await server_state(app, "user") is None

    await until(ready, timeout=20, what="user's server to be ready")
    await hub_api(app, "DELETE", "users/user/server")
    await until(gone, timeout=20, what="user's server to stop")

    def lines():
        return [json.loads(line) for line in received.read_text().splitlines()] if received.exists() else []

    await until(lambda: len(lines()) >= 2, timeout=10, what="two events at the stand-in")
    assert lines() == [["start", "user", ""], ["stop", "user", ""]]
    assert ran == [("pre", "user"), ("post", "user")]
