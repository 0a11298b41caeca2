"""Tests of `observe`: joining backend and master, classifying each worker, the Snapshot.

Master and worker answers come from the real Spark 4.3.0 samples in
`tests/data/spark-4.3.0/` where one fits, and from small builders otherwise.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from jhub_spark_scaler.model import BackendWorker, Executor, MasterWorker, WorkerState, WorkerStatus
from jhub_spark_scaler.observe import (
    ExecutorRead,
    ObserveSettings,
    build_snapshot,
    busy_workers,
    classify,
    foreign_worker,
    join,
    next_reads,
    pick_reads,
    webui_url,
)
from jhub_spark_scaler.policy import History, plan
from jhub_spark_scaler.spark import parse_master, parse_worker

from .settings import make_policy

S = WorkerState
DATA = Path(__file__).parent / "data" / "spark-4.3.0"
SETTINGS = ObserveSettings(start_timeout=120.0, node_wait_timeout=600.0, held_after=30.0)


def master(name: str):
    return parse_master(json.loads((DATA / name).read_text()))


def worker_json(name: str) -> WorkerStatus:
    return parse_worker(json.loads((DATA / name).read_text()))


def entry(status, host: str, port: int) -> MasterWorker:
    """The master's entry for host:port in a parsed sample (exactly one)."""
    (m,) = [w for w in status.workers if (w.host, w.port) == (host, port)]
    return m


def mw(host: str, port: int = 7078, state: str = "ALIVE", *, cores_used: int = 0,
       heartbeat_s: float = 1000.0) -> MasterWorker:
    return MasterWorker(
        id=f"worker-20261125000000-{host}-{port}", host=host, port=port,
        webui_address=f"http://{host}:8081", cores=2, cores_used=cores_used, memory=1024,
        memory_used=0, state=state, last_heartbeat=int(heartbeat_s * 1000),
    )


def bw(handle: str, host: str, port: int = 0, *, created_at: float = 900.0, running: bool = True,
       retiring_since: float | None = None, problem: str = "") -> BackendWorker:
    return BackendWorker(handle=handle, host=host, created_at=created_at, running=running, port=port,
                         retiring_since=retiring_since, problem=problem)


def pairs(joined) -> dict[str, str | None]:
    """handle -> the paired master entry's id."""
    return {b.handle: (m.id if m else None) for b, m in joined[0]}


def executors(*app_ids: str) -> WorkerStatus:
    return WorkerStatus("worker-x", tuple(Executor(a, i, "app") for i, a in enumerate(app_ids)))


# -- join -------------------------------------------------------------------------


def test_join_by_host_and_port_on_a_shared_host():
    m = master("02_master_3workers_idle.json")  # three workers, all on 127.0.0.1
    backend = [bw(f"local-{p}", "127.0.0.1", p) for p in (27078, 27079, 27080)]
    joined = join(m.workers, backend)
    assert pairs(joined) == {
        "local-27078": "worker-20261125141435-127.0.0.1-27078",
        "local-27079": "worker-20261125141434-127.0.0.1-27079",
        "local-27080": "worker-20261125141435-127.0.0.1-27080",
    }
    assert joined[1] == []


def test_join_by_host_alone_when_the_backend_does_not_know_the_port():
    m = master("19_master_after_graceful_scaledown_distinct_ip.json")
    joined = join(m.workers, [bw("local-2", "127.0.0.2", 0, created_at=1795616800.0)])
    assert pairs(joined) == {"local-2": "worker-20261125142652-127.0.0.2-27079"}


def test_join_with_a_known_port_does_not_match_another_port_on_the_same_host():
    joined = join([mw("10.0.0.5", 7078)], [bw("pod-a", "10.0.0.5", 7079)])
    assert pairs(joined) == {"pod-a": None}
    assert [m.host for m in joined[1]] == ["10.0.0.5"]  # the other one is someone else's


def test_join_without_a_host_matches_nothing():
    joined = join([mw("")], [bw("pod-pending", "")])
    assert pairs(joined) == {"pod-pending": None}


