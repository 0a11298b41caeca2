"""The admin page on a real hub: MockHub with the real scaler service, plain HTTP
through the hub's proxy (a `requests` session per person, cookies and OAuth
redirects as a browser would follow them), on the session's real Spark master."""

from __future__ import annotations

import asyncio
import re
from urllib.parse import urlsplit

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from jhub_spark_scaler.constants import ADMIN_SCOPE

from .real_hub import alive_workers, hub_api, start_server, worker_records
from .waiting import until

pytestmark = pytest.mark.spark

MONITOR_TOKEN = "monitor-" + "1" * 32
XSS = "<img src=x onerror=alert(1)>"


@pytest.fixture
async def hub(scaler_hub):
    """A hub with the scaler and: `operator` holding the admin scope, `viewer` allowed
    to access services but without the scope, a service `monitor` with the scope.
    Returns (app, state dir, the service's public URL)."""
    app, _, state = await scaler_hub(
        services=[{"name": "monitor", "api_token": MONITOR_TOKEN}],
        roles=[
            {"name": "scaler-operator", "users": ["operator"],
             "scopes": [ADMIN_SCOPE, "access:services!service=spark-scaler"]},
            {"name": "service-viewer", "users": ["viewer"], "scopes": ["access:services"]},
            {"name": "monitor", "services": ["monitor"], "scopes": [ADMIN_SCOPE]},
        ],
    )
    return app, state, app.proxy.public_url.rstrip("/") + "/services/spark-scaler/"


class Browser:
    """A requests.Session run off the event loop (the hub shares this loop)."""

    def __init__(self, service_url: str):
        self.service_url = service_url
        self.hub_url = service_url.split("services/")[0] + "hub/"
        self.session = requests.Session()
        self.session.headers["Accept"] = "text/html,application/xhtml+xml"

    async def call(self, method: str, url: str, **kwargs) -> requests.Response:
        kwargs.setdefault("timeout", 30)
        return await asyncio.to_thread(self.session.request, method, url, **kwargs)

    async def login(self, name: str) -> None:
        page = await self.call("GET", self.hub_url + "login")
        xsrf = re.search(r'name="_xsrf" value="([^"]+)"', page.text).group(1)
        # next=home: the hub's default after login would spawn a server (and pre-warm)
        home = urlsplit(self.hub_url).path + "home"
        done = await self.call("POST", self.hub_url + "login", params={"next": home},
                               data={"username": name, "password": name, "_xsrf": xsrf})
        assert done.ok and "/hub/login" not in done.url, (done.status_code, done.url)

    async def page(self) -> requests.Response:
        return await self.call("GET", self.service_url)

    async def pool(self) -> dict:
        response = await self.call("GET", self.service_url + "api/pool",
                                   headers={"Accept": "application/json"})
        assert response.status_code == 200, response.text
        return response.json()

    async def post(self, action: str, data: dict | None = None) -> requests.Response:
        return await self.call("POST", self.service_url + "api/" + action, data=data or {},
                               headers={"Accept": "application/json"})


def xsrf_of(page: requests.Response) -> str:
    return re.search(r'data-xsrf="([^"]+)"', page.text).group(1)


