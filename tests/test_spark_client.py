"""Tests of `spark`: the pure parsers on every real sample, and the HTTP client's
errors against a tiny local tornado server (127.0.0.1, port 0)."""

from __future__ import annotations

import asyncio
import copy
import json
from pathlib import Path

import pytest
import pytest_asyncio
from jupyterhub.utils import random_port
from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets
from tornado.web import Application, RequestHandler

from jhub_spark_scaler.spark import SparkClient, SparkError, parse_master, parse_worker

DATA = Path(__file__).parent / "data" / "spark-4.3.0"
MASTER_FILES = sorted(p for p in DATA.glob("*.json") if p.name[0].isdigit() and "master" in p.name)
WORKER_FILES = sorted(p for p in DATA.glob("*.json") if p.name[0].isdigit() and "worker" in p.name
                      and "master" not in p.name)
TIMEOUT = 0.5


def load(name: str):
    return json.loads((DATA / name).read_text())


def test_every_sample_is_covered():
    assert len(MASTER_FILES) == 17 and len(WORKER_FILES) == 2
    assert len(MASTER_FILES) + len(WORKER_FILES) == len(list(DATA.glob("*.json")))


# -- parsing the real samples ---------------------------------------------------------


@pytest.mark.parametrize("path", MASTER_FILES, ids=lambda p: p.name)
def test_parse_master_sample(path):
    raw = json.loads(path.read_text())
    status = parse_master(raw)
    assert status.status == raw["status"] and status.url == raw["url"]
    assert status.ready == (raw["status"] == "ALIVE")
    assert [(w.id, w.host, w.port, w.state, w.cores, w.cores_used, w.last_heartbeat, w.webui_address)
            for w in status.workers] == [
        (w["id"], w["host"], w["port"], w["state"], w["cores"], w["coresused"], w["lastheartbeat"],
         w["webuiaddress"]) for w in raw["workers"]]
    assert [(a.id, a.name, a.cores, a.state, a.user, a.start_time) for a in status.apps] == [
        (a["id"], a["name"], a["cores"], a["state"], a["user"], a["starttime"]) for a in raw["activeapps"]]
    assert status.completed_apps == tuple((a["starttime"] / 1000, a["user"]) for a in raw["completedapps"])
    assert sorted(status.app_starts) == sorted(
        (a["starttime"] / 1000, a["user"]) for a in raw["activeapps"] + raw["completedapps"])


def test_a_completed_app_with_a_mistyped_start_is_one_line():
    doc = {"status": "ALIVE", "completedapps": [{"id": "app-1", "starttime": "yesterday"}]}
    with pytest.raises(SparkError,
                       match=r"^master /json/ completedapps\[\]: field 'starttime' is str, expected int$"):
        parse_master(doc)


@pytest.mark.parametrize("path", WORKER_FILES, ids=lambda p: p.name)
def test_parse_worker_sample(path):
    raw = json.loads(path.read_text())
    status = parse_worker(raw)
    assert status.id == raw["id"]
    assert [(e.app_id, e.executor_id, e.app_name) for e in status.executors] == [
        (e["appid"], e["id"], e["appdesc"]["name"]) for e in raw["executors"]]


def test_parse_specific_samples():
    assert parse_master(load("01_master_empty.json")).status == "STANDBY"
    assert parse_master(load("01_master_empty.json")).workers == ()
    (app,) = parse_master(load("16_master_app3_all_workers_decommissioned.json")).apps[:1]
    assert (app.id, app.cores, app.state) == ("app-20261125142536-0006", 0, "WAITING")
    (ex,) = parse_worker(load("05_worker3_with_executor.json")).executors
    assert (ex.app_id, ex.executor_id, ex.app_name) == ("app-20261125141527-0000", 0, "app1")
    assert parse_worker(load("03_worker1_idle.json")).executors == ()


def test_unknown_fields_are_ignored():
    raw = load("04_master_app1_running.json")
    extended = copy.deepcopy(raw)
    extended["newtoplevel"] = {"nested": [1, 2]}
    extended["workers"][0]["gpu"] = "yes"
    extended["activeapps"][0]["priority"] = 3
    assert parse_master(extended) == parse_master(raw)
    worker = load("05_worker3_with_executor.json")
    extended = copy.deepcopy(worker)
    extended["executors"][0]["newfield"] = None
    extended["decommissioned"] = True
    assert parse_worker(extended) == parse_worker(worker)


def test_optional_fields_default():
    doc = {"status": "ALIVE", "workers": [{"id": "w", "host": "h", "port": 1, "state": "ALIVE"}],
           "activeapps": [{"id": "a"}]}
    status = parse_master(doc)
    assert status.url == "" and status.workers[0].cores_used == 0 and status.apps[0].cores == 0
    assert parse_master({"status": "ALIVE"}).workers == ()
    assert parse_worker({"id": "w"}).executors == ()