def test_join_prefers_the_live_entry_over_a_lingering_dead_one():
    old = mw("10.0.0.7", state="DEAD", heartbeat_s=2000.0)
    new = mw("10.0.0.7", port=7079, cores_used=1, heartbeat_s=1500.0)
    joined = join([old, new], [bw("pod-b", "10.0.0.7", 0, created_at=1400.0)])
    assert pairs(joined) == {"pod-b": new.id}
    assert joined[1] == []  # the DEAD entry is not reported as a foreign worker


@pytest.mark.parametrize("port", [0, 27080])
def test_a_lingering_dead_entry_of_a_reused_host_is_not_matched_to_a_new_worker(port):
    m = master("19_master_after_graceful_scaledown_distinct_ip.json")
    dead = entry(m, "127.0.0.3", 27080)
    assert dead.state == "DEAD"
    started = dead.last_heartbeat / 1000 + 30.0  # a new worker on the freed address
    joined = join(m.workers, [bw("local-3", "127.0.0.3", port, created_at=started)])
    assert pairs(joined) == {"local-3": None}
    assert [f.host for f in joined[1]] == ["127.0.0.2"]
    snapshot = build_snapshot(now=started + 5.0, master=m, joined=joined, worker_statuses={},
                              settings=SETTINGS)
    assert [(w.handle, w.state) for w in snapshot.workers if w.ours] == [("local-3", S.STARTING)]


def test_a_dead_entry_of_our_still_running_worker_is_matched_and_lost():
    m = master("19_master_after_graceful_scaledown_distinct_ip.json")
    dead = entry(m, "127.0.0.3", 27080)
    b = bw("local-3", "127.0.0.3", 27080, created_at=dead.last_heartbeat / 1000 - 60.0)
    (pair,), _ = join(m.workers, [b])
    assert pair == (b, dead)
    w = classify(b, dead, None, dead.last_heartbeat / 1000 + 5.0, SETTINGS)
    assert w.state is S.LOST and "DEAD" in w.why


def test_join_returns_foreign_workers_that_are_not_dead():
    m = master("14_master_after_http_kill_host_127.0.0.2.json")
    backend = [bw("local-1", "127.0.0.1", 27079), bw("local-2", "127.0.0.1", 27078)]
    paired, foreign = join(m.workers, backend)
    assert [b.handle for b, _ in paired] == ["local-1", "local-2"]
    assert all(mm is not None and mm.state == "ALIVE" for _, mm in paired)
    # 127.0.0.2:27081 is DECOMMISSIONED and nobody's here: foreign; 127.0.0.1:27080 is DEAD: dropped
    assert [(f.host, f.port, f.state) for f in foreign] == [("127.0.0.2", 27081, "DECOMMISSIONED")]


def test_join_with_no_backend_workers_makes_every_live_entry_foreign():
    m = master("04_master_app1_running.json")
    paired, foreign = join(m.workers, [])
    assert paired == []
    assert sorted(f.port for f in foreign) == [27078, 27079, 27080]


# -- classify ---------------------------------------------------------------------


def test_starting_before_start_timeout_with_the_backend_problem_as_why():
    b = bw("pod-1", "10.0.0.1", created_at=1000.0, problem="ContainerCreating")
    w = classify(b, None, None, 1000.0 + 119.0, SETTINGS)
    assert (w.state, w.why, w.master, w.backend) == (S.STARTING, "ContainerCreating", None, b)


@pytest.mark.parametrize("problem, why", [("ErrImagePull: no such image", "ErrImagePull: no such image"),
                                          ("", "not registered within start_timeout")])
def test_unschedulable_after_start_timeout(problem, why):
    b = bw("pod-1", "", created_at=1000.0, problem=problem)
    w = classify(b, None, None, 1000.0 + 120.0, SETTINGS)
    assert (w.state, w.why) == (S.UNSCHEDULABLE, why)


