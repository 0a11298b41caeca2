"""Filtering, sorting and paging the admin page's tables (`web.query`, pure)."""

from __future__ import annotations

import pytest

from jhub_spark_scaler.activity import Server
from jhub_spark_scaler.model import WorkerState
from jhub_spark_scaler.reconciler import Action, Decision
from jhub_spark_scaler.web.query import PAGE_SIZE, TABLES, answer, page_query, parse

from .test_policy import snap, worker
from .test_web_view import read, running, view

S = WorkerState


def pool():
    """Ours: 2 held, 1 lost, busy and idle of several ages; 1 foreign; alice's and bob's apps."""
    workers = [
        worker("busy-old", S.BUSY, created_at=100.0), worker("idle-new", S.IDLE, created_at=900.0),
        worker("held-new", S.HELD, created_at=800.0), worker("held-old", S.HELD, created_at=200.0),
        worker("lost", S.LOST, created_at=500.0), worker("idle-old", S.IDLE, created_at=300.0),
        read(worker("busy-bob", S.BUSY, created_at=600.0), "app-b", at=999.0),
        worker("fi", S.IDLE, ours=False),
    ]
    apps = [running("app-a", cores=2, started=10.0), running("app-b", user="bob", started=20.0),
            running("app-w", cores=0, started=900.0), running("app-v", cores=0, user="bob", started=950.0)]
    decisions = [Decision(float(i), Action.START if i % 2 else Action.RETIRE, f"d{i}", seq=i)
                 for i in range(1, 13)]
    servers = [Server("bob", "", 990.0, None, True), Server("alice", "", 995.0, None, True),
               Server("alice", "x", None, "spawn", False)]
    return view(snap(*workers, apps=apps), decisions=decisions, servers=servers)


def ask(**arguments):
    """api/pool's answer to these query arguments (a value per name; lists as given)."""
    return answer(pool(), parse({k.replace("__", "."): v if isinstance(v, list) else [v]
                                 for k, v in arguments.items()}))


def keys(rows):
    return [r["key"] for r in rows]


def test_defaults_workers_by_attention_then_age_users_by_cores_decisions_newest_first():
    a = ask()
    assert keys(a["workers"]) == ["lost", "held-old", "held-new", "busy-old", "busy-bob", "idle-old",
                                  "idle-new", "master:fi"]  # age unknown: last of its state
    assert keys(a["decisions"])[:3] == ["12", "11", "10"]
    assert keys(a["users"]) == ["alice", "bob"]  # 2 cores, then 1
    assert keys(a["apps"]) == ["app-w", "app-v", "app-a", "app-b"]  # the longest waiting first
    assert a["tables"]["workers"] == {"total": 8, "matched": 8, "offset": 0, "limit": None,
                                      "sort": "attention"}
    assert {name: t["sort"] for name, t in a["tables"].items()} == {
        name: t.default_sort for name, t in TABLES.items()}
    assert a["filters"] == {"state": [], "user": "", "app": "", "action": []}


def test_filters_by_state_user_app_and_action():
    a = ask(state="held,lost", action=["start", "retire"])
    assert keys(a["workers"]) == ["lost", "held-old", "held-new"] and len(a["decisions"]) == 12
    assert a["tables"]["workers"] == {"total": 8, "matched": 3, "offset": 0, "limit": None,
                                      "sort": "attention"}
    assert a["filters"]["state"] == ["held", "lost"] and len(a["apps"]) == 4  # state: workers only
    bob = ask(user="bob")
    assert keys(bob["workers"]) == ["busy-bob"]  # known apps only: the busy worker of alice's one app is not
    assert keys(bob["apps"]) == ["app-v", "app-b"] and keys(bob["servers"]) == ["bob/"]
    assert keys(bob["users"]) == ["bob"] and bob["tables"]["users"]["matched"] == 1
    assert len(bob["decisions"]) == 12  # decisions have no user
    by_name = ask(app="name-app-b")
    assert keys(by_name["workers"]) == ["busy-bob"] and keys(by_name["apps"]) == ["app-b"]
    assert ask(app="app-a")["workers"] == []  # busy-old runs app-a or app-b: not read, not counted
    assert keys(ask(action="start")["decisions"])[:2] == ["11", "9"]
    assert ask(state="")["tables"]["workers"]["matched"] == 8  # empty: no filter