def _set(path, value):
    """A mutation of a sample: set the value at a path of keys/indexes (None deletes)."""
    def mutate(doc):
        *parents, last = path
        for key in parents:
            doc = doc[key]
        if value is None:
            del doc[last]
        else:
            doc[last] = value
    return mutate


MASTER = ("04_master_app1_running.json", parse_master, "master")
WORKER = ("05_worker3_with_executor.json", parse_worker, "worker")


@pytest.mark.parametrize("page, mutate, field", [
    (MASTER, _set(["workers", 0, "port"], "27079"), "'port' is str, expected int"),
    (MASTER, _set(["workers", 0, "cores"], True), "'cores' is bool, expected int"),
    (MASTER, _set(["workers", 0, "coresused"], 1.0), "'coresused' is float, expected int"),
    (MASTER, _set(["workers", 0, "host"], None), "missing field 'host'"),
    (MASTER, _set(["workers", 0, "id"], 7), "'id' is int, expected str"),
    (MASTER, _set(["workers", 1, "state"], None), "missing field 'state'"),
    (MASTER, _set(["workers"], {"a": 1}), "'workers' is dict, expected list"),
    (MASTER, _set(["workers"], "none"), "'workers' is str, expected list"),
    (MASTER, _set(["workers", 0], "w1"), "workers[]: expected a JSON object, got str"),
    (MASTER, _set(["activeapps"], 3), "'activeapps' is int, expected list"),
    (MASTER, _set(["activeapps", 0, "cores"], "1"), "'cores' is str, expected int"),
    (MASTER, _set(["activeapps", 0, "id"], None), "missing field 'id'"),
    (MASTER, _set(["status"], None), "missing field 'status'"),
    (MASTER, _set(["status"], False), "'status' is bool, expected str"),
    (WORKER, _set(["id"], None), "missing field 'id'"),
    (WORKER, _set(["executors"], {}), "'executors' is dict, expected list"),
    (WORKER, _set(["executors", 0, "appid"], None), "missing field 'appid'"),
    (WORKER, _set(["executors", 0, "id"], True), "'id' is bool, expected int"),
    (WORKER, _set(["executors", 0, "id"], "0"), "'id' is str, expected int"),
    (WORKER, _set(["executors", 0], []), "executors[]: expected a JSON object, got list"),
])
def test_malformed_page_raises_spark_error_naming_the_field(page, mutate, field):
    fixture, parse, which = page
    doc = load(fixture)
    mutate(doc)
    with pytest.raises(SparkError, match=rf"^{which} /json/") as e:
        parse(doc)
    assert field in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("doc", [[], [{"status": "ALIVE"}], "ALIVE", 3, None])
def test_top_level_not_an_object(doc):
    with pytest.raises(SparkError, match="master /json/: expected a JSON object"):
        parse_master(doc)
    with pytest.raises(SparkError, match="worker /json/: expected a JSON object"):
        parse_worker(doc)


# -- HTTP ---------------------------------------------------------------------------