def test_start_timeout_runs_from_when_the_master_came_back_or_was_replaced_if_later():
    b = bw("pod-1", "10.0.0.1", created_at=1000.0)
    assert classify(b, None, None, 5000.0, SETTINGS, master_since=4900.0).state is S.STARTING
    w = classify(b, None, None, 5000.0, SETTINGS, master_since=4880.0)
    assert (w.state, w.why) == (S.UNSCHEDULABLE, "not registered within start_timeout")
    young = bw("pod-2", "10.0.0.2", created_at=4950.0)  # started after the master returned
    assert classify(young, None, None, 4950.0 + 119.0, SETTINGS, master_since=4900.0).state is S.STARTING
    assert classify(young, None, None, 4950.0 + 120.0, SETTINGS, master_since=4900.0).state is S.UNSCHEDULABLE


def test_idle_and_busy_from_the_master_sample():
    m = master("04_master_app1_running.json")
    now = 1795616200.0
    idle = classify(bw("l8", "127.0.0.1", 27078), entry(m, "127.0.0.1", 27078), None, now, SETTINGS)
    busy = classify(bw("l0", "127.0.0.1", 27080), entry(m, "127.0.0.1", 27080), None, now, SETTINGS)
    assert idle.state is S.IDLE and idle.master.cores_used == 0
    assert busy.state is S.BUSY and busy.master.cores_used == 1


def test_draining_while_executors_remain_then_held_after_held_after():
    m = master("13_master_after_sigpwr_worker3_app_without_decom.json")
    e = entry(m, "127.0.0.1", 27080)
    assert e.state == "DECOMMISSIONED"
    status = worker_json("05_worker3_with_executor.json")
    b = bw("l0", "127.0.0.1", 27080, retiring_since=5000.0)
    draining = classify(b, e, status, 5000.0 + 29.0, SETTINGS)
    assert draining.state is S.DRAINING
    assert "app-20261125141527-0000" in draining.why
    assert draining.executors == status.executors
    held = classify(b, e, status, 5000.0 + 30.0, SETTINGS)
    assert held.state is S.HELD
    assert "app-20261125141527-0000" in held.why and "30 s" in held.why


def test_held_counts_from_creation_when_decommissioned_by_someone_else():
    b = bw("l0", "10.0.0.1", created_at=1000.0)  # never marked retiring by us
    w = classify(b, mw("10.0.0.1", state="DECOMMISSIONED", cores_used=1), executors("app-1", "app-2"),
                 1000.0 + 31.0, SETTINGS)
    assert w.state is S.HELD and "app-1, app-2" in w.why


def test_drained_when_its_own_json_lists_no_executors_despite_stale_master_cores_used():
    m = master("09_master_after_sigpwr_busy_worker1.json")
    e = entry(m, "127.0.0.1", 27078)
    assert (e.state, e.cores_used) == ("DECOMMISSIONED", 1)  # stale coresused
    own = worker_json("03_worker1_idle.json")
    assert own.executors == ()
    for retiring_since in (None, 1795616430.0):
        b = bw("local-1", "127.0.0.1", 27078, retiring_since=retiring_since)
        w = classify(b, e, own, 1795616440.0, SETTINGS)
        assert w.state is S.DRAINED, retiring_since
        assert w.executors == ()


def test_drained_when_retiring_and_no_longer_listed_at_the_master():
    b = bw("l1", "10.0.0.1", retiring_since=1000.0)
    assert classify(b, None, executors(), 1010.0, SETTINGS).state is S.DRAINED


def test_draining_while_the_master_still_says_alive():
    b = bw("l1", "10.0.0.1", retiring_since=1000.0)
    w = classify(b, mw("10.0.0.1", state="ALIVE"), executors(), 1000.0 + 300.0, SETTINGS)
    assert w.state is S.DRAINING and "DECOMMISSIONED" in w.why


READ_ERROR = "cannot reach Spark worker at x: refused"


