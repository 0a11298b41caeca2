"""The admin page's real handlers over a synthetic pool, with a stand-in for the hub's OAuth.

For the scale browser test and the benchmark (benchmarks/admin_page.py): the service's own
tornado routes and settings (`web.handlers.admin_routes`, `admin_settings`) and its own
`PoolState`, with three stand-ins, named as such wherever they are used:

- stand-in hub auth (`StandinHubAuth`): `settings["hub_auth"]`; every request is the hub
  admin "admin". The real OAuth (login form, redirects, tokens, XSRF) is covered by
  tests/test_admin_browser.py on a real hub, not here;
- stand-in reconciler: the scaler's `Reconciler` that never cycles (no backend, no master);
  its last snapshot, plan and decision log are the synthetic pool's (tests/synthetic_pool.py);
- stand-in hub activity (`StandinActivity`): the synthetic pool's `activity.Server`s.

The hub's real stylesheet (the installed jupyterhub package's static files) is served at
`/hub/static/`, so that the page's colours are tested against it. A harness-only route,
outside the service's prefix and without auth, changes the pool: `POST /harness/step?fraction=0.01`
(`handles=a,b` among them; answers the changed worker handles); `GET /harness/workers` lists
every worker's handle, state, age and cores used.

Run as `python -m tests.admin_harness --port 0` from a checkout (its package is the one
served): it prints one JSON line `{"url": ...}` once it listens. `harness_process` starts it
and always stops it (by its process id).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import inspect
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections import deque
from collections.abc import AsyncIterator
from pathlib import Path

from tornado import web
from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets

from jhub_spark_scaler import constants
from jhub_spark_scaler.metrics import ScalerMetrics
from jhub_spark_scaler.reconciler import Reconciler
from jhub_spark_scaler.web.handlers import admin_routes, admin_settings
from jhub_spark_scaler.web.history import PoolHistory
from jhub_spark_scaler.web.pool import PoolState

try:  # run as a module of tests/ or from a copy of tests/ in another checkout
    from .synthetic_pool import SyntheticPool
except ImportError:  # pragma: no cover
    from synthetic_pool import SyntheticPool  # type: ignore[no-redef]

PREFIX = "/services/spark-scaler/"
HUB_PREFIX = "/hub/"
HUB_STATIC = Path(sys.prefix) / "share" / "jupyterhub" / "static"
ADMIN = {"kind": "user", "name": "admin", "admin": True, "scopes": [constants.ADMIN_SCOPE]}


class StandinHubAuth:
    """Stands in for the hub's `HubOAuth`: every request is the hub admin "admin", with the
    service's admin scope. What the handlers read of it, and nothing more."""

    hub_prefix = HUB_PREFIX
    cookie_name = "standin-hub-auth"
    access_scopes: frozenset[str] = frozenset()

    def __init__(self, base_url: str):
        self.base_url = base_url

    async def get_user(self, handler: web.RequestHandler, sync: bool = True) -> dict:
        return dict(ADMIN)

    def get_login_url(self) -> str:
        return HUB_PREFIX + "login"


class StandinActivity:
    """Stands in for `HubActivity`: the synthetic pool's servers, a healthy hub."""

    healthy = True
    last_error = ""

    def __init__(self, pool: SyntheticPool):
        self.pool = pool

    @property
    def servers(self):
        return self.pool.servers


def standin_reconciler(pool: SyntheticPool) -> Reconciler:
    """The scaler's Reconciler, never cycled: the synthetic pool's snapshot, plan and decisions."""
    reconciler = Reconciler(backend=None, spark=None, policy=pool.policy, observe=pool.observe,
                            log=logging.getLogger("standin-reconciler"),
                            decision_log_size=max(1, len(pool.decisions)))
    load(reconciler, pool)
    return reconciler


def load(reconciler: Reconciler, pool: SyntheticPool) -> None:
    reconciler.last_snapshot, reconciler.last_plan = pool.snapshot, pool.plan
    reconciler.decisions = deque(pool.decisions, maxlen=reconciler.decisions.maxlen)
    if isinstance(getattr(reconciler, "_decisions_recorded", None), int):
        reconciler._decisions_recorded = pool.seq  # record() numbers an admin's decisions on from there