async def test_who_sees_the_page_and_what_it_shows(hub, spark_master, drivers):
    app, state, url = hub
    driver = drivers(XSS, "--tasks", "1", "--task-seconds", "0.5")  # its JVM starts meanwhile

    anonymous = Browser(url)
    first = await anonymous.call("GET", url, allow_redirects=False)
    assert first.status_code == 302 and "/hub/api/oauth2/authorize" in first.headers["Location"]
    assert "/hub/login" in (await anonymous.page()).url
    assert (await anonymous.call("GET", url + "api/pool")).status_code == 403

    outsider = Browser(url)  # an ordinary user: the hub refuses the OAuth to the service
    await outsider.login("bob")
    refused = await outsider.page()
    assert refused.status_code == 403 and "/hub/api/oauth2/authorize" in refused.url

    viewer = Browser(url)  # may access services, lacks the scope: our 403
    await viewer.login("viewer")
    refused = await viewer.page()
    assert refused.status_code == 403 and refused.url.rstrip("/") == url.rstrip("/")
    assert "may not use the Spark scaler" in refused.text and ADMIN_SCOPE in refused.text
    assert (await viewer.call("GET", url + "api/pool")).status_code == 403

    operator = Browser(url)  # holds the scope, not a hub admin
    await operator.login("operator")
    assert (await operator.page()).status_code == 200  # the OAuth dance, then the page
    assert (await operator.pool())["status"] == "healthy"

    await start_server(app, "alice")  # pre-warms a real worker
    await until(lambda: alive_workers(spark_master, state), timeout=60, what="alice's pre-warm worker")
    await driver.started()
    admin = Browser(url)
    await admin.login("admin")
    assert (await admin.page()).status_code == 200

    async def shown():
        pool = await admin.pool()
        return pool if any(a["name"] == XSS for a in pool["apps"]) and pool["workers"] else None

    pool = await until(shown, timeout=60, what="the worker and the driver's app on the page's API")
    assert pool["status"] == "healthy" and pool["servers"][0]["user"] == "alice"
    page = await admin.page()
    assert page.status_code == 200 and page.url.rstrip("/") == url.rstrip("/")
    stylesheet = urlsplit(admin.hub_url).path + "static/css/style.min.css"  # the hub's own
    assert f'href="{stylesheet}"' in page.text
    assert re.search(r'<div id="chart"><svg [^>]*role="img"', page.text), "the pool chart, inline SVG"
    assert (await admin.call("GET", admin.hub_url + "static/css/style.min.css")).status_code == 200
    for worker in pool["workers"]:
        assert f'data-key="{worker["handle"]}"' in page.text
    assert XSS not in page.text
    assert "&lt;img src=x onerror=alert(1)&gt;" in page.text

    # API tokens: a service holding the scope may read the pool; a token without it may not
    monitor = await asyncio.to_thread(
        requests.get, url + "api/pool", headers={"Authorization": f"token {MONITOR_TOKEN}"}, timeout=30)
    assert monitor.status_code == 200 and monitor.json()["workers"]
    token = (await hub_api(app, "POST", "users/viewer/tokens", {"note": "test"}))["token"]
    viewer_api = await asyncio.to_thread(
        requests.get, url + "api/pool", headers={"Authorization": f"token {token}"}, timeout=30)
    assert viewer_api.status_code == 403 and ADMIN_SCOPE in viewer_api.json()["error"]
    # /metrics: the same rule; what it says matches api/pool
    metrics = await asyncio.to_thread(
        requests.get, url + "metrics", headers={"Authorization": f"token {MONITOR_TOKEN}"}, timeout=30)
    assert metrics.status_code == 200, metrics.text
    pool = monitor.json()
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in text_string_to_metric_families(metrics.text) for s in family.samples}
    for state, n in pool["counts"].items():
        assert samples[("spark_scaler_workers", (("state", state),))] == n, state
    assert samples[("spark_scaler_target_workers", ())] == pool["target"]["target"]
    anonymous_metrics = await asyncio.to_thread(requests.get, url + "metrics", timeout=30)
    assert anonymous_metrics.status_code in (302, 403) or "login" in anonymous_metrics.url
    assert "spark_scaler_workers" not in anonymous_metrics.text

    # an admin's full token works; a narrow token an admin owns does not
    for scopes, code in ((["inherit"], 200), (["read:users:name!user=admin"], 403)):
        token = (await hub_api(app, "POST", "users/admin/tokens", {"scopes": scopes}))["token"]
        answer = await asyncio.to_thread(
            requests.get, url + "api/pool", headers={"Authorization": f"token {token}"}, timeout=30)
        assert answer.status_code == code, (scopes, answer.text)


async def test_pause_idle_override_and_xsrf(hub, spark_master):
    app, state, url = hub
    admin = Browser(url)
    await admin.login("admin")
    page = await admin.page()
    assert page.status_code == 200
    xsrf = xsrf_of(page)

    refused = await admin.post("pause")  # cookie-authenticated, no _xsrf
    assert refused.status_code == 403 and "_xsrf" in refused.json()["error"]
    assert not (await admin.pool())["paused"]

    paused = await admin.post("pause", {"_xsrf": xsrf})
    assert paused.status_code == 200 and paused.json()["paused"] and paused.json()["status"] == "paused"

    # an idle override while paused: planned, not carried out
    overridden = (await admin.post("idle-target", {"_xsrf": xsrf, "idle_workers": "1"})).json()
    assert overridden["target"]["idle_override"] == 1 and overridden["target"]["idle_workers_configured"] == 0
    assert (await admin.post("idle-target", {"_xsrf": xsrf, "idle_workers": "99"})).status_code == 400
    cleared = (await admin.post("idle-target", {"_xsrf": xsrf, "idle_workers": ""})).json()
    assert cleared["target"]["idle_override"] is None and cleared["target"]["idle_workers"] == 0
    # the form's "Clear override" button without the page's script: the field's value comes along
    await admin.post("idle-target", {"_xsrf": xsrf, "idle_workers": "1"})
    cleared = (await admin.post("idle-target", {"_xsrf": xsrf, "idle_workers": "1", "clear": "1"})).json()
    assert cleared["target"]["idle_override"] is None

    await start_server(app, "alice")

    async def would_start():
        pool = await admin.pool()
        return pool if pool["servers"] and pool["plan"]["start"] >= 1 else None

    pool = await until(would_start, timeout=30, what="a planned start for alice's server")
    assert pool["paused"] and pool["target"]["target"] == 1
    await asyncio.sleep(2)  # four cycles of the scaler: an absence can only be watched
    assert not worker_records(state), "paused: no worker started"

    # a hub API token is exempt from XSRF, as in JupyterHub
    resumed = await asyncio.to_thread(
        requests.post, url + "api/resume", headers={"Authorization": f"token {MONITOR_TOKEN}"}, timeout=30)
    assert resumed.status_code == 200 and not resumed.json()["paused"]
    await until(lambda: alive_workers(spark_master, state), timeout=60, what="the worker after resume")

    log = (await admin.pool())["decisions"]
    actions = [(d["action"], d["detail"]) for d in log]
    assert any(a == "pause" and "by admin" in d for a, d in actions)
    assert any(a == "resume" and "by monitor" in d for a, d in actions)
    assert any(a == "idle-target" and "by admin" in d for a, d in actions)
    assert any(a == "start" for a, _ in actions)
    assert log[0]["at"] >= log[-1]["at"], "newest first"


