"""The admin page's data (`web.view.pool_view`, pure) and its template's escaping."""

from __future__ import annotations

import dataclasses
import json

import jinja2

from jhub_spark_scaler.activity import Server
from jhub_spark_scaler.model import Executor, MasterApp, WorkerState
from jhub_spark_scaler.policy import History, plan
from jhub_spark_scaler.reconciler import Action, Decision
from jhub_spark_scaler.web.handlers import TEMPLATES
from jhub_spark_scaler.web.view import pool_view

from .settings import make_policy
from .test_policy import snap, worker

S = WorkerState
SETTINGS = {"max_workers": 5, "min_workers": 0, "idle_workers": 1, "prewarm_window": 600,
            "prewarm_per_server": 1}
EVIL = "<img src=x onerror=alert(1)>"


def view(snapshot, *, paused=False, override=None, decisions=(), servers=()):
    decided = plan(snapshot, make_policy(max_workers=5), History()) if snapshot else None
    return pool_view(snapshot=snapshot, plan=decided, decisions=decisions, servers=servers, hub_healthy=True,
                     hub_error="", paused=paused, idle_override=override, settings=SETTINGS, now=1000.0)


def test_view_of_a_pool():
    draining = worker("local-2", S.DRAINING, created_at=900.0, why="2 executors leaving")._replace(
        executors=(Executor("app-1", 0, EVIL), Executor("app-1", 1, EVIL)))
    snapshot = snap(worker("local-1", S.BUSY, created_at=400.0), draining, worker("x", S.IDLE, ours=False),
                    apps=[MasterApp("app-1", EVIL, 2, "RUNNING", "alice", 0)], credit=1)
    servers = [Server("alice", "", 950.0, None, True), Server("bob", "gpu", 1.0, None, True)]
    decisions = [Decision(10.0, Action.START, "started 1 (local-1)", ("target 1",)),
                 Decision(20.0, Action.PAUSE, "by admin")]
    v = view(snapshot, paused=True, override=3, decisions=decisions, servers=servers)
    json.dumps(v)  # serialisable as it is
    assert v["status"] == "paused" and v["paused"]
    assert v["counts"]["busy"] == 1 and v["counts"]["draining"] == 1 and v["counts"]["idle"] == 0  # ours only
    assert v["foreign"] == 1
    assert v["foreign"] == 1
    assert v["target"]["idle_workers"] == 3 and v["target"]["idle_override"] == 3
    assert v["target"]["idle_workers_configured"] == 1 and v["target"]["prewarm_credit"] == 1
    busy, drain, foreign = v["workers"]
    assert (busy["cores_used"], busy["cores"], busy["age"], busy["apps"]) == (1, 2, 600, None)
    assert drain["apps"] == [EVIL] and drain["why"] == "2 executors leaving"
    # tracked for ours only
    assert foreign["ours"] is False and foreign["age"] is None and foreign["idle_since"] is None
    assert v["apps"] == [{"id": "app-1", "name": EVIL, "cores": 2, "state": "RUNNING", "user": "alice"}]
    assert [(s["user"], s["prewarm_credit"]) for s in v["servers"]] == [("alice", 1), ("bob", 0)]
    assert [d["action"] for d in v["decisions"]] == ["pause", "start"]  # newest first
    assert v["decisions"][1]["at"] == "1970-01-01T00:00:10+00:00"


def test_blind_wins_over_paused_and_no_snapshot_is_blind():
    assert view(None)["status"] == "blind"
    v = view(snap(master_error="master unreachable"), paused=True)
    assert (v["status"], v["error"], v["paused"]) == ("blind", "master unreachable", True)


def test_page_escapes_spark_and_user_values():
    snapshot = snap(worker("local-1", S.BUSY, why=EVIL),
                    apps=[MasterApp("app-1", EVIL, 1, "RUNNING", EVIL, 0)])
    v = view(snapshot, decisions=[Decision(1.0, Action.PAUSE, f"by {EVIL}")],
             servers=[Server(EVIL, "", 990.0, None, True)])
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=True)
    html = env.get_template("pool.html").render(
        hub_prefix="/hub/", prefix="/services/spark-scaler/", user=EVIL, pool=v, xsrf='x"y', poll_ms=2000)
    assert EVIL not in html
    assert html.count("&lt;img src=x onerror=alert(1)&gt;") >= 5  # app name, user, why, server user, decision
    assert 'data-xsrf="x&#34;y"' in html
    assert "innerHTML" not in html


def test_a_server_whose_credit_an_app_used_up_shows_none():
    snapshot = dataclasses.replace(snap(), app_starts=(960.0,))
    servers = [Server("alice", "", 950.0, None, True), Server("bob", "", 970.0, None, True)]
    v = view(snapshot, servers=servers)
    assert [(s["user"], s["prewarm_credit"]) for s in v["servers"]] == [("alice", 0), ("bob", 1)]