def pool_state(pool: SyntheticPool, reconciler: Reconciler, *, poll_interval: float) -> PoolState:
    history = PoolHistory(interval=poll_interval)
    for back in range(int(3600 / max(poll_interval, 10)), 0, -1):  # an hour of the same pool, for the chart
        history.add(pool.now - back * max(poll_interval, 10), pool.snapshot)
    history.add(pool.now, pool.snapshot)
    values = dict(activity=StandinActivity(pool), prewarm_window=600.0, prewarm_per_server=1,
                  metrics=ScalerMetrics(), history=history, poll_interval=poll_interval)
    accepted = inspect.signature(PoolState).parameters
    state = PoolState(**{k: v for k, v in values.items() if k in accepted})
    state.attach(reconciler)
    return state


class StepHandler(web.RequestHandler):
    """Harness only: change about `fraction` of the pool, as a refresh would see it."""

    def check_xsrf_cookie(self) -> None:  # a test's control, bound to 127.0.0.1, not the service
        pass

    def post(self) -> None:
        pool: SyntheticPool = self.settings["synthetic_pool"]
        handles = [h for h in self.get_argument("handles", "").split(",") if h]
        changed = pool.step(float(self.get_argument("fraction", "0.01")), handles=handles)
        load(self.settings["pool"].reconciler, pool)
        self.settings["pool"].history.add(pool.now, pool.snapshot)
        self.finish({"changed": changed})


class WorkersHandler(web.RequestHandler):
    def get(self) -> None:
        pool: SyntheticPool = self.settings["synthetic_pool"]
        self.finish({"workers": [
            {"handle": w.handle, "state": w.state.value, "age": round(pool.now - w.created_at),
             "cores_used": w.master.cores_used if w.master else None} for w in pool.snapshot.workers]})


def make_app(pool: SyntheticPool, *, poll_interval: float = 1.0) -> web.Application:
    state = pool_state(pool, standin_reconciler(pool), poll_interval=poll_interval)
    settings = admin_settings(pool=state, api_url="http://127.0.0.1:9/hub/api", api_token="standin",
                              prefix=PREFIX)
    settings["hub_auth"] = StandinHubAuth(PREFIX)
    settings["synthetic_pool"] = pool
    routes = admin_routes(PREFIX, authenticate_prometheus=True) + [
        (r"/hub/static/(.*)", web.StaticFileHandler, {"path": str(HUB_STATIC)}),
        (r"/hub/logo", web.RedirectHandler, {"url": "/hub/static/images/jupyterhub-80.png"}),
        (r"/harness/step", StepHandler),
        (r"/harness/workers", WorkersHandler),
    ]
    return web.Application(routes, **settings)


async def serve(args: argparse.Namespace) -> None:
    pool = SyntheticPool(workers=args.workers, apps=args.apps, decisions=args.decisions,
                         servers=args.servers, seed=args.seed)
    server = HTTPServer(make_app(pool, poll_interval=args.poll_interval), xheaders=False)
    sockets = bind_sockets(args.port, "127.0.0.1")
    server.add_sockets(sockets)
    port = sockets[0].getsockname()[1]
    print(json.dumps({"url": f"http://127.0.0.1:{port}{PREFIX}", "base": f"http://127.0.0.1:{port}"}),
          flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    server.stop()


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--workers", type=int, default=2000)
    parser.add_argument("--apps", type=int, default=1000)
    parser.add_argument("--decisions", type=int, default=1000)
    parser.add_argument("--servers", type=int, default=500)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--poll-interval", type=float, default=1.0)
    return parser.parse_args(argv)


@contextlib.asynccontextmanager
async def harness_process(root: Path, *, log: Path, timeout: float = 60.0,
                          **sizes: int) -> AsyncIterator[dict]:
    """The harness serving `root`'s package (a checkout with this module in its tests/), in a
    subprocess of its own session; yields `{"url", "base"}`; stopped by its id whatever happens."""
    args = [f"--{k.replace('_', '-')}={v}" for k, v in sizes.items()]
    env = {**os.environ, "PYTHONPATH": str(root)}
    with open(log, "w") as out:
        process = subprocess.Popen([sys.executable, "-m", "tests.admin_harness", *args], cwd=root, env=env,
                                   stdout=subprocess.PIPE, stderr=out, text=True, start_new_session=True)
    try:
        line = await asyncio.wait_for(asyncio.to_thread(process.stdout.readline), timeout)
        if not line:
            raise RuntimeError(f"the admin harness exited with {process.wait()}: see {log}")
        yield json.loads(line)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        while process.poll() is None and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
        process.stdout.close()


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    asyncio.run(serve(parse()))