async def test_api_pool_queries_the_chart_and_the_static_files(hub):
    app, state, url = hub

    def get(path: str, *, token: str | None = MONITOR_TOKEN) -> requests.Response:
        headers = {"Authorization": f"token {token}"} if token else {}
        return requests.get(url + path, headers=headers, timeout=30)

    # two idle workers wanted: the pool has rows to filter and page
    set_idle = await asyncio.to_thread(
        requests.post, url + "api/idle-target", data={"idle_workers": "2"},
        headers={"Authorization": f"token {MONITOR_TOKEN}"}, timeout=30)
    assert set_idle.status_code == 200, set_idle.text

    async def two_workers():
        pool = (await asyncio.to_thread(get, "api/pool")).json()
        return pool if len(pool["workers"]) >= 2 else None

    await until(two_workers, timeout=60, what="two workers on api/pool")
    states = "starting,idle,busy"
    answer = await asyncio.to_thread(get, f"api/pool?state={states}&limit=1&decisions.limit=2&sort=-age")
    assert answer.status_code == 200, answer.text
    pool = answer.json()
    assert len(pool["workers"]) == 1 and len(pool["decisions"]) == 2
    workers = pool["tables"]["workers"]
    assert workers["total"] >= 2 and workers["matched"] >= 2
    assert (workers["limit"], workers["sort"]) == (1, "-age")
    assert pool["filters"]["state"] == states.split(",")
    assert pool["workers"][0]["apps_text"] and pool["workers"][0]["key"] == pool["workers"][0]["handle"]
    assert answer.headers["Cache-Control"] == "no-store"

    # a bad parameter: 400, one line naming it
    for query, named in (("limit=0", "limit must be"), ("state=sleepy", "state must be one or more of"),
                         ("workers.colour=red", "unknown parameter 'workers.colour'")):
        bad = await asyncio.to_thread(get, "api/pool?" + query)
        assert bad.status_code == 400 and bad.json()["error"].startswith(named), (query, bad.text)

    # the chart: SVG to a holder of the scope, 403 to a user without it and to no one
    chart = await asyncio.to_thread(get, "api/chart")
    assert chart.status_code == 200 and chart.headers["Content-Type"].startswith("image/svg+xml")
    assert chart.text.startswith("<svg") and chart.headers["Cache-Control"] == "no-store"
    token = (await hub_api(app, "POST", "users/viewer/tokens", {"note": "test"}))["token"]
    refused = await asyncio.to_thread(get, "api/chart", token=token)
    assert refused.status_code == 403 and ADMIN_SCOPE in refused.json()["error"]
    assert "<svg" not in refused.text
    assert (await asyncio.to_thread(get, "api/chart", token=None)).status_code == 403

    # the page's script and stylesheet: no login, no data, the service's security headers
    for name in ("pool.js", "pool.css"):
        static = await asyncio.to_thread(get, "static/" + name, token=None)
        assert static.status_code == 200, (name, static.status_code)
        assert static.headers["X-Frame-Options"] == "DENY"
        assert static.headers["X-Content-Type-Options"] == "nosniff"
    # the service's own code next to the static directory stays out of reach
    escape = await asyncio.to_thread(get, "static/%2e%2e/handlers.py", token=None)
    assert escape.status_code in (403, 404) and "AdminHandler" not in escape.text