@pytest.mark.parametrize("status, why", [(None, ""), (READ_ERROR, f"cannot read the worker: {READ_ERROR}")])
def test_draining_when_a_retiring_worker_cannot_be_read(status, why):
    b = bw("l1", "10.0.0.1", retiring_since=1000.0)
    w = classify(b, mw("10.0.0.1", state="DECOMMISSIONED"), status, 1000.0 + 300.0, SETTINGS)
    assert (w.state, w.why, w.executors) == (S.DRAINING, why, None)


@pytest.mark.parametrize("m", [None, mw("10.0.0.1", cores_used=1), mw("10.0.0.1", state="DECOMMISSIONED")])
def test_lost_when_the_process_or_pod_is_gone(m):
    b = bw("l1", "10.0.0.1", running=False, retiring_since=1000.0 if m else None)
    w = classify(b, m, executors("app-1"), 1010.0, SETTINGS)
    assert w.state is S.LOST and "gone" in w.why


def test_lost_says_the_runtimes_reason_when_it_gave_one():
    b = bw("l1", "10.0.0.1", running=False, problem="OOMKilled: exit code 137")
    w = classify(b, mw("10.0.0.1", cores_used=1), None, 1010.0, SETTINGS)
    assert (w.state, w.why) == (S.LOST, "OOMKilled: exit code 137")


def test_lost_when_the_master_declared_it_dead_from_the_sample():
    m = master("08_master_after_sigterm_decommissioned_worker1.json")
    e = entry(m, "127.0.0.1", 27078)
    b = bw("local-1", "127.0.0.1", 27078, retiring_since=1.0)
    w = classify(b, e, worker_json("03_worker1_idle.json"), 1795616230.0, SETTINGS)
    assert w.state is S.LOST and w.why == "the master declared it DEAD"


@pytest.mark.parametrize("state", ["UNKNOWN", "RECOVERING", "SOMETHING_NEW"])
def test_an_unknown_master_state_is_protected_as_busy(state):
    w = classify(bw("l1", "10.0.0.1"), mw("10.0.0.1", state=state, cores_used=0), None, 1000.0, SETTINGS)
    assert w.state is S.BUSY and state in w.why


def test_foreign_worker_states():
    assert foreign_worker(mw("h", cores_used=0)).state is S.IDLE
    assert foreign_worker(mw("h", cores_used=2)).state is S.BUSY
    w = foreign_worker(mw("h", state="DECOMMISSIONED"))
    assert w.state is S.DRAINING and not w.ours and w.handle == "master:worker-20261125000000-h-7078"


# -- build_snapshot ----------------------------------------------------------------


def test_build_snapshot_from_the_busy_decommission_sample():
    m = master("09_master_after_sigpwr_busy_worker1.json")
    backend = [
        bw("local-1", "127.0.0.1", 27078, retiring_since=1795616430.0),
        bw("local-2", "127.0.0.1", 27079),
    ]
    joined = join(m.workers, backend)
    snapshot = build_snapshot(
        now=1795616440.0, master=m, joined=joined,
        worker_statuses={"local-1": worker_json("03_worker1_idle.json")},
        settings=SETTINGS, prewarm_credit=2,
    )
    states = {w.handle: (w.state, w.ours) for w in snapshot.workers}
    assert states == {
        "local-1": (S.DRAINED, True),
        "local-2": (S.IDLE, True),
        "master:worker-20261125141435-127.0.0.1-27080": (S.IDLE, False),
    }
    assert [a.id for a in snapshot.apps] == ["app-20261125141926-0004"]
    assert (snapshot.taken_at, snapshot.prewarm_credit, snapshot.blind) == (1795616440.0, 2, False)
    # and the policy stops the drained worker; target 3 = 1 waiting + (1 + 2 prewarm) idle - 1 foreign
    p = plan(snapshot, make_policy(max_workers=10, idle_workers=1, count_foreign_workers=True), History())
    assert p.stop == ("local-1",) and p.start == 2 and not p.retire
    assert (p.demand.waiting, p.demand.foreign_capacity, p.demand.target) == (1, 1, 3)
    # by default the foreign idle worker does not count: target 4 = 1 waiting + 3 idle
    p = plan(snapshot, make_policy(max_workers=10, idle_workers=1), History())
    assert (p.demand.foreign_capacity, p.demand.target, p.start) == (0, 4, 3)


