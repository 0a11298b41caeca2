"""A real JupyterHub for the tests: pytest-jupyterhub's MockHub (the real hub application
with mock authentication and mock single-user servers, which are real processes), its
files in the test's tmp dir, and the real scaler as its managed service on the
session's Spark master. The `scaler_hub` fixture (conftest.py) starts one per test.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest
from jupyterhub.utils import random_port
from tornado.httpclient import AsyncHTTPClient
from traitlets.config import Config

from jhub_spark_scaler.constants import SERVICE_NAME
from jhub_spark_scaler.hub import configure
from jhub_spark_scaler.spark import SparkClient

from .settings import AS_ROOT_SETTING, HTTP_TIMEOUT

ROOT = Path(__file__).resolve().parent.parent
PROXY = ROOT / ".cache" / "node" / "node_modules" / ".bin" / "configurable-http-proxy"
#: the token of the hub's service "test-admin", which the tests call the hub's API with
ADMIN_TOKEN = "test-admin-" + "0" * 32


def hub_config(tmp_path: Path) -> Config:
    """A MockHub config that keeps every file in tmp_path and notices a crashed
    server or service within a second."""
    if not PROXY.exists():
        pytest.fail(f"configurable-http-proxy is missing ({PROXY}): run scripts/install-proxy.sh")
    c = Config()
    c.ConfigurableHTTPProxy.command = [str(PROXY)]
    c.ConfigurableHTTPProxy.pid_file = str(tmp_path / "proxy.pid")
    c.JupyterHub.cookie_secret_file = str(tmp_path / "cookie_secret")
    c.SimpleLocalProcessSpawner.home_dir_template = str(tmp_path / "home" / "{username}")
    c.Spawner.poll_interval = 1
    return c


def configure_scaler(c: Config, spark_master, state: Path, **settings) -> dict:
    """The real scaler as the hub's managed service, on the session's master: fast
    cycles, the hub polled only every minute (so reactions within seconds are the
    hooks'). `settings` are more of configure()'s keywords, or replace these."""
    return configure(c, **{
        "max_workers": 3, "port": random_port(), "idle_workers": 0, "scale_down_delay": 1,
        "poll_interval": 0.5, "hub_poll_interval": 60,
        "LocalBackend__start_master": False,
        "LocalBackend__master_url": spark_master.master_url,
        "LocalBackend__master_ui_url": spark_master.master_ui_url,
        "LocalBackend__state_dir": str(state),
        "LocalBackend__stop_timeout": 5,
        **AS_ROOT_SETTING,
        "LocalBackend__stop_on_exit": True,  # the hub's stop of the service ends the pool (stop_scaler)
        **settings,
    })


def worker_records(state: Path) -> dict[str, dict]:
    """The scaler's worker records in its state dir, by handle."""
    records = {}
    for path in state.glob("workers/*.json"):
        try:
            records[path.stem] = json.loads(path.read_text())
        except ValueError:
            continue
    return records


async def stop_scaler(app, state: Path) -> None:
    """As at hub shutdown: the hub interrupts its managed service, which stops its
    workers; any the service left behind are killed."""
    await app._service_map[SERVICE_NAME].stop()
    for record in worker_records(state).values():
        try:
            os.kill(record["pid"], signal.SIGKILL)
        except ProcessLookupError:
            pass


async def hub_api(app, method: str, path: str, body=None):
    """The hub's REST API as "test-admin"; the answer's JSON, or None if it has no body."""
    response = await AsyncHTTPClient().fetch(
        f"{app.hub.url}api/{path}", method=method, headers={"Authorization": f"token {ADMIN_TOKEN}"},
        body=None if body is None else json.dumps(body), allow_nonstandard_methods=True,
    )
    return json.loads(response.body) if response.body else None


async def start_server(app, user: str) -> float:
    """Create `user` and start their default server; the monotonic time of the start request."""
    await hub_api(app, "POST", f"users/{user}", {})
    started = time.monotonic()
    await hub_api(app, "POST", f"users/{user}/server", {})
    return started


async def alive_workers(spark_master, state: Path) -> set[str]:
    """Hosts of the scaler's workers (by its records) that the master has ALIVE."""
    hosts = {r["host"] for r in worker_records(state).values()}
    master = await SparkClient(spark_master.master_ui_url, timeout=HTTP_TIMEOUT).master()
    return {m.host for m in master.workers if m.host in hosts and m.state == "ALIVE"}
