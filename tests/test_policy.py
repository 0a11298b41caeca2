"""Unit and property tests of the pure `policy.plan()`.

Snapshots are built directly from the model dataclasses; time is
`Snapshot.taken_at`, advanced by hand; `Plan.history` is threaded into the
next call as the reconciler does.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given, settings as hsettings, strategies as st

from jhub_spark_scaler.model import (
    CAPACITY_STATES,
    BackendWorker,
    Executor,
    MasterApp,
    MasterWorker,
    Snapshot,
    Worker,
    WorkerState,
)
from jhub_spark_scaler.policy import (
    STOP_STATES,
    AtMaxWorkersNote,
    BlindNote,
    History,
    Plan,
    PolicySettings,
    RetireIdle,
    ScaleUpPausedNote,
    StartingNote,
    StopDrainTimeout,
    StopForState,
    StopNeverRegistered,
    TargetNote,
    WaitingNote,
    describe,
    explain,
    plan,
)

from .settings import make_policy

S = WorkerState
POLL = 2.0
#: states whose worker must never be stopped or retired: a driver may still use it
PROTECTED_STATES = frozenset({S.BUSY, S.DRAINING, S.HELD})


# -- builders -----------------------------------------------------------------


def worker(handle: str, state: WorkerState, *, created_at: float = 0.0, ours: bool = True,
           why: str = "", cores_used: int | None = None, retiring_since: float | None = None,
           executors: tuple[Executor, ...] | None = None) -> Worker:
    """One worker; a foreign one (ours=False) has no backend side."""
    host = f"host-{handle}"
    backend = (BackendWorker(handle=handle, host=host, created_at=created_at, retiring_since=retiring_since)
               if ours else None)
    master = None
    if state is not S.STARTING and state is not S.UNSCHEDULABLE:
        used = (1 if state is S.BUSY else 0) if cores_used is None else cores_used
        master = MasterWorker(
            id=f"worker-20261125000000-{host}-7078", host=host, port=7078, webui_address="",
            cores=2, cores_used=used, memory=1024, memory_used=0, state="ALIVE", last_heartbeat=0,
        )
    return Worker(handle if ours else f"master:{handle}", host, state, backend, master, executors, why)


def app(app_id: str, cores: int) -> MasterApp:
    return MasterApp(id=app_id, name=app_id, cores=cores, state="RUNNING", user="u", start_time=0)


def waiting_apps(n: int) -> tuple[MasterApp, ...]:
    return tuple(app(f"app-wait-{i}", 0) for i in range(n))


def snap(*workers: Worker, apps=(), at: float = 1000.0, credit: int = 0,
         master_error: str = "", backend_error: str = "") -> Snapshot:
    return Snapshot(at, tuple(workers), tuple(apps), credit, master_error, backend_error)


def run(snapshots, pol: PolicySettings, history: History | None = None) -> list[Plan]:
    """Plan each snapshot in turn, threading the history like the reconciler."""
    plans, history = [], history or History()
    for s in snapshots:
        p = plan(s, pol, history)
        plans.append(p)
        history = p.history
    return plans


def capacity(s: Snapshot) -> int:
    return sum(1 for w in s.workers if w.ours and w.state in CAPACITY_STATES)


# -- target ---------------------------------------------------------------------


def test_target_counts_busy_waiting_idle_target_minus_foreign_capacity_when_counted():
    s = snap(
        worker("b1", S.BUSY), worker("b2", S.BUSY), worker("i1", S.IDLE),
        worker("fb", S.BUSY, ours=False),  # +1 busy, -1 foreign capacity
        worker("fi", S.IDLE, ours=False),  # -1 foreign capacity
        worker("fs", S.STARTING, ours=False),  # -1 foreign capacity
        worker("fd", S.DRAINING, ours=False),  # neither
        apps=(app("a-running", 3), app("a-wait1", 0), app("a-wait2", 0)),
        credit=2,
    )
    d = plan(s, make_policy(max_workers=50, idle_workers=1, count_foreign_workers=True), History()).demand
    assert (d.busy, d.waiting, d.idle_target, d.foreign_capacity) == (3, 2, 3, 3)
    assert d.target == 3 + 2 + 3 - 3


def test_foreign_workers_are_neither_demand_nor_capacity_by_default():
    ours = (worker("b1", S.BUSY), worker("i1", S.IDLE))
    foreign = (worker("fb", S.BUSY, ours=False), *(worker(f"fi{i}", S.IDLE, ours=False) for i in range(5)),
               worker("fs", S.STARTING, ours=False))
    pol = make_policy(max_workers=50, idle_workers=1)
    assert not pol.count_foreign_workers
    alone = plan(snap(*ours), pol, History())
    among = plan(snap(*ours, *foreign), pol, History())
    assert (among.demand.busy, among.demand.foreign_capacity, among.demand.target) == (1, 0, 2)
    assert among.demand == alone.demand and not among.acts
    assert describe(among.notes[0]) == describe(alone.notes[0])


@pytest.mark.parametrize(
    "min_workers, max_workers, expected",
    [(0, 50, 5), (0, 4, 4), (7, 50, 7), (5, 5, 5), (0, 0, 0)],
)
def test_target_is_clamped_to_min_and_max(min_workers, max_workers, expected):
    s = snap(worker("b1", S.BUSY), worker("b2", S.BUSY), apps=waiting_apps(2))  # 2 + 2 + 1
    pol = make_policy(max_workers=max_workers, min_workers=min_workers, idle_workers=1)
    assert plan(s, pol, History()).demand.target == expected


def test_foreign_capacity_can_push_the_wanted_size_below_zero_then_min_applies():
    s = snap(*(worker(f"f{i}", S.IDLE, ours=False) for i in range(4)))
    counted = make_policy(max_workers=10, idle_workers=1, count_foreign_workers=True)
    assert plan(s, counted, History()).demand.target == 0
    assert plan(s, replace(counted, min_workers=2), History()).demand.target == 2


def test_an_app_with_zero_granted_cores_counts_as_one_waiting_worker():
    pol = make_policy(max_workers=50, idle_workers=0)
    assert plan(snap(apps=[app("a", 0)]), pol, History()).demand.waiting == 1
    assert plan(snap(apps=[app("a", 4)]), pol, History()).demand.waiting == 0
    p = plan(snap(apps=[app("a", 0), app("b", 0), app("c", 1)]), pol, History())
    assert (p.demand.waiting, p.demand.target, p.start) == (2, 2, 2)


def test_prewarm_credit_adds_to_idle_workers():
    pol = make_policy(max_workers=50, idle_workers=2)
    p = plan(snap(credit=3), pol, History())
    assert (p.demand.idle_target, p.demand.target, p.start) == (5, 5, 5)
    assert describe(p.notes[0]) == (
        "target 5 = 0 busy + 0 waiting + 2 idle + 3 pre-warm credit, clamped to [0, 50]")


# -- starting, unschedulable, stop states ------------------------------------------


def test_starting_workers_count_as_capacity():
    pol = make_policy(max_workers=10, idle_workers=1)
    p = plan(snap(worker("s1", S.STARTING), apps=waiting_apps(1)), pol, History())
    assert p.demand.target == 2
    assert p.start == 1 and not p.stop and not p.retire


def test_unschedulable_workers_are_stopped_and_pause_scale_up():
    pol = make_policy(max_workers=10, idle_workers=1, unschedulable_backoff=120.0)
    s = snap(worker("u1", S.UNSCHEDULABLE, why="ImagePullBackOff"), worker("u2", S.UNSCHEDULABLE), at=1000.0)
    p = plan(s, pol, History())
    assert set(p.stop) == {"u1", "u2"}
    assert p.start == 0  # unschedulable is not capacity, yet nothing is added into a full cluster
    assert p.history.scale_up_paused_until == 1000.0 + 120.0
    assert any("u1" in r and "ImagePullBackOff" in r for r in explain(p))
    assert any("paused" in r for r in explain(p))
    # The pause outlives the unschedulable workers...
    p2 = plan(snap(at=1000.0 + 118.0), pol, p.history)
    assert p2.start == 0 and any("paused for 2 s" in r for r in explain(p2))
    # ...and ends after unschedulable_backoff.
    p3 = plan(snap(at=1000.0 + 120.0), pol, p2.history)
    assert p3.start == 1


@pytest.mark.parametrize("state", [S.DRAINED, S.LOST])
def test_drained_and_lost_workers_are_stopped_without_pausing(state):
    pol = make_policy(max_workers=10, idle_workers=1)
    p = plan(snap(worker("x", state, why="its pod is gone"), worker("i", S.IDLE)), pol, History())
    assert p.stop == ("x",)
    assert p.start == 0 and not p.retire
    assert p.history.scale_up_paused_until == 0.0
    assert any(f"stopping x: {state.value} (its pod is gone)" == r for r in explain(p))


def test_protected_workers_are_neither_stopped_nor_retired_even_in_surplus():
    pol = make_policy(max_workers=2, idle_workers=0, scale_down_delay=0.0)
    s = snap(*(worker(f"b{i}", S.BUSY) for i in range(4)), worker("d", S.DRAINING), worker("h", S.HELD))
    p = plan(s, pol, History())
    assert p.demand.target == 2
    assert not p.acts


# -- scale-up -------------------------------------------------------------------


def test_scale_up_is_immediate_with_a_fresh_history():
    pol = make_policy(max_workers=50, idle_workers=1)
    p = plan(snap(apps=waiting_apps(3)), pol, History())
    assert p.start == 4
    assert any("starting 4" in r for r in explain(p))


def test_scale_up_is_capped_by_max_surge():
    pol = make_policy(max_workers=50, idle_workers=1, max_surge=5)
    plans = run([snap(apps=waiting_apps(19), at=1000.0)], pol)
    assert plans[0].demand.target == 20 and plans[0].start == 5


def test_scale_up_room_counts_our_workers_in_every_state():
    pol = make_policy(max_workers=6, idle_workers=1)
    pool = [worker("d1", S.DRAINING), worker("d2", S.DRAINED), worker("h", S.HELD),
            worker("l", S.LOST), worker("i", S.IDLE)]
    p = plan(snap(*pool, apps=waiting_apps(5)), pol, History())
    assert (p.demand.target, capacity(snap(*pool))) == (6, 1)
    assert p.start == 1  # 6 max - 5 of ours, although 5 more are wanted
    full = plan(snap(*pool, worker("i2", S.IDLE), apps=waiting_apps(5)), pol, History())
    assert full.start == 0 and any("at max_workers (6)" in r for r in explain(full))


def test_foreign_workers_do_not_take_room_under_max_workers():
    pol = make_policy(max_workers=2, idle_workers=0, count_foreign_workers=True)
    p = plan(snap(worker("f1", S.BUSY, ours=False), worker("f2", S.BUSY, ours=False), apps=waiting_apps(2)),
             pol, History())
    assert p.start == 2


# -- scale-down -----------------------------------------------------------------


def test_scale_down_waits_for_scale_down_delay_then_retires_the_longest_idle():
    pol = make_policy(max_workers=10, idle_workers=1, scale_down_delay=60.0)
    # created_at in the reverse order of becoming idle: the order must follow idleness
    w1 = lambda st: worker("w1", st, created_at=300.0)  # noqa: E731
    w2 = lambda st: worker("w2", st, created_at=200.0)  # noqa: E731
    w3 = lambda st: worker("w3", st, created_at=100.0)  # noqa: E731
    script = [(0.0, S.IDLE, S.BUSY, S.BUSY), (10.0, S.IDLE, S.BUSY, S.IDLE)]
    script += [(t, S.IDLE, S.IDLE, S.IDLE) for t in range(20, 71, 2)]
    snaps = [snap(w1(a), w2(b), w3(c), at=1000.0 + t) for t, a, b, c in script]
    plans = run(snaps, pol)
    for s, p in zip(snaps, plans):
        waited = s.taken_at - 1010.0
        if waited < 60.0:
            assert not p.acts, (s.taken_at, explain(p))
    assert plans[1].history.surplus_since == 1010.0
    last = plans[-1]
    assert snaps[-1].taken_at == 1070.0
    assert last.retire == ("w1", "w3") and not last.stop and last.start == 0
    assert last.history.surplus_since is None
    assert dict(last.history.idle_since) == {"w1": 1000.0, "w2": 1020.0, "w3": 1010.0}


def test_scale_down_delay_counts_from_the_first_cycle_with_a_surplus():
    pol = make_policy(max_workers=10, idle_workers=1, scale_down_delay=60.0)
    s = lambda t: snap(worker("a", S.IDLE), worker("b", S.IDLE), at=t)  # noqa: E731
    plans = run([s(t) for t in (0.0, 59.0, 60.0)], pol)
    assert [p.retire for p in plans] == [(), (), ("a",)]
    assert any("waiting" in r for r in explain(plans[1]))


def test_surplus_timer_resets_when_the_surplus_disappears():
    pol = make_policy(max_workers=10, idle_workers=1, scale_down_delay=60.0)
    surplus = lambda t: snap(worker("a", S.IDLE), worker("b", S.IDLE), at=t)  # noqa: E731
    balanced = lambda t: snap(worker("a", S.BUSY), worker("b", S.IDLE), at=t)  # noqa: E731
    snaps = [surplus(0.0), surplus(30.0), balanced(40.0), surplus(50.0), surplus(100.0), surplus(110.0)]
    plans = run(snaps, pol)
    assert plans[2].history.surplus_since is None
    assert plans[3].history.surplus_since == 50.0
    assert [p.acts for p in plans[:5]] == [False] * 5  # 100 - 50 < 60 although 100 - 0 >= 60
    assert plans[5].retire  # 110 - 50 >= 60


def test_scale_down_stops_never_registered_workers_first_newest_first():
    pol = make_policy(max_workers=10, idle_workers=0, scale_down_delay=60.0)
    pool = [worker("i-old", S.IDLE, created_at=1.0), worker("s-old", S.STARTING, created_at=10.0),
            worker("s-new", S.STARTING, created_at=20.0), worker("i-new", S.IDLE, created_at=2.0)]
    one = pool + [worker("b", S.BUSY), worker("b2", S.BUSY), worker("b3", S.BUSY)]
    # target = 3 busy + 0 + 0 = 3; capacity 7; surplus 4, but ask for fewer via min_workers
    p = run([snap(*one, at=0.0), snap(*one, at=60.0)], replace(pol, min_workers=6))[-1]
    assert p.stop == ("s-new",) and not p.retire
    p = run([snap(*one, at=0.0), snap(*one, at=60.0)], replace(pol, min_workers=5))[-1]
    assert p.stop == ("s-new", "s-old") and not p.retire
    plans = run([snap(*one, at=0.0), snap(*one, at=60.0)], pol)
    assert plans[-1].stop == ("s-new", "s-old")
    # both idle since the same first sighting: ties go to the older worker, then the handle
    assert plans[-1].retire == ("i-old", "i-new")
    assert any("surplus, never registered" in r for r in explain(plans[-1]))


def test_scale_down_never_goes_below_min_workers():
    pol = make_policy(max_workers=10, min_workers=3, idle_workers=0, scale_down_delay=0.0)
    p = plan(snap(*(worker(f"i{i}", S.IDLE) for i in range(5))), pol, History())
    assert len(p.retire) == 2


def test_idle_since_forgets_workers_that_are_no_longer_idle():
    pol = make_policy(max_workers=10, idle_workers=5)
    plans = run([snap(worker("a", S.IDLE), worker("b", S.IDLE), at=0.0),
                 snap(worker("a", S.BUSY), worker("b", S.IDLE), at=10.0),
                 snap(worker("a", S.IDLE), worker("b", S.IDLE), at=20.0)], pol)
    assert dict(plans[1].history.idle_since) == {"b": 0.0}
    assert dict(plans[2].history.idle_since) == {"a": 20.0, "b": 0.0}


# -- blind ------------------------------------------------------------------------


@pytest.mark.parametrize("errors", [{"master_error": "cannot reach Spark master"},
                                    {"backend_error": "cannot list workers: 403"}])
def test_blind_snapshot_changes_nothing(errors):
    pol = make_policy(max_workers=10, idle_workers=1, scale_down_delay=0.0)
    history = History(surplus_since=0.0)
    pool = [worker("d", S.DRAINED), worker("l", S.LOST), worker("u", S.UNSCHEDULABLE),
            worker("i1", S.IDLE), worker("i2", S.IDLE), worker("s", S.STARTING)]
    assert plan(snap(*pool, at=500.0), pol, history).acts  # sanity: seeing, it would act
    for s in (snap(*pool, at=500.0, **errors), snap(apps=waiting_apps(3), **errors)):
        p = plan(s, pol, history)
        assert (p.start, p.retire, p.stop) == (0, (), ())
        assert p.history == replace(history, surplus_since=None)
        why = next(iter(errors.values()))
        assert any("blind" in r and why in r for r in explain(p))


def test_a_surplus_seen_before_a_blind_spell_waits_scale_down_delay_after_it():
    pol = make_policy(max_workers=10, idle_workers=0, scale_down_delay=60.0)
    pool = [worker("i1", S.IDLE)]
    first = plan(snap(*pool, at=0.0), pol, History())
    assert not first.retire and first.history.surplus_since == 0.0
    blind = plan(snap(*pool, at=30.0, master_error="Spark master is RECOVERING"), pol, first.history)
    after = plan(snap(*pool, at=61.0), pol, blind.history)
    assert not after.retire, "the surplus was last seen 61 s ago, but not during the blind spell"
    assert plan(snap(*pool, at=121.0), pol, after.history).retire == ("i1",)


# -- reasons as data ---------------------------------------------------------------


def test_each_handle_has_its_reason_as_data_and_explain_words_the_plan_in_order():
    pol = make_policy(max_workers=10, idle_workers=0, scale_down_delay=0.0)
    s = snap(worker("d", S.DRAINED, why="no executors left"), worker("s", S.STARTING, created_at=5.0),
             worker("i", S.IDLE), at=100.0)
    p = plan(s, pol, History())
    assert (p.stop, p.retire) == (("d", "s"), ("i",))
    assert dict(p.why) == {"d": StopForState("d", S.DRAINED, "no executors left"),
                           "s": StopNeverRegistered("s"), "i": RetireIdle("i", 0.0)}
    assert p.notes == (TargetNote(p.demand, 0, 10),)
    assert explain(p) == (
        "target 0 = 0 busy + 0 waiting + 0 idle, clamped to [0, 10]",
        "stopping d: drained (no executors left)",
        "stopping s: surplus, never registered",
        "retiring i: surplus, idle 0 s",
    )
    assert describe(p.why["i"]) == explain(p)[-1]


def test_pool_notes_are_data():
    pol = make_policy(max_workers=3, idle_workers=1, scale_down_delay=60.0)
    assert plan(snap(), pol, History()).notes[1:] == (StartingNote(1, 0, 1),)
    full = snap(worker("b1", S.BUSY), worker("b2", S.BUSY), worker("d", S.DRAINING))  # target 3 > 2
    assert plan(full, pol, History()).notes[1:] == (AtMaxWorkersNote(3),)
    paused = plan(snap(at=10.0), pol, History(scale_up_paused_until=40.0))
    assert paused.notes[1:] == (ScaleUpPausedNote(1, 30.0),)
    surplus = plan(snap(worker("a", S.IDLE), worker("b", S.IDLE), at=10.0), pol, History(surplus_since=0.0))
    assert surplus.notes[1:] == (WaitingNote(1, 10.0, 60.0),)
    assert explain(surplus)[1] == "surplus of 1 for 10 s of 60 s scale_down_delay: waiting"
    blind = plan(snap(master_error="master down"), pol, History())
    assert blind.notes[1:] == (BlindNote("master down"),)
    assert explain(blind)[1] == "blind, changing nothing: master down"


# -- drain_timeout: the admin's exception to waiting on running apps ----------------------

DRAIN_TIMEOUT = 900.0


def retiring(handle: str, state: WorkerState, *, since: float, apps: tuple[str, ...] | None = ()) -> Worker:
    """A worker of ours decommissioned at `since`, with an executor of each app (None: unread)."""
    executors = None if apps is None else tuple(Executor(a, i, f"name-{a}") for i, a in enumerate(apps))
    return worker(handle, state, retiring_since=since, executors=executors)


def test_drain_timeout_is_off_by_default_and_a_held_worker_is_waited_on_for_ever():
    pol = make_policy(idle_workers=0)
    assert pol.drain_timeout == 0
    p = plan(snap(retiring("h", S.HELD, since=0.0, apps=("app-1",)), at=1_000_000.0), pol, History())
    assert not p.acts and p.timed_out == ()


def test_draining_under_the_timeout_waits_and_over_it_is_stopped_naming_the_apps():
    pol = make_policy(idle_workers=0, drain_timeout=DRAIN_TIMEOUT)
    w = retiring("spark-worker-3", S.DRAINING, since=100.0, apps=("app-2", "app-1", "app-2"))
    assert not plan(snap(w, at=100.0 + DRAIN_TIMEOUT - 1), pol, History()).acts
    p = plan(snap(w, at=100.0 + DRAIN_TIMEOUT), pol, History())
    assert p.stop == p.timed_out == ("spark-worker-3",) and not p.retire and not p.start
    assert p.why["spark-worker-3"] == StopDrainTimeout("spark-worker-3", S.DRAINING, DRAIN_TIMEOUT,
                                                       DRAIN_TIMEOUT, ("app-1", "app-2"))
    assert explain(p)[1] == ("stopping spark-worker-3: draining 900 s, over drain_timeout 900 s; "
                             "app-1, app-2 lose executors")


def test_a_held_worker_over_the_timeout_is_stopped_and_the_others_are_not():
    pol = make_policy(drain_timeout=60.0)
    pool = (retiring("held", S.HELD, since=0.0, apps=("app-1",)),
            retiring("unread", S.DRAINING, since=0.0, apps=None),
            retiring("empty", S.DRAINING, since=0.0),
            retiring("young", S.HELD, since=950.0, apps=("app-1",)),
            worker("external", S.HELD),  # decommissioned by someone else: since when is unknown
            worker("busy", S.BUSY, retiring_since=0.0), worker("idle", S.IDLE), worker("b2", S.BUSY),
            worker("f", S.HELD, ours=False))
    p = plan(snap(*pool, at=1000.0), pol, History())
    assert p.timed_out == p.stop == ("held", "unread", "empty") and not p.retire
    words = {h: describe(p.why[h]) for h in p.stop}
    assert words == {
        "held": "stopping held: held 1000 s, over drain_timeout 60 s; app-1 lose executors",
        "unread": "stopping unread: draining 1000 s, over drain_timeout 60 s; "
                  "its executors are unknown (the worker cannot be read)",
        "empty": "stopping empty: draining 1000 s, over drain_timeout 60 s; no executors on it",
    }


def test_a_worker_already_being_stopped_is_not_stopped_again():
    w = retiring("h", S.HELD, since=0.0, apps=("app-1",))
    w = w._replace(backend=w.backend._replace(stopping=True))
    assert not plan(snap(w, at=1000.0), make_policy(idle_workers=0, drain_timeout=1.0), History()).acts


@pytest.mark.parametrize("errors", [{"master_error": "master down"}, {"backend_error": "cannot list"}])
def test_blind_nothing_is_stopped_by_drain_timeout(errors):
    pool = (retiring("h", S.HELD, since=0.0, apps=("app-1",)), worker("i", S.IDLE))
    p = plan(snap(*pool, at=1000.0, **errors), make_policy(drain_timeout=1.0), History())
    assert not p.acts and p.timed_out == ()


def test_a_stop_by_drain_timeout_leaves_capacity_and_the_surplus_alone():
    """A retiring worker is no capacity: stopping it neither starts nor retires anything."""
    pol = make_policy(idle_workers=1, drain_timeout=10.0, scale_down_delay=60.0)
    pool = (retiring("h", S.HELD, since=0.0, apps=("app-1",)), worker("i", S.IDLE))
    p = plan(snap(*pool, at=1000.0), pol, History())
    assert (p.start, p.retire, p.stop, p.demand.target) == (0, (), ("h",), 1)


# -- the original autoscaler's flapping case -----------------------------------------


def test_one_core_used_of_two_with_one_idle_worker_does_not_flap():
    """k8s-spark-autoscale: 2 cores per worker, I = 1, 1 core used: it added a pod and
    removed it every second. Here the busy worker counts whole, so 2 workers are right."""
    pol = make_policy(max_workers=10, idle_workers=1, scale_down_delay=60.0)
    pool = (worker("w-busy", S.BUSY, cores_used=1), worker("w-idle", S.IDLE, cores_used=0))
    assert pool[0].master.cores == 2 and pool[0].master.cores_used == 1
    plans = run([snap(*pool, apps=[app("app-1", 1)], at=1000.0 + POLL * i) for i in range(300)], pol)
    assert plans[0].demand.target == 2
    assert not any(p.acts for p in plans)
    assert all(p.history.surplus_since is None for p in plans)


# -- properties ---------------------------------------------------------------------

ALL_STATES = list(WorkerState)
NOW = 10_000.0


@st.composite
def pools(draw, max_size: int = 12):
    specs = draw(st.lists(st.tuples(st.sampled_from(ALL_STATES), st.booleans(), st.floats(0.0, NOW),
                                    st.none() | st.floats(0.0, NOW)), max_size=max_size))
    return tuple(worker(f"w{i}", state, created_at=created, ours=ours, retiring_since=since)
                 for i, (state, ours, created, since) in enumerate(specs))


@st.composite
def policy_settings(draw):
    max_workers = draw(st.integers(0, 15))
    return PolicySettings(
        max_workers=max_workers,
        min_workers=draw(st.integers(0, max_workers)),
        idle_workers=draw(st.integers(0, 3)),
        max_surge=draw(st.integers(1, 10)),
        scale_down_delay=draw(st.sampled_from([0.0, 1.0, 10.0, 60.0])),
        unschedulable_backoff=draw(st.sampled_from([0.0, 30.0, 120.0])),
        count_foreign_workers=draw(st.booleans()),
        drain_timeout=draw(st.sampled_from([0.0, 0.0, 30.0, 600.0])),
    )


@st.composite
def snapshots(draw):
    workers = draw(pools())
    apps = tuple(app(f"app-{i}", c) for i, c in enumerate(draw(st.lists(st.integers(0, 3), max_size=5))))
    return snap(*workers, apps=apps, at=NOW, credit=draw(st.integers(0, 3)))


@st.composite
def histories(draw, workers=()):
    handles = [w.handle for w in workers]
    idle_since = draw(st.dictionaries(st.sampled_from(handles), st.floats(0.0, NOW))) if handles else {}
    return History(
        surplus_since=draw(st.none() | st.floats(0.0, NOW)),
        idle_since=idle_since,
        scale_up_paused_until=draw(st.sampled_from([0.0, NOW - 1.0, NOW + 60.0])),
    )


@st.composite
def cases(draw):
    s = draw(snapshots())
    return s, draw(policy_settings()), draw(histories(s.workers))


@hsettings(max_examples=200, deadline=None)
@given(cases())
def test_property_protected_and_foreign_workers_are_never_touched(case):
    s, pol, history = case
    p = plan(s, pol, history)
    by_handle = {w.handle: w for w in s.workers}
    for handle in p.retire + p.stop:
        w = by_handle[handle]
        assert w.ours, handle
        if handle in p.timed_out:  # the admin's exception: retiring for drain_timeout, not before
            assert pol.drain_timeout and w.state in (S.DRAINING, S.HELD), (handle, w.state)
            assert s.taken_at - w.backend.retiring_since >= pol.drain_timeout
        else:
            assert w.state not in PROTECTED_STATES, (handle, w.state)
    assert all(by_handle[h].state is S.IDLE for h in p.retire)
    assert len(set(p.retire + p.stop)) == len(p.retire) + len(p.stop)  # no handle twice
    # every stop-state worker of ours is stopped; the only other stops are surplus STARTING ones
    # and those past drain_timeout
    assert {w.handle for w in s.workers if w.ours and w.state in STOP_STATES} <= set(p.stop)
    assert all(by_handle[h].state in STOP_STATES or by_handle[h].state is S.STARTING
               for h in p.stop if h not in p.timed_out)


@hsettings(max_examples=200, deadline=None)
@given(cases())
def test_property_respects_max_workers_and_moves_capacity_toward_target(case):
    """Asserted, with cap = our starting + idle + busy workers before the plan and
    after = cap + start - retired - (STARTING workers stopped as surplus):
    min_workers <= target <= max_workers; start >= 0, start <= max_surge; when starting,
    len(ours) + start <= max_workers and nothing is removed; after lies between cap and
    target (never overshoots, never retires below target, hence never below min_workers
    through retirement)."""
    s, pol, history = case
    p = plan(s, pol, history)
    ours = [w for w in s.workers if w.ours]
    cap = capacity(s)
    starting = {w.handle for w in ours if w.state is S.STARTING}
    removed = len(p.retire) + sum(1 for h in p.stop if h in starting)
    after = cap + p.start - removed
    target = p.demand.target
    assert pol.min_workers <= target <= pol.max_workers
    assert 0 <= p.start <= pol.max_surge
    if p.start > 0:
        assert len(ours) + p.start <= pol.max_workers
        assert removed == 0
        assert cap < after <= target
    if removed:
        assert target <= after < cap
        assert after >= pol.min_workers
    assert min(cap, target) <= after <= max(cap, target)


@hsettings(max_examples=200, deadline=None)
@given(cases())
def test_property_plan_is_deterministic(case):
    s, pol, history = case
    # equal but separately built inputs
    s2 = Snapshot(s.taken_at, tuple(w._replace() for w in s.workers), tuple(replace(a) for a in s.apps),
                  s.prewarm_credit, s.master_error, s.backend_error)
    h2 = History(history.surplus_since, dict(history.idle_since), history.scale_up_paused_until)
    p1, p2 = plan(s, pol, history), plan(s2, replace(pol), h2)
    assert p1 == p2
    assert plan(s, pol, history) == p1  # and calling again changes nothing


@hsettings(max_examples=100, deadline=None)
@given(cases(), st.sampled_from(["master_error", "backend_error"]))
def test_property_blind_plans_do_nothing(case, error_field):
    s, pol, history = case
    p = plan(replace(s, **{error_field: "boom"}), pol, history)
    assert not p.acts and p.history == replace(history, surplus_since=None)
    assert any("blind" in r for r in explain(p))


# -- convergence in a tiny in-memory world -----------------------------------------------


class World:
    """Our workers by handle (state, created_at); foreign workers and apps stay fixed.

    Applying a plan: stopped workers vanish; retired ones become DRAINING; started
    ones appear as STARTING. Then every worker that existed before ages one step:
    STARTING -> IDLE, DRAINING -> DRAINED (which the next plan must stop)."""

    def __init__(self, ours: dict[str, tuple[WorkerState, float]], foreign, apps, credit: int):
        self.ours, self.foreign, self.apps, self.credit = dict(ours), tuple(foreign), tuple(apps), credit
        self.serial = 0

    def snapshot(self, now: float) -> Snapshot:
        mine = (worker(h, state, created_at=created) for h, (state, created) in sorted(self.ours.items()))
        return snap(*mine, *self.foreign, apps=self.apps, at=now, credit=self.credit)

    def apply(self, p: Plan, now: float) -> list[str]:
        aged = {}
        for h, (state, created) in self.ours.items():
            if h in p.stop:
                continue
            if h in p.retire:
                state = S.DRAINING
            elif state is S.STARTING:
                state = S.IDLE
            elif state is S.DRAINING:
                state = S.DRAINED
            aged[h] = (state, created)
        started = []
        for _ in range(p.start):
            self.serial += 1
            started.append(f"new-{self.serial}")
            aged[started[-1]] = (S.STARTING, now)
        self.ours = aged
        return started


@st.composite
def worlds(draw):
    specs = draw(st.lists(st.tuples(st.sampled_from(ALL_STATES), st.booleans()), max_size=10))
    ours = {f"old-{i}": (state, 0.0) for i, (state, mine) in enumerate(specs) if mine}
    foreign = [worker(f"f-{i}", state, ours=False)
               for i, (state, mine) in enumerate(specs) if not mine and state in (S.BUSY, S.IDLE, S.DRAINING)]
    apps = [app(f"app-{i}", c) for i, c in enumerate(draw(st.lists(st.integers(0, 2), max_size=4)))]
    return World(ours, foreign, apps, draw(st.integers(0, 2)))


SETTLE_STEPS = 100  # > (max scale_down_delay + max unschedulable_backoff) / POLL + a few drains
TAIL_STEPS = 60


@hsettings(max_examples=150, deadline=None)
@given(worlds(), policy_settings())
def test_property_converges_and_never_retires_what_it_started(world, pol):
    history, started, now = History(), set(), 0.0
    for step in range(SETTLE_STEPS + TAIL_STEPS):
        s = world.snapshot(now)
        p = plan(s, pol, history)
        assert not started & set(p.retire + p.stop), (step, explain(p))
        if step >= SETTLE_STEPS:
            assert not p.acts, (step, explain(p))
        started.update(world.apply(p, now))
        history, now = p.history, now + POLL
    # at rest: the pool is at target, unless max_workers or protected workers prevent it
    s = world.snapshot(now)
    target, cap = plan(s, pol, history).demand.target, capacity(s)
    ours = [w for w in s.workers if w.ours]
    if cap < target:
        assert len(ours) >= pol.max_workers
    if cap > target:
        assert not any(w.state in (S.IDLE, S.STARTING) for w in ours)
    assert not any(w.state in STOP_STATES for w in ours)


def simulate(world: World, pol: PolicySettings, steps: int) -> list[Plan]:
    plans, history, now = [], History(), 0.0
    for _ in range(steps):
        p = plan(world.snapshot(now), pol, history)
        world.apply(p, now)
        plans.append(p)
        history, now = p.history, now + POLL
    return plans


def test_world_scales_up_once_then_rests():
    world = World({"b": (S.BUSY, 0.0)}, [], [app("a1", 0), app("a2", 0)], credit=0)
    plans = simulate(world, make_policy(max_workers=10, idle_workers=1), 50)
    assert [p.start for p in plans[:2]] == [3, 0]
    assert not any(p.acts for p in plans[1:])
    assert sorted(state for state, _ in world.ours.values()) == sorted([S.BUSY] + [S.IDLE] * 3)


def test_world_scales_down_after_the_delay_and_stops_the_drained():
    world = World({f"i{i}": (S.IDLE, 0.0) for i in range(5)}, [], [], credit=0)
    plans = simulate(world, make_policy(max_workers=10, idle_workers=1, scale_down_delay=60.0), 60)
    acting = [(i, p.retire, p.stop) for i, p in enumerate(plans) if p.acts]
    assert acting == [(30, ("i0", "i1", "i2", "i3"), ()), (32, (), ("i0", "i1", "i2", "i3"))]
    assert world.ours == {"i4": (S.IDLE, 0.0)}