MASTER_BODY = (DATA / "02_master_3workers_idle.json").read_bytes()
BODIES = {
    "ok": MASTER_BODY,
    "standby": (DATA / "01_master_empty.json").read_bytes(),
    "worker": (DATA / "05_worker3_with_executor.json").read_bytes(),
    "html": b"<html><body>Spark Master at spark://x</body></html>",
    "truncated": MASTER_BODY[: len(MASTER_BODY) // 2],
    "malformed": json.dumps({
        "status": "ALIVE", "workers": [{"id": "w", "host": "h", "port": "7078", "state": "ALIVE"}],
    }).encode(),
}


class Server:
    def __init__(self):
        self.port = 0
        self.posts: list[tuple[str, list[str]]] = []
        self.release = asyncio.Event()  # lets the never-answering handler end at teardown

    def url(self, prefix: str) -> str:
        return f"http://127.0.0.1:{self.port}/{prefix}"


class JsonHandler(RequestHandler):
    def initialize(self, server: Server):
        self.server = server

    async def get(self, mode: str):
        if mode == "error":
            raise Exception("boom")  # tornado answers 500
        if mode == "hang":
            await self.server.release.wait()
            return
        self.write(BODIES[mode])


class KillHandler(RequestHandler):
    def initialize(self, server: Server):
        self.server = server

    def check_xsrf_cookie(self):
        pass

    async def post(self, mode: str):
        self.server.posts.append((mode, self.get_query_arguments("host")))
        if mode == "hang":
            await self.server.release.wait()
        elif mode == "ok":
            self.set_status(200)
        elif mode == "redirect":
            self.redirect("/", status=302)
        elif mode == "refuse":  # Spark 4 without allow.mode=ALLOW (3.5 answers 405)
            self.send_error(403)
        elif mode == "nohost":
            self.send_error(404)


@pytest_asyncio.fixture
async def server():
    srv = Server()
    app = Application([(r"/(\w+)/json/", JsonHandler, {"server": srv}),
                       (r"/(\w+)/workers/kill/", KillHandler, {"server": srv})])
    sockets = bind_sockets(0, "127.0.0.1")
    srv.port = sockets[0].getsockname()[1]
    http = HTTPServer(app)
    http.add_sockets(sockets)
    yield srv
    srv.release.set()
    http.stop()
    await http.close_all_connections()


async def master_error(url: str) -> str:
    with pytest.raises(SparkError) as e:
        await SparkClient(url, timeout=TIMEOUT).master()
    message = str(e.value)
    assert "\n" not in message and "Traceback" not in message
    return message


@pytest.mark.asyncio
async def test_master_reads_a_valid_answer(server):
    status = await SparkClient(server.url("ok") + "/", timeout=TIMEOUT).master()
    assert status.ready and len(status.workers) == 3


@pytest.mark.asyncio
async def test_worker_reads_a_valid_answer(server):
    status = await SparkClient(server.url("ok"), timeout=TIMEOUT).worker(server.url("worker") + "/")
    assert [e.app_id for e in status.executors] == ["app-20261125141527-0000"]


@pytest.mark.asyncio
async def test_a_standby_master_is_an_error(server):
    message = await master_error(server.url("standby"))
    assert "STANDBY" in message and "not ALIVE" in message


@pytest.mark.asyncio
@pytest.mark.parametrize("mode, expected", [
    ("html", "did not answer JSON (starts '<html><body>Spark Master"),
    ("truncated", "did not answer JSON (starts '{"),
    ("error", "answered HTTP 500"),
    ("no-such-page", "answered HTTP 404"),
    ("malformed", "master /json/ workers[]: field 'port' is str, expected int"),
])
async def test_master_errors_are_one_clear_line(server, mode, expected):
    message = await master_error(server.url(mode))
    assert expected in message
    if mode != "malformed":
        assert f"Spark master at {server.url(mode)}/json/" in message


@pytest.mark.asyncio
async def test_a_master_that_never_answers_times_out(server):
    message = await master_error(server.url("hang"))
    assert message.startswith(f"cannot reach Spark master at {server.url('hang')}/json/")
    assert "Timeout" in message
    assert "HTTP 599" not in message


@pytest.mark.asyncio
async def test_a_closed_port_cannot_be_reached():
    url = f"http://127.0.0.1:{random_port()}"  # free: nothing listens there
    message = await master_error(url)
    assert message.startswith(f"cannot reach Spark master at {url}/json/")


@pytest.mark.asyncio
@pytest.mark.parametrize("mode, expected", [
    ("html", "Spark worker at {url}/json/ did not answer JSON"),
    ("error", "Spark worker at {url}/json/ answered HTTP 500"),
    ("hang", "cannot reach Spark worker at {url}/json/"),
])
async def test_worker_errors_are_one_clear_line(server, mode, expected):
    url = server.url(mode)
    with pytest.raises(SparkError) as e:
        await SparkClient(server.url("ok"), timeout=TIMEOUT).worker(url)
    assert expected.format(url=url) in str(e.value) and "\n" not in str(e.value)


@pytest.mark.asyncio
@pytest.mark.parametrize("mode", ["ok", "redirect"])
async def test_decommission_host_posts_the_host(server, mode):
    await SparkClient(server.url(mode), timeout=TIMEOUT).decommission_host("127.0.0.3")
    assert server.posts == [(mode, ["127.0.0.3"])]


@pytest.mark.asyncio
async def test_decommission_refused_names_allow_mode(server):
    with pytest.raises(SparkError) as e:
        await SparkClient(server.url("refuse"), timeout=TIMEOUT).decommission_host("10.1.2.3")
    message = str(e.value)
    assert server.posts == [("refuse", ["10.1.2.3"])]
    assert "403" in message and "10.1.2.3" in message
    assert "spark.master.ui.decommission.allow.mode" in message and "\n" not in message


@pytest.mark.asyncio
async def test_decommission_of_a_host_without_workers_does_not_blame_allow_mode(server):
    with pytest.raises(SparkError) as e:
        await SparkClient(server.url("nohost"), timeout=TIMEOUT).decommission_host("10.1.2.3")
    message = str(e.value)
    assert "404" in message and "10.1.2.3" in message
    assert "allow.mode" not in message


@pytest.mark.asyncio
async def test_decommission_on_a_closed_port_cannot_be_reached():
    url = f"http://127.0.0.1:{random_port()}"  # free: nothing listens there
    with pytest.raises(SparkError, match=r"^cannot reach Spark master at http://127\.0\.0\.1:\d+: "):
        await SparkClient(url, timeout=TIMEOUT).decommission_host("10.1.2.3")


@pytest.mark.asyncio
async def test_decommission_without_an_answer_cannot_be_reached(server):
    with pytest.raises(SparkError) as e:
        await SparkClient(server.url("hang"), timeout=TIMEOUT).decommission_host("10.1.2.3")
    assert str(e.value) == f"cannot reach Spark master at {server.url('hang')}: Timeout during request"
    assert server.posts == [("hang", ["10.1.2.3"])]
