"""The scaler as a managed service of a real JupyterHub (pytest-jupyterhub's MockHub:
the real hub application with mock authentication and mock single-user servers,
which are real processes), on the session's real Spark master.

The hub's poll interval is set to a minute in these tests, so that only the pushed
hook events can explain a reaction within seconds.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import time
from pathlib import Path

import pytest
from tornado.httpclient import AsyncHTTPClient, HTTPClientError
from traitlets.config import Config

from jhub_spark_scaler.hub import configure
from jhub_spark_scaler.spark import SparkClient

from .conftest import until

pytestmark = pytest.mark.spark

ROOT = Path(__file__).resolve().parent.parent
PROXY = ROOT / ".cache" / "node" / "node_modules" / ".bin" / "configurable-http-proxy"
ADMIN_TOKEN = "test-admin-" + "0" * 32


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def worker_records(state: Path) -> dict[str, dict]:
    records = {}
    for path in state.glob("workers/*.json"):
        try:
            records[path.stem] = json.loads(path.read_text())
        except ValueError:
            continue
    return records


@pytest.fixture
async def hub(hub_app, spark_master, tmp_path):
    """A hub with the real scaler as its managed service; yields (app, service, state dir)."""
    state = tmp_path / "scaler"
    c = hub_config(tmp_path)
    c.JupyterHub.services = [{"name": "test-admin", "api_token": ADMIN_TOKEN}]
    c.JupyterHub.load_roles = [{"name": "test-admin", "services": ["test-admin"],
                                "scopes": ["admin:users", "admin:servers"]}]
    service = configure_scaler(c, spark_master, state)
    app = await hub_app(c)
    await until(lambda: (state / "workers").is_dir(), timeout=60, what="the scaler service to start")
    try:
        yield app, service, state
    finally:
        await stop_scaler(app, state)


def hub_config(tmp_path: Path) -> Config:
    """A MockHub config that keeps every file in tmp_path and notices a crashed
    server or service within a second."""
    if not PROXY.exists():
        pytest.fail(f"{PROXY} is missing: run scripts/install-proxy.sh")
    c = Config()
    c.ConfigurableHTTPProxy.command = [str(PROXY)]
    c.ConfigurableHTTPProxy.pid_file = str(tmp_path / "proxy.pid")
    c.JupyterHub.cookie_secret_file = str(tmp_path / "cookie_secret")
    c.SimpleLocalProcessSpawner.home_dir_template = str(tmp_path / "home" / "{username}")
    c.Spawner.poll_interval = 1
    return c


def configure_scaler(c: Config, spark_master, state: Path) -> dict:
    """The real scaler as the hub's managed service, on the session's master: fast
    cycles, the hub polled only every minute (so reactions within seconds are the hooks')."""
    return configure(
        c, max_workers=3, port=free_port(), idle_workers=0, scale_down_delay=1, poll_interval=0.5,
        hub_poll_interval=60,
        LocalBackend__start_master=False,
        LocalBackend__master_url=spark_master.master_url,
        LocalBackend__master_ui_url=spark_master.master_ui_url,
        LocalBackend__state_dir=str(state),
        LocalBackend__stop_timeout=5,
    )


async def stop_scaler(app, state: Path) -> None:
    """As at hub shutdown: the hub interrupts its managed service, which stops its
    workers; any the service left behind are killed."""
    await app._service_map["spark-scaler"].stop()
    for record in worker_records(state).values():
        try:
            os.kill(record["pid"], signal.SIGKILL)
        except ProcessLookupError:
            pass


async def hub_api(app, method: str, path: str, body=None):
    client = AsyncHTTPClient()
    response = await client.fetch(
        f"{app.hub.url}api/{path}", method=method, headers={"Authorization": f"token {ADMIN_TOKEN}"},
        body=None if body is None else json.dumps(body), allow_nonstandard_methods=True,
    )
    return json.loads(response.body) if response.body else None


async def start_server(app, user: str) -> float:
    await hub_api(app, "POST", f"users/{user}", {})
    started = time.monotonic()
    await hub_api(app, "POST", f"users/{user}/server", {})
    return started


async def alive_workers(spark_master, state: Path) -> set[str]:
    hosts = {r["host"] for r in worker_records(state).values()}
    master = await SparkClient(spark_master.master_ui_url).master()
    return {m.host for m in master.workers if m.host in hosts and m.state == "ALIVE"}


async def test_server_start_prewarms_a_worker_and_stop_ends_it(hub, spark_master):
    app, _, state = hub
    assert not worker_records(state)
    began = await start_server(app, "alice")
    await until(lambda: worker_records(state), timeout=10, what="a pre-warm worker to be started")
    reaction = time.monotonic() - began
    assert reaction < 5, f"the hook, not the minute-long poll, started it ({reaction:.1f} s)"
    await until(lambda: alive_workers(spark_master, state), timeout=60, what="the worker ALIVE")

    await hub_api(app, "DELETE", "users/alice/server")
    await until(lambda: not worker_records(state), timeout=60, what="the pool to shrink after the stop")


async def test_crashed_server_ends_its_credit(hub, spark_master):
    app, _, state = hub
    await start_server(app, "bob")
    await until(lambda: alive_workers(spark_master, state), timeout=60, what="bob's pre-warm worker")
    spawner = app.users["bob"].spawner
    await until(lambda: spawner.pid, timeout=30, what="bob's server process")
    os.kill(spawner.pid, signal.SIGKILL)
    await until(lambda: not worker_records(state), timeout=60,
                what="the crash (post_stop_hook) to end the credit and the pool to shrink")


async def test_killed_service_restarts_and_keeps_the_pool(hub, spark_master):
    app, _, state = hub
    await start_server(app, "carol")
    await until(lambda: alive_workers(spark_master, state), timeout=60, what="carol's pre-warm worker")
    before = {h: r["pid"] for h, r in worker_records(state).items()}
    service = app._service_map["spark-scaler"]
    old_pid = service.proc.pid
    os.kill(old_pid, signal.SIGKILL)
    await until(lambda: service.proc and service.proc.pid != old_pid and service.proc.returncode is None,
                timeout=60, what="the hub to restart the service")
    # The new process rebuilt carol's server from its first poll: for several of its
    # cycles it neither retires the worker nor starts another.
    # (An absence can only be watched for a while: 5 s is 10 of its cycles.)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        assert {h: r["pid"] for h, r in worker_records(state).items()} == before
        await asyncio.sleep(0.2)
    assert await alive_workers(spark_master, state)


async def test_forged_and_malformed_events_are_refused(hub):
    app, service, state = hub
    url = f"{service['url']}{app._service_map['spark-scaler'].prefix}events"
    event = json.dumps({"action": "start", "user": "mallory", "server": ""})
    cases = [
        ({}, event, 401),
        ({"Authorization": "token not-the-token"}, event, 403),
        ({"Authorization": f"token {service['api_token']}"}, "{not json", 400),
        ({"Authorization": f"token {service['api_token']}"}, json.dumps({"action": "explode"}), 400),
    ]
    for headers, body, code in cases:
        with pytest.raises(HTTPClientError) as refused:
            await AsyncHTTPClient().fetch(url, method="POST", headers=headers, body=body)
        assert refused.value.code == code
    await asyncio.sleep(2)  # four of the scaler's cycles: an absence can only be watched
    assert not worker_records(state), "no refused event changed the target"


async def test_the_first_driver_after_a_server_start_uses_up_its_credit(hub, spark_master, drivers):
    """Pre-warm is for a user's first driver: once an app has started after the server did,
    the server adds nothing more to the idle target (idle_workers is 0 here), so the pool is
    the busy worker alone, not one more for a credit already served."""
    app, _, state = hub
    await start_server(app, "erin")
    await until(lambda: alive_workers(spark_master, state), timeout=60, what="erin's pre-warm worker")
    driver = drivers("erin-notebook", "--cores-max", "1", "--task-seconds", "1")
    await driver.started()
    await driver.jobs_done(1)
    # An absence can only be watched for a while: 5 s is 10 of the scaler's cycles, in
    # which a credit still counted would have started a second worker at once.
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        assert len(worker_records(state)) == 1, "a second worker for a credit already used up"
        await asyncio.sleep(0.2)
    await driver.result()