def test_sorts_put_nulls_last_either_way():
    ages = [r["key"] for r in ask(workers__sort="age")["workers"]]
    assert ages[0] == "idle-new" and ages[-1] == "master:fi"
    ages = [r["key"] for r in ask(workers__sort="-age")["workers"]]
    assert ages[0] == "busy-old" and ages[-1] == "master:fi"
    waits = ask(apps__sort="waiting_for")["apps"]
    assert keys(waits) == ["app-v", "app-w", "app-a", "app-b"]  # 50 s, 100 s, then running ones by id
    assert keys(ask(sort="-attention")["workers"])[:3] == ["idle-old", "idle-new", "master:fi"]
    assert keys(ask(decisions__sort="seq")["decisions"])[:2] == ["1", "2"]


def test_an_unprefixed_sort_orders_the_tables_that_have_the_column():
    a = ask(sort="user")
    assert keys(a["servers"]) == ["alice/", "alice/x", "bob/"] and keys(a["users"]) == ["alice", "bob"]
    assert [r["user"] for r in a["apps"]] == ["alice", "alice", "bob", "bob"]
    assert a["tables"]["workers"]["sort"] == "attention" and a["tables"]["apps"]["sort"] == "user"
    prefixed = ask(sort="-user", servers__sort="name")
    assert prefixed["tables"]["servers"]["sort"] == "name" and prefixed["tables"]["users"]["sort"] == "-user"


def test_paging_with_the_prefixed_value_winning():
    a = ask(limit="2", offset="1", decisions__limit="5")
    assert keys(a["workers"]) == ["held-old", "held-new"]
    assert a["tables"]["workers"] == {"total": 8, "matched": 8, "offset": 1, "limit": 2, "sort": "attention"}
    assert keys(a["decisions"]) == ["11", "10", "9", "8", "7"]
    assert ask(offset="100")["workers"] == [] and ask(offset="100")["tables"]["workers"]["matched"] == 8
    page = answer(pool(), page_query())
    assert {t["limit"] for t in page["tables"].values()} == {PAGE_SIZE}


@pytest.mark.parametrize("arguments, message", [
    ({"state": ["held,sleepy"]},
     "state must be one or more of starting, idle, busy, draining, held, drained, lost, unschedulable: "
     "got 'sleepy'"),
    ({"action": ["start,nap"]}, "action must be one or more of start, retire, "),
    ({"limit": ["0"]}, "limit must be a whole number from 1 to 5000: got '0'"),
    ({"workers.limit": ["5001"]}, "workers.limit must be a whole number from 1 to 5000: got '5001'"),
    ({"apps.offset": ["-1"]}, "apps.offset must be a whole number >= 0: got '-1'"),
    ({"offset": ["ten"]}, "offset must be a whole number >= 0: got 'ten'"),
    ({"workers.sort": ["user"]}, "workers.sort must be one of handle, host, state, attention, "),
    ({"sort": ["-colour"]}, "sort must be a column of a table ("),
    ({"user": ["a", "b"]}, "user given 2 times: give it once"),
    ({"limt": ["5"]},
     "unknown parameter 'limt': use state, user, app, action, sort, limit, offset, "
     "or <table>.sort, .limit, .offset with a table of workers, apps, servers, users, decisions"),
    ({"pods.limit": ["5"]}, "unknown parameter 'pods.limit': "),
])
def test_bad_arguments_get_one_line_naming_the_parameter(arguments, message):
    with pytest.raises(ValueError) as raised:
        parse(arguments)
    assert str(raised.value).startswith(message) and "\n" not in str(raised.value)


def test_the_hubs_xsrf_argument_is_not_a_query():
    assert parse({"_xsrf": ["token"]}) == parse({})
