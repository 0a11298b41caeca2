"""A real JupyterHub process for the soak: SimpleLocalProcessSpawner running real
jupyterhub-singleuser servers, an admin token for the simulated users' API calls,
and (for the scaler strategy) the scaler as its managed service via `configure()`."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
from pathlib import Path

from tornado.httpclient import AsyncHTTPClient, HTTPClientError

from jhub_spark_scaler.backends.processes import free_port
from tests.waiting import WaitTimeout, until

ROOT = Path(__file__).resolve().parents[2]
PROXY = ROOT / ".cache" / "node" / "node_modules" / ".bin" / "configurable-http-proxy"

CONFIG = '''\
import json, os, sys
from jhub_spark_scaler.hub import configure

p = json.loads({params!r})
c = get_config()  # noqa: F821
c.JupyterHub.ip = "127.0.0.1"
c.JupyterHub.port = p["port"]
c.JupyterHub.hub_ip = "127.0.0.1"
c.JupyterHub.hub_port = p["hub_port"]
c.ConfigurableHTTPProxy.api_url = f"http://127.0.0.1:{{p['proxy_api_port']}}"
c.ConfigurableHTTPProxy.command = [p["proxy"]]
c.ConfigurableHTTPProxy.pid_file = os.path.join(p["state"], "proxy.pid")
c.JupyterHub.db_url = "sqlite:///" + os.path.join(p["state"], "jupyterhub.sqlite")
c.JupyterHub.cookie_secret_file = os.path.join(p["state"], "cookie_secret")
c.JupyterHub.authenticator_class = "dummy"
c.Authenticator.allow_all = True
c.JupyterHub.spawner_class = "simple"
c.SimpleLocalProcessSpawner.home_dir_template = os.path.join(p["state"], "home", "{{username}}")
c.Spawner.cmd = [os.path.join(os.path.dirname(sys.executable), "jupyterhub-singleuser")]
c.Spawner.args = ["--allow-root"] if os.geteuid() == 0 else []
# on the soak's saturated 2 CPUs a server can take longer than the default 30 s to answer
# (seen: 27 s and more); the soak itself waits up to 180 s for it
c.Spawner.http_timeout = 150
# how soon the hub notices a server or its managed service (the scaler) died and restarts it
c.Spawner.poll_interval = p["poll_interval"]
c.JupyterHub.services = [{{"name": "soak-admin", "api_token": p["admin_token"]}}]
c.JupyterHub.load_roles = [{{"name": "soak-admin", "services": ["soak-admin"],
                             "scopes": ["admin:users", "admin:servers"]}}]
if p["scaler"] is not None:
    configure(c, port=p["scaler_port"], **p["scaler"])
    # the soak reads the scaler's api/pool to see it converge
    c.JupyterHub.load_roles[0]["scopes"].append("custom:spark-scaler:admin")
'''


class Hub:
    """`jupyterhub -f <generated config>` in `state`; `scaler` = configure()'s keyword
    arguments, or None for a hub without the scaler."""

    def __init__(self, state: Path, *, scaler: dict | None, poll_interval: float = 10):
        self.state = Path(state)
        self.state.mkdir(parents=True, exist_ok=True)
        self.admin_token = secrets.token_hex(32)
        self.port = free_port("127.0.0.1")
        self.hub_port = free_port("127.0.0.1", avoid={self.port})
        self.scaler_port = free_port("127.0.0.1", avoid={self.port, self.hub_port})
        params = {
            "port": self.port, "hub_port": self.hub_port, "scaler_port": self.scaler_port,
            "proxy_api_port": free_port("127.0.0.1", avoid={self.port, self.hub_port, self.scaler_port}),
            "proxy": str(PROXY), "state": str(self.state), "admin_token": self.admin_token,
            "scaler": scaler, "poll_interval": poll_interval,
        }
        self.config = self.state / "jupyterhub_config.py"
        self.config.write_text(CONFIG.format(params=json.dumps(params)))
        self.api = f"http://127.0.0.1:{self.hub_port}/hub/api/"
        self.process: subprocess.Popen | None = None
        self.log = self.state / "hub.log"
        self._client = AsyncHTTPClient(force_instance=True)

    async def start(self, timeout: float = 120) -> None:
        if not PROXY.exists():
            raise RuntimeError(f"{PROXY} is missing: run scripts/install-proxy.sh")
        jupyterhub = os.path.join(os.path.dirname(sys.executable), "jupyterhub")
        with open(self.log, "a") as log:
            # the repository's root first: the hub, and the service it hands PYTHONPATH to, import
            # this checkout's package (and a benchmark-only backend by its import path)
            path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
            self.process = subprocess.Popen([jupyterhub, "-f", str(self.config)], cwd=self.state,
                                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                            env={**os.environ, "PYTHONPATH": path})

        async def answers() -> bool:
            await self.call("GET", "")
            return True

        await until(answers, timeout=timeout, interval=0.3, what="the hub to answer",
                    ignore=(OSError, HTTPClientError), process=self.process, log=self.log)

    async def call(self, method: str, path: str, body=None, *, ok=(200, 201, 202, 204)):
        response = await self._client.fetch(
            self.api + path, method=method, headers={"Authorization": f"token {self.admin_token}"},
            body=None if body is None else json.dumps(body), allow_nonstandard_methods=True,
            raise_error=False, request_timeout=60,
        )
        if response.code == 599:
            raise OSError(f"hub API {method} {path}: {response.error}")
        if response.code not in ok:
            raise RuntimeError(f"hub API {method} {path}: {response.code} {response.body[:300]!r}")
        return json.loads(response.body) if response.body else None

    async def stop(self, timeout: float = 60) -> None:
        """SIGTERM, as an admin stopping the hub would: it stops its managed service and
        servers; SIGKILL to the whole session after `timeout`."""
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            with contextlib.suppress(WaitTimeout):
                await until(lambda: self.process.poll() is not None, timeout=timeout, what="the hub to exit")
            if self.process.poll() is None:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(10)
        self._client.close()