def test_build_snapshot_without_a_master_is_blind_and_has_no_apps():
    joined = join([], [bw("local-1", "127.0.0.1", created_at=1000.0)])
    snapshot = build_snapshot(now=1010.0, master=None, joined=joined, worker_statuses={},
                              settings=SETTINGS, master_error="cannot reach Spark master")
    assert snapshot.blind and snapshot.apps == ()
    assert [w.state for w in snapshot.workers] == [S.STARTING]


def test_build_snapshot_passes_a_worker_read_error_through():
    m = master("06_master_after_sigpwr_idle_worker1.json")
    joined = join(m.workers, [bw("local-1", "127.0.0.1", 27078, retiring_since=1.0)])
    snapshot = build_snapshot(now=2.0, master=m, joined=joined, settings=SETTINGS,
                              worker_statuses={"local-1": "Spark worker at x answered HTTP 500"},
                              backend_error="")
    (ours,) = [w for w in snapshot.workers if w.ours]
    assert ours.state is S.DRAINING and "HTTP 500" in ours.why
    assert len(snapshot.workers) == 3


# -- busy workers' own /json/: which ones to read, what is kept, what is shown ----------------


def busy(*workers: str | tuple[str, int]) -> dict:
    """Busy workers as `busy_workers` gives them, in this order: a handle (1 core used) or
    (handle, cores used)."""
    found = {}
    for i, w in enumerate(workers):
        handle, cores_used = (w, 1) if isinstance(w, str) else w
        found[handle] = (bw(handle, f"10.1.0.{i}"), mw(f"10.1.0.{i}", cores_used=cores_used))
    return found


def test_busy_workers_are_those_the_master_calls_busy_ours_and_foreign():
    entries = [mw(f"10.0.0.{i}", cores_used=c, state=st) for i, (c, st) in enumerate(
        [(1, "ALIVE"), (0, "ALIVE"), (2, "ALIVE"), (1, "DECOMMISSIONED"), (1, "ALIVE"), (1, "DEAD"),
         (1, "UNKNOWN"), (3, "ALIVE")])]
    backend = [bw("busy", "10.0.0.0"), bw("idle", "10.0.0.1"), bw("retiring", "10.0.0.2", retiring_since=1.0),
               bw("decommissioned", "10.0.0.3"), bw("gone", "10.0.0.4", running=False),
               bw("dead", "10.0.0.5", created_at=0.0), bw("unknown", "10.0.0.6")]  # 10.0.0.7: foreign
    joined = join(entries, backend)
    found = busy_workers(joined)
    assert found == {"busy": (backend[0], entries[0]), f"master:{entries[7].id}": (None, entries[7])}
    assert [webui_url(*w) for w in found.values()] == ["http://10.0.0.0:8081", "http://10.0.0.7:8081"]
    # the same workers classify calls busy, but for the one whose master state is unknown
    snapshot = build_snapshot(now=1000.0, master=None, joined=joined, worker_statuses={},
                              settings=SETTINGS)
    busy_alive = {w.handle for w in snapshot.workers if w.state is S.BUSY and w.master.state == "ALIVE"}
    assert busy_alive == set(found)


def test_pick_reads_never_read_first_then_changed_cores_then_the_oldest_read_within_the_budget():
    workers = busy("old", ("changed", 2), "new-a", "recent", "new-b", "older")
    reads = {"old": ExecutorRead(10.0, 1, ()), "changed": ExecutorRead(30.0, 1, ()),
             "recent": ExecutorRead(40.0, 1, ()), "older": ExecutorRead(5.0, 1, None)}
    assert pick_reads(workers, reads, 8) == ["new-a", "new-b", "changed", "older", "old", "recent"]
    assert pick_reads(workers, reads, 3) == ["new-a", "new-b", "changed"]
    assert pick_reads(workers, reads, 0) == [] and pick_reads({}, reads, 8) == []


