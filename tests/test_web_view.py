"""The admin page's data (`web.view.pool_view`, pure) and its template's escaping."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import jinja2

from jhub_spark_scaler.activity import Server
from jhub_spark_scaler.model import AppStart, Executor, MasterApp, WorkerState
from jhub_spark_scaler.policy import History, plan
from jhub_spark_scaler.reconciler import Action, Decision
from jhub_spark_scaler.web.handlers import TEMPLATES
from jhub_spark_scaler.web.query import PAGE_SIZE, answer, page_query
from jhub_spark_scaler.web.view import ATTENTION, STATE_BADGES, STATES, pool_view

from .settings import make_policy
from .test_policy import snap, worker

S = WorkerState
SETTINGS = {"max_workers": 5, "min_workers": 0, "idle_workers": 1, "prewarm_window": 600,
            "prewarm_per_server": 1}
EVIL = "<img src=x onerror=alert(1)>"
NOW = 1000.0


def view(snapshot, *, paused=False, override=None, decisions=(), servers=(), hub_error=None, **by):
    """The view as the reconciler and PoolState make it: planned with the idle workers in force."""
    idle = SETTINGS["idle_workers"] if override is None else override
    policy = make_policy(max_workers=SETTINGS["max_workers"], idle_workers=idle)
    decided = plan(snapshot, policy, History()) if snapshot else None
    return pool_view(snapshot=snapshot, plan=decided, decisions=decisions, servers=servers,
                     hub_healthy=hub_error is None, hub_error=hub_error or "", paused=paused,
                     idle_override=override, settings=SETTINGS, now=NOW, **by)


def running(app_id, *, cores=1, user="alice", started=0.0, name=None):
    return MasterApp(app_id, name or f"name-{app_id}", cores, "RUNNING" if cores else "WAITING", user,
                     int(started * 1000))


def read(w, *app_ids, at=None):
    """`w` with its own /json/ read at `at`, listing one executor per app id."""
    return w._replace(executors=tuple(Executor(a, i, f"name-{a}") for i, a in enumerate(app_ids)),
                      executors_read_at=at)


def test_view_of_a_pool():
    draining = read(worker("local-2", S.DRAINING, created_at=900.0, why="2 executors leaving"),
                    "app-1", "app-1", at=988.0)
    snapshot = snap(worker("local-1", S.BUSY, created_at=400.0), draining, worker("x", S.IDLE, ours=False),
                    apps=[MasterApp("app-1", EVIL, 2, "RUNNING", "alice", 0)], credit=1)
    servers = [Server("alice", "", 950.0, None, True), Server("bob", "gpu", 1.0, None, True)]
    decisions = [Decision(10.0, Action.START, "started 1 (local-1)", ("target 1",), seq=1),
                 Decision(20.0, Action.PAUSE, "by admin", seq=2)]
    v = view(snapshot, paused=True, override=3, decisions=decisions, servers=servers,
             paused_by="admin", idle_override_by="operator")
    json.dumps(v)  # serialisable as it is
    assert v["status"] == "paused" and v["paused"] and v["paused_by"] == "admin"
    assert v["idle_override_by"] == "operator"
    assert v["counts"]["busy"] == 1 and v["counts"]["draining"] == 1 and v["counts"]["idle"] == 0  # ours only
    assert v["foreign"] == 1
    t = v["target"]
    assert (t["idle_workers"], t["idle_override"], t["idle_workers_configured"]) == (3, 3, 1)
    assert t["prewarm_credit"] == 1
    assert (t["busy"], t["waiting"], t["wanted"], t["target"]) == (1, 0, 1 + 3 + 1, 5)
    busy, drain, foreign = v["workers"]
    assert (busy["key"], busy["cores_used"], busy["cores"], busy["age"]) == ("local-1", 1, 2, 600)
    assert busy["apps"] == [{"id": "app-1", "name": EVIL, "user": "alice"}] and busy["users"] == ["alice"]
    assert drain["apps"] == [{"id": "app-1", "name": "name-app-1", "user": "alice"}]
    assert (drain["apps_source"], drain["apps_read_at"]) == ("worker", "1970-01-01T00:16:28+00:00")
    assert drain["why"] == "2 executors leaving" and drain["attention"] == ATTENTION["draining"]
    # tracked for ours only
    assert foreign["ours"] is False and foreign["age"] is None and foreign["idle_since"] is None
    assert v["apps"] == [{"key": "app-1", "id": "app-1", "name": EVIL, "cores": 2, "state": "RUNNING",
                          "user": "alice", "hub_user": True, "workers": 2, "waiting_for": None,
                          "started": "1970-01-01T00:00:00+00:00"}]
    assert [(s["key"], s["prewarm_credit"]) for s in v["servers"]] == [("alice/", 1), ("bob/gpu", 0)]
    assert [(d["key"], d["seq"], d["action"]) for d in v["decisions"]] == [
        ("2", 2, "pause"), ("1", 1, "start")]
    assert v["decisions"][1]["at"] == "1970-01-01T00:00:10+00:00"
    assert [p["kind"] for p in v["problems"]] == ["paused"]
    assert v["problems"][0]["text"].startswith("paused by admin: ")


def test_blind_wins_over_paused_and_no_snapshot_is_blind():
    assert view(None)["status"] == "blind"
    v = view(snap(master_error="master unreachable"), paused=True)
    assert (v["status"], v["error"], v["paused"]) == ("blind", "master unreachable", True)
    blind = v["problems"][0]
    assert (blind["kind"], blind["text"]) == ("blind", "blind, changing nothing: master unreachable")


def test_apps_text_says_where_a_workers_apps_come_from():
    apps = [running("app-1"), running("app-2", user="bob"), running("app-3", cores=0)]
    pool = snap(
        read(worker("w-read", S.BUSY), "app-2", "app-1", "app-2", at=988.0),  # its own /json/
        read(worker("w-empty", S.DRAINING), at=995.0),
        worker("w-idle", S.IDLE),
        worker("w-start", S.STARTING),
        worker("w-busy", S.BUSY, cores_used=2),  # two apps hold cores: which one is not known
        read(worker("w-gone", S.DRAINING), "app-9", at=None),  # an app the master lists no more
        apps=apps,
    )
    rows = {w["handle"]: w for w in view(pool)["workers"]}
    expected = {
        "w-read": ("worker", "name-app-1, name-app-2 (worker, read 00:16:28 UTC)", ["alice", "bob"]),
        "w-empty": ("worker", "none (worker, read 00:16:35 UTC)", []),
        "w-idle": ("master", "none (master: 0 cores used)", []),
        "w-start": ("master", "none (not registered at the master)", []),
        "w-busy": ("unread", "not read: one or more of 2 apps holding cores", []),
        "w-gone": ("worker", "name-app-9 (worker)", []),
    }
    assert {h: (r["apps_source"], r["apps_text"], r["users"]) for h, r in rows.items()} == expected
    assert rows["w-gone"]["apps"] == [{"id": "app-9", "name": "name-app-9", "user": ""}]
    assert rows["w-idle"]["apps_read_at"] is None

    one = view(snap(worker("w", S.BUSY), apps=[running("app-1"), running("app-3", cores=0)]))["workers"][0]
    assert one["apps_source"] == "master"
    assert one["apps_text"] == "name-app-1 (master: the only app holding cores)"
    assert one["apps"] == [{"id": "app-1", "name": "name-app-1", "user": "alice"}]
    assert one["users"] == ["alice"]
    none = view(snap(worker("w", S.BUSY, cores_used=1)))["workers"][0]
    assert none["apps_source"] == "unread"
    assert none["apps_text"] == "not read: 1 cores used, no app holds cores"


def test_problems_in_order_with_the_rows_behind_them():
    pool = snap(*(worker(f"h{i}", S.HELD) for i in range(2)), worker("l", S.LOST),
                worker("u", S.UNSCHEDULABLE), worker("fl", S.LOST, ours=False), worker("b", S.BUSY),
                apps=[running(f"w{i}", cores=0) for i in range(5)], backend_error="cannot list workers: 503")
    v = view(pool, paused=True, hub_error="hub unreachable", paused_by=None)
    assert [(p["kind"], p["count"], p["table"], p["filter"]) for p in v["problems"]] == [
        ("blind", 1, None, None),
        ("paused", 1, None, None),
        ("saturated", 1 + 5 + 1 - 5, None, None),  # 1 busy + 5 waiting + 1 idle wanted, max 5
        ("held", 2, "workers", {"state": "held"}),
        ("lost", 1, "workers", {"state": "lost"}),  # ours only, as the counts
        ("unschedulable", 1, "workers", {"state": "unschedulable"}),
        ("hub", 1, None, None),
    ]
    texts = {p["kind"]: p["text"] for p in v["problems"]}
    assert texts["held"].startswith("2 workers held: ") and texts["lost"].startswith("1 worker lost: ")
    assert texts["paused"].startswith("paused: ") and texts["hub"] == "hub not readable: hub unreachable"
    assert all(p["kind"] in STATE_BADGES for p in v["problems"])
    assert view(snap(worker("b", S.BUSY)))["problems"] == []


def test_saturated_names_wanted_max_and_the_longest_wait():
    apps = [running("a", cores=0, started=880.0), running("b", cores=0, started=990.0),
            running("c", cores=0, started=999.6), running("d")]
    v = view(snap(*(worker(f"b{i}", S.BUSY) for i in range(5)), apps=apps))
    assert v["target"]["wanted"] == 5 + 3 + 1 and v["target"]["target"] == 5
    (full,) = v["problems"]
    assert (full["kind"], full["count"]) == ("saturated", 4)
    assert full["text"] == "wanted 9 workers, max_workers 5: 3 apps waiting, the longest 120 s"
    waits = {a["id"]: a["waiting_for"] for a in v["apps"]}
    assert waits == {"a": 120, "b": 10, "c": 0, "d": None}
    one = view(snap(*(worker(f"b{i}", S.BUSY) for i in range(5)), apps=apps[1:2]))["problems"][0]
    assert one["text"] == "wanted 7 workers, max_workers 5: 1 app waiting, for 10 s"
    nobody = view(snap(*(worker(f"b{i}", S.BUSY) for i in range(5))), override=2)["problems"][0]
    assert nobody["text"] == "wanted 7 workers, max_workers 5: no app waiting"
    assert view(snap(*(worker(f"b{i}", S.BUSY) for i in range(4))))["problems"] == []  # wanted 5: not over


def test_users_add_up_servers_apps_cores_and_the_workers_running_their_apps():
    apps = [running("a1", cores=4), running("a2", cores=0), running("c1", cores=2, user="carol")]
    pool = snap(read(worker("w1", S.BUSY), "a1", at=999.0), read(worker("w2", S.BUSY), "a1", "c1", at=999.0),
                worker("w3", S.BUSY, cores_used=2), apps=apps)
    servers = [Server("alice", "", 950.0, None, True), Server("alice", "gpu", 960.0, None, True),
               Server("dave", "", 10.0, None, True)]
    v = view(pool, servers=servers)
    users = {u["user"]: u for u in v["users"]}
    assert [u["key"] for u in v["users"]] == ["alice", "carol", "dave"]
    assert users["alice"] == {"key": "alice", "user": "alice", "hub_user": True, "servers": 2,
                              "server_names": ["", "gpu"], "apps": 2, "cores": 4, "waiting_apps": 1,
                              "workers": 2, "prewarm_credit": 2}
    assert (users["carol"]["hub_user"], users["carol"]["servers"], users["carol"]["workers"]) == (False, 0, 1)
    assert (users["dave"]["apps"], users["dave"]["prewarm_credit"]) == (0, 0)  # started long ago
    assert {a["id"]: (a["hub_user"], a["workers"]) for a in v["apps"]} == {
        "a1": (True, 2), "a2": (True, 0), "c1": (False, 1)}


def test_every_state_has_one_attention_and_one_badge():
    assert set(ATTENTION) == set(STATES) and set(STATES) <= set(STATE_BADGES)
    assert sorted(ATTENTION, key=ATTENTION.get)[:3] == ["lost", "held", "unschedulable"]
    red = ("lost", "held", "unschedulable", "blind", "saturated", "hub")
    assert {STATE_BADGES[s] for s in red} == {"danger"}


def test_page_escapes_spark_and_user_values():
    snapshot = snap(worker("local-1", S.BUSY, why=EVIL),
                    apps=[MasterApp("app-1", EVIL, 1, "RUNNING", EVIL, 0)])
    v = view(snapshot, decisions=[Decision(1.0, Action.PAUSE, f"by {EVIL}", seq=1)],
             servers=[Server(EVIL, "", 990.0, None, True)])
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=True,
                             undefined=jinja2.StrictUndefined)  # as the service's own
    html = env.get_template("pool.html").render(
        hub_prefix="/hub/", prefix="/services/spark-scaler/", user=EVIL, pool=answer(v, page_query()),
        xsrf='x"y', poll_ms=2000, badges=STATE_BADGES, page_size=PAGE_SIZE, chart="",
        static_url=lambda path: "/services/spark-scaler/static/" + path)
    assert EVIL not in html
    assert html.count("&lt;img src=x onerror=alert(1)&gt;") >= 5  # app name, user, why, server user, decision
    assert 'data-xsrf="x&#34;y"' in html
    assert '<script src="/services/spark-scaler/static/pool.js" defer></script>' in html
    assert "<script>" not in html  # no inline script: all of it in static/pool.js
    script = (Path(TEMPLATES).parent / "static" / "pool.js").read_text()
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "ContextualFragment"):
        assert sink not in html and sink not in script, sink


def test_a_server_whose_credit_an_app_used_up_shows_none():
    snapshot = dataclasses.replace(snap(), app_starts=(AppStart(960.0, "root"),))
    servers = [Server("alice", "", 950.0, None, True), Server("bob", "", 970.0, None, True)]
    v = view(snapshot, servers=servers)
    assert [(s["user"], s["prewarm_credit"]) for s in v["servers"]] == [("alice", 0), ("bob", 1)]