def test_reads_go_round_every_busy_worker_and_an_unreadable_one_never_starves_the_others():
    workers = busy(*(f"w{i}" for i in range(5)))
    reads: dict[str, ExecutorRead] = {}
    order = []
    for cycle in range(5):
        chosen = pick_reads(workers, reads, 2)
        order.append(chosen)
        results = {h: "refused" if h == "w0" else executors("app-1") for h in chosen}
        reads = next_reads(workers, reads, results, float(cycle))
    # the least recently read first, ties in the master's order
    assert order == [["w0", "w1"], ["w2", "w3"], ["w4", "w0"], ["w1", "w2"], ["w3", "w0"]]
    assert reads["w0"] == ExecutorRead(4.0, 1, None), "a failed read keeps nothing to show"
    assert reads["w4"].executors == executors("app-1").executors


def test_next_reads_drops_workers_no_longer_busy_and_stale_reads_for_good():
    reads = {"gone": ExecutorRead(1.0, 1, ()), "same": ExecutorRead(2.0, 1, executors("a").executors),
             "changed": ExecutorRead(3.0, 1, executors("b").executors)}
    kept = next_reads(busy("same", ("changed", 2), "read"), reads,
                      {"read": executors("c")}, 9.0)
    assert kept == {"same": reads["same"], "changed": ExecutorRead(3.0, 1, None),
                    "read": ExecutorRead(9.0, 1, executors("c").executors)}
    # back to the cores it had when read: its apps may have changed meanwhile, still nothing shown
    assert next_reads(busy("changed"), kept, {}, 10.0) == {"changed": ExecutorRead(3.0, 1, None)}


def test_a_busy_workers_read_is_shown_while_its_cores_used_holds_and_changes_no_state():
    backend = [bw("ours", "10.0.0.1"), bw("stale", "10.0.0.2"), bw("failed", "10.0.0.3"),
               bw("now-idle", "10.0.0.4")]
    entries = [mw("10.0.0.1", cores_used=2), mw("10.0.0.2", cores_used=2), mw("10.0.0.3", cores_used=1),
               mw("10.0.0.4"), mw("10.0.0.9", cores_used=1)]
    foreign = f"master:{entries[4].id}"
    apps = executors("app-1", "app-2").executors
    reads = {"ours": ExecutorRead(900.0, 2, apps), "stale": ExecutorRead(900.0, 1, apps),
             "failed": ExecutorRead(900.0, 1, None), "now-idle": ExecutorRead(900.0, 1, apps),
             foreign: ExecutorRead(950.0, 1, apps)}
    joined = join(entries, backend)
    status = master("04_master_app1_running.json")
    unread = build_snapshot(now=1000.0, master=status, joined=joined, worker_statuses={}, settings=SETTINGS)
    read = build_snapshot(now=1000.0, master=status, joined=joined, worker_statuses={}, settings=SETTINGS,
                          busy_reads=reads)
    shown = {w.handle: (w.executors, w.executors_read_at) for w in read.workers}
    assert shown == {"ours": (apps, 900.0), "stale": (None, None), "failed": (None, None),
                     "now-idle": (None, None), foreign: (apps, 950.0)}
    assert [w._replace(executors=None, executors_read_at=None) for w in read.workers] == list(unread.workers)
    policy = make_policy(max_workers=10, idle_workers=1, count_foreign_workers=True)
    assert plan(read, policy, History()) == plan(unread, policy, History()), "shown only, never planned on"


def test_a_retiring_workers_read_carries_the_cycles_time():
    b = bw("l1", "10.0.0.1", retiring_since=1000.0)
    w = classify(b, mw("10.0.0.1", state="DECOMMISSIONED"), executors("app-1"), 1010.0, SETTINGS)
    assert (w.state, w.executors_read_at) == (S.DRAINING, 1010.0)
    failed = classify(b, mw("10.0.0.1", state="DECOMMISSIONED"), READ_ERROR, 1010.0, SETTINGS)
    assert (failed.executors, failed.executors_read_at) == (None, None)
