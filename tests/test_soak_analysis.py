"""The soak's attribution of losses: what the chaos's own worker kill and master restart
caused is counted apart, anything else counts against the scaler. The records are real
sessions' of the first full-length soaks (2026-11-26): on the local backend user6 #1,
whose worker the chaos SIGKILLed while its executors ran the reduce stage; on the
Kubernetes backend user8 #11, whose executors the recovering master killed. And how the
soak reports a target that its ~100 sessions may not settle: with a bootstrap interval,
over sessions paired across strategies, which the users' planned start times allow."""

from __future__ import annotations

import math
import os
import random
import signal
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest

from .waiting import until_sync

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

from soaklib.analysis import first_executor_samples, median_ratio_interval, summarize  # noqa: E402
from soaklib.chaos import Fault  # noqa: E402
from soaklib.pool import PoolStats  # noqa: E402
from soaklib.run import RunResult  # noqa: E402
from soaklib.users import Behaviour, Session, planned_sessions  # noqa: E402

KILLED_AT = datetime(2026, 11, 26, 1, 12, 22, tzinfo=timezone.utc).timestamp()
LOST = "worker lost: 127.0.6.3:59533 got disassociated"
MISSING_OUTPUT = "FetchFailed(null, shuffleId=0, mapIndex=-1, mapId=-1, reduceId={}, message="


def killed_session(*extra_failed: dict, extra_executors: tuple[dict, ...] = ()) -> dict:
    failed = [
        {"executor": "1", "stage": "stage 1.0",
         "error": f"ExecutorLostFailure (executor 1 exited unrelated to the running tasks) Reason: {LOST}"},
        {"executor": "0", "stage": "stage 1.0",
         "error": f"ExecutorLostFailure (executor 0 exited unrelated to the running tasks) Reason: {LOST}"},
        {"executor": "3", "stage": "stage 1.0", "error": MISSING_OUTPUT.format(0)},
        {"executor": "2", "stage": "stage 1.0", "error": MISSING_OUTPUT.format(1)},
        {"executor": "2", "stage": "stage 1.0", "error": MISSING_OUTPUT.format(2)},
        *extra_failed,
    ]
    return {
        "wall_start": KILLED_AT - 20, "first_executor_s": 5.9, "jobs": 2, "jobs_failed": 0,
        "tasks_failed": len(failed), "failed_tasks": failed,
        "executors": [
            {"id": "0", "host": "127.0.6.3", "reason": LOST, "added": "2026-11-26T01:12:13.096GMT"},
            {"id": "1", "host": "127.0.6.3", "reason": LOST, "added": "2026-11-26T01:12:12.934GMT"},
            {"id": "2", "host": "127.0.6.5", "reason": "", "added": "2026-11-26T01:12:34.856GMT"},
            {"id": "3", "host": "127.0.6.5", "reason": "", "added": "2026-11-26T01:12:33.646GMT"},
            *extra_executors,
        ],
    }


def summary_of(record: dict, killed_host: str = "127.0.6.3", killed_at: float = KILLED_AT) -> dict:
    result = RunResult("scaler", "local", 60.0, [Session("user6", 1, result=record)],
                       PoolStats(departures=[(killed_at + 0.5, killed_host)]),
                       [Fault("kill-busy-worker", killed_at, killed_host, converged_s=2.5)])
    return summarize(result)


def test_the_killed_workers_losses_and_the_missing_shuffle_output_they_left_are_the_tests():
    s = summary_of(killed_session())
    assert (s["executors_lost_by_test"], s["tasks_failed_by_test"]) == (2, 5)
    assert s["executors_hit_by_test"] == 2
    assert (s["executors_lost"], s["tasks_failed"], s["retirements"]) == (0, 0, 0), s["failure_reasons"]


# An executor of the same session that the scaler's retirement of an earlier worker on
# the killed worker's address decommissioned before the kill: output that goes missing
# may have been on it.
DECOMMISSIONED = {"id": "4", "host": "127.0.6.3", "reason": "Executor decommission: worker decommissioned",
                  "added": "2026-11-26T01:10:40.000GMT", "removed": "2026-11-26T01:11:20.000GMT"}


def test_missing_shuffle_output_in_a_stage_the_kill_did_not_touch_counts_against_the_scaler_that_retired():
    s = summary_of(killed_session({"executor": "2", "stage": "stage 3.0", "error": MISSING_OUTPUT.format(0)},
                                  extra_executors=(DECOMMISSIONED,)))
    assert (s["tasks_failed_by_test"], s["tasks_failed"]) == (5, 1)
    assert s["failure_reasons"] == [f"task on executor 2: {MISSING_OUTPUT.format(0)}"]


def test_missing_shuffle_output_after_a_kill_between_stages_is_the_tests_when_only_the_killed_departed():
    """CI's short soak (2026-11-27), user2 #1: the chaos killed worker 127.0.8.3 after
    the map stage had run on its executors 0 and 1 (the driver had them removed 0.2 s
    after the kill, whose time here is approximate); the reduce stage then ran on
    executor 2 of the replacement worker and found the map output missing. No other
    executor of the session departed: the output was on the killed ones."""
    killed_at = datetime(2026, 11, 27, 8, 1, 59, 800000, tzinfo=timezone.utc).timestamp()
    lost = "worker lost: 127.0.8.3:45971 got disassociated"
    record = {
        "wall_start": killed_at - 30, "first_executor_s": 9.1, "jobs": 2, "jobs_failed": 0,
        "tasks_failed": 2,
        "failed_tasks": [{"executor": "2", "stage": "stage 1.0", "error": MISSING_OUTPUT.format(r)}
                         for r in (0, 1)],
        "executors": [
            {"id": "0", "host": "127.0.8.3", "reason": lost,
             "added": "2026-11-27T08:01:47.489GMT", "removed": "2026-11-27T08:02:00.031GMT"},
            {"id": "1", "host": "127.0.8.3", "reason": lost,
             "added": "2026-11-27T08:01:47.538GMT", "removed": "2026-11-27T08:02:00.035GMT"},
            {"id": "2", "host": "127.0.8.2", "reason": "",
             "added": "2026-11-27T08:02:07.251GMT", "removed": None},
            {"id": "3", "host": "127.0.8.2", "reason": "",
             "added": "2026-11-27T08:02:08.166GMT", "removed": None},
        ],
    }
    s = summary_of(record, "127.0.8.3", killed_at)
    assert (s["executors_lost_by_test"], s["tasks_failed_by_test"]) == (2, 2)
    assert (s["executors_lost"], s["tasks_failed"]) == (0, 0), s["failure_reasons"]
    # the same failures once the scaler had decommissioned an executor of the session
    record["executors"].append({**DECOMMISSIONED, "host": "127.0.8.4"})
    assert summary_of(record, "127.0.8.3", killed_at)["tasks_failed"] == 2


UNLISTED = {"executor": "", "error": "a failed task the REST API does not list"}


def test_failures_the_task_list_lacks_in_a_stage_the_kill_hit_are_the_tests_and_elsewhere_the_scalers():
    """A short soak in this suite (2026-11-26): the chaos killed a worker in a map stage,
    which counted 4 failed tasks and listed the 2 on the killed executors. Elsewhere, in
    a session where the scaler had decommissioned an executor, they count against it."""
    s = summary_of(killed_session({**UNLISTED, "stage": "stage 1.0"}, {**UNLISTED, "stage": "stage 3.0"},
                                  extra_executors=(DECOMMISSIONED,)))
    assert (s["tasks_failed_by_test"], s["tasks_failed"]) == (6, 1)
    assert s["failure_reasons"] == [f"task on executor : {UNLISTED['error']}"]


def test_a_kill_in_a_sessions_last_seconds_hits_nothing_its_driver_could_see():
    """The driver read its executors just before its worker was killed: they show no loss,
    and the kill is not counted as having hit them."""
    record = killed_session()
    record.update(executors_read_at=KILLED_AT - 0.3, failed_tasks=[], tasks_failed=0)
    for executor in record["executors"]:
        executor["reason"] = ""
    s = summary_of(record)
    assert (s["executors_hit_by_test"], s["executors_lost_by_test"], s["executors_lost"]) == (0, 0, 0)


def test_an_executor_the_kill_hit_that_shows_no_loss_is_not_hidden():
    """Read well after the kill, an executor of the killed worker without a remove reason is
    counted as hit but not as lost, which the short soak's assertion catches."""
    record = killed_session()
    record["executors"][0]["reason"] = ""
    s = summary_of(record)
    assert (s["executors_hit_by_test"], s["executors_lost_by_test"]) == (2, 1)


# Kubernetes soak, user8 #11: its app registered at 05:08:18 and got two executors on
# 127.0.7.50; the chaos killed the master at 05:08:21, the worker re-registered with the
# recovering master, which told it to kill both ("Asked to kill executor"), at 05:08:30.
MASTER_KILLED_AT = datetime(2026, 11, 26, 5, 8, 21, 270000, tzinfo=timezone.utc).timestamp()
MASTER_BACK_AT = MASTER_KILLED_AT + 68.9
INTERRUPTED = "Runner thread for executor app-20261126050818-0082/{} interrupted"


def restart_session(removed: str = "2026-11-26T05:08:31.487GMT",
                    added: str = "2026-11-26T05:08:23.993GMT") -> dict:
    failed = [{"executor": e, "stage": "stage 0.0",
               "error": f"ExecutorLostFailure (executor {e} exited caused by one of the running tasks) "
                        f"Reason: {INTERRUPTED.format(e)}"} for e in ("1", "0")]
    return {
        "wall_start": 1795669691.69, "first_executor_s": 14.6, "executors_read_at": 1795669812.06,
        "jobs": 3, "jobs_failed": 0, "tasks_failed": 2, "failed_tasks": failed,
        "executors": [
            {"id": "0", "host": "127.0.7.50", "reason": INTERRUPTED.format(0),
             "added": added, "removed": removed},
            {"id": "1", "host": "127.0.7.50", "reason": INTERRUPTED.format(1),
             "added": "2026-11-26T05:08:23.565GMT", "removed": "2026-11-26T05:08:31.025GMT"},
            {"id": "2", "host": "127.0.7.52", "reason": "",
             "added": "2026-11-26T05:09:39.646GMT", "removed": None},
        ],
    }


def restart_summary(record: dict, back_at: float = MASTER_BACK_AT) -> dict:
    result = RunResult("scaler", "kubernetes", 60.0, [Session("user8", 11, result=record)], PoolStats(),
                       [Fault("restart-master", MASTER_KILLED_AT, blind_until=back_at,
                              converged_s=round(back_at - MASTER_KILLED_AT + 0.6, 1))])
    return summarize(result)


def test_executors_the_recovering_master_killed_are_the_master_restarts():
    s = restart_summary(restart_session())
    assert (s["executors_lost_by_test"], s["executors_lost_by_master_restart"],
            s["tasks_failed_by_test"]) == (2, 2, 2)
    assert (s["executors_lost"], s["tasks_failed"]) == (0, 0), s["failure_reasons"]


def test_the_kills_a_master_back_within_seconds_ordered_are_the_master_restarts_though_seen_after():
    """The same kills when the master is back 6.6 s after its own (every worker and app
    answered at once, as in the short soak): the drivers see them 3-4 s after its return,
    since a worker gives an executor up to 10 s to exit before it reports the kill."""
    s = restart_summary(restart_session(), back_at=MASTER_KILLED_AT + 6.6)
    assert (s["executors_lost_by_master_restart"], s["tasks_failed_by_test"]) == (2, 2)
    assert (s["executors_lost"], s["tasks_failed"]) == (0, 0), s["failure_reasons"]


def test_an_executor_lost_long_after_the_master_was_back_counts_against_the_scaler():
    s = restart_summary(restart_session(removed="2026-11-26T05:10:00.000GMT"))
    assert (s["executors_lost_by_master_restart"], s["executors_lost"], s["tasks_failed"]) == (1, 1, 1)
    assert s["failure_reasons"][0] == f"task on executor 0: ExecutorLostFailure (executor 0 exited " \
                                      f"caused by one of the running tasks) Reason: {INTERRUPTED.format(0)}"
    assert s["failure_reasons"][1] == ("user8#11 executor 0 on 127.0.7.50, removed "
                                       f"2026-11-26T05:10:00.000GMT: {INTERRUPTED.format(0)}")


def test_an_executor_started_after_the_master_was_back_and_lost_soon_after_counts_against_the_scaler():
    """The recovering master's kills reach only executors that ran before it was back."""
    s = restart_summary(restart_session(added="2026-11-26T05:08:28.500GMT"), back_at=MASTER_KILLED_AT + 6.6)
    assert (s["executors_lost_by_master_restart"], s["executors_lost"], s["tasks_failed"]) == (1, 1, 1)


def test_a_drained_workers_stop_that_ends_inside_a_blind_spell_is_not_a_blind_retirement():
    """CI's short soak (2026-11-26): a scaler cycle that saw the pool just before the
    chaos killed the master stopped a worker drained 20 s earlier, done 0.5 s after
    the kill. Any other departure while blind still counts."""
    pool = PoolStats(departures=[(MASTER_KILLED_AT + 0.5, "127.0.8.2"), (MASTER_KILLED_AT + 2, "127.0.8.3")],
                     drained_departures=[(MASTER_KILLED_AT + 0.5, "127.0.8.2")])
    result = RunResult("scaler", "local", 60.0, [], pool,
                       [Fault("restart-master", MASTER_KILLED_AT, blind_until=MASTER_BACK_AT,
                              converged_s=69.5)])
    [blind] = summarize(result)["blind"]
    assert (blind["departures"], blind["drained_workers_stopped"]) == (["127.0.8.3"], ["127.0.8.2"])


def test_the_pool_counts_worker_jvms_not_the_launcher_nor_a_copy_that_has_not_execd():
    """Two kinds of short-lived process carry a worker's arguments. One is the launcher
    JVM that spark-class (a worker pod's command) runs first to build the worker's
    command line. The other is a worker's fork that has not exec'd yet (an executor
    launching), which reads its parent's command line. A sample catching either counted
    an arrival and a departure; the Kubernetes soak counted launcher exits as
    retirements, and a short soak in CI counted a fork as a worker stopped while the
    scaler was blind. Both live too briefly to time a sample to them, so stand-in
    processes carry the command lines: a launcher, and a worker with a subshell (a copy
    that stays)."""
    from soaklib.cluster import SPARK_LAUNCHER, WORKER_CLASS, _cmdline, _ppid, pids, worker_processes

    args = [WORKER_CLASS, "--host", "127.0.9.1", "--port", "7078", "spark://127.0.0.1:7077"]
    spawn = dict(cwd="/", env={"PATH": "/usr/bin:/bin"}, start_new_session=True)
    # shells that stay (two commands: no exec of sleep), their arguments in their command lines
    launcher = subprocess.Popen(["/bin/bash", "-c", "sleep 60; true", "java", "-cp", "jars/*", SPARK_LAUNCHER,
                                 *args], **spawn)
    worker = subprocess.Popen(["/bin/bash", "-c", "(sleep 60; true) & wait", "java", "-cp", "jars/*", *args],
                              **spawn)

    def copies() -> list[int]:
        return [pid for pid in pids() if _ppid(pid) == worker.pid and _cmdline(pid) == _cmdline(worker.pid)]

    try:
        # Popen returns once exec has begun, before the kernel sets up the new argument
        # pages: until then /proc/<pid>/cmdline reads empty (most of the time, measured)
        until_sync(lambda: all(Path(f"/proc/{p.pid}/cmdline").read_bytes() for p in (launcher, worker))
                   and copies(), timeout=10, interval=0.01, what="the stand-ins to show their command lines")
        assert worker_processes("127.0.9.") == {worker.pid: "127.0.9.1"}
    finally:
        for process in (launcher, worker):
            os.killpg(process.pid, signal.SIGKILL)  # the shell, its subshell and their sleeps
            process.wait()


def test_a_median_ratio_comes_with_the_interval_that_says_whether_a_run_settles_it():
    rng = random.Random(7)
    static = [rng.uniform(8, 35) for _ in range(100)]  # the spread of a soak's first-executor times
    ratio, low, high = median_ratio_interval(static, static)
    assert ratio == 1 and low < 0.95 and high > 1.05, (low, high)  # the same sessions: noise either way
    ratio, low, high = median_ratio_interval([t * 1.5 for t in static], static)
    assert ratio == pytest.approx(1.5) and 1.1 < low < 1.5 < high, (low, high)


def test_the_first_executor_target_shows_its_interval_and_older_rows_still_render():
    from soak import targets_lines

    rng = random.Random(7)
    static_ttfe = sorted(rng.uniform(8, 35) for _ in range(100))
    row = {"environment": "local", "executors_lost": 0, "tasks_failed": 0, "retirements": 66}
    static = {**row, "strategy": "static", "idle_worker_seconds": 12500,
              "ttfe_median": statistics.median(static_ttfe), "ttfe": static_ttfe}
    scaler = {**row, "strategy": "scaler", "idle_worker_seconds": 5426,
              "ttfe_median": 1.5 * statistics.median(static_ttfe), "ttfe": [1.5 * t for t in static_ttfe]}
    [line] = targets_lines([scaler, static])
    assert "first executor median within 10% of the static pool's (+50%, 90% bootstrap interval +" in line
    assert line.endswith("**missed**.") and "(43% of it): met" in line
    older = [{k: v for k, v in s.items() if k != "ttfe"} for s in (scaler, static)]  # before rows had it
    [line] = targets_lines(older)
    assert "(+50%): **missed**" in line


def crowded_sessions(n: int = 100, slower: float = 1.05) -> tuple[dict, dict]:
    """First-executor times by session for a static pool and a scaler `slower` than it,
    where how crowded a session's start was sets most of its time (8 s to 40 s), alike
    in both strategies, and the rest is each run's own noise."""
    rng = random.Random(7)
    static, scaler = {}, {}
    for i in range(n):
        crowd = rng.uniform(8, 40)
        static[f"user{i % 8}#{i}"] = crowd * rng.uniform(0.9, 1.1)
        scaler[f"user{i % 8}#{i}"] = slower * crowd * rng.uniform(0.9, 1.1)
    return scaler, static


def test_sessions_paired_across_strategies_settle_what_unpaired_ones_cannot():
    scaler, static = crowded_sessions()
    a, b, paired = first_executor_samples({"ttfe_by_session": scaler}, {"ttfe_by_session": static})
    assert paired and len(a) == 100
    _, low, high = median_ratio_interval(a, b, paired=True)
    assert 1.0 < low < 1.05 < high < 1.10, (low, high)  # within 10%, and settled
    _, low, high = median_ratio_interval(a, b)
    assert low < 0.95 and high > 1.15, (low, high)  # the same times unpaired: undecided
    # a session one strategy has no first executor for is left out of the pairs
    del static["user0#0"]
    a, b, _ = first_executor_samples({"ttfe_by_session": scaler}, {"ttfe_by_session": static})
    assert len(a) == len(b) == 99


def test_the_first_executor_target_is_judged_over_the_paired_sessions():
    from soak import targets_lines

    scaler, static = crowded_sessions(slower=1.2)
    row = {"environment": "local", "executors_lost": 0, "tasks_failed": 0, "retirements": 60,
           "idle_worker_seconds": 5000}
    [line] = targets_lines([{**row, "strategy": strategy, "ttfe_by_session": times,
                             "ttfe_median": statistics.median(times.values())}
                            for strategy, times in (("scaler", scaler), ("static", static))])
    assert "the same 100 sessions paired, 90% bootstrap interval +1" in line, line
    assert line.endswith("**missed**."), line


def test_a_drift_of_the_machine_between_phases_cancels_over_runs_of_opposite_orders():
    from soak_crossover import crossover_interval

    # no difference between the strategies; the machine is 30% slower in each run's first phase
    scaler, static = crowded_sessions(slower=1.0)
    keys = sorted(scaler)
    first_scaler = ([1.3 * scaler[k] for k in keys], [static[k] for k in keys])
    first_static = ([scaler[k] for k in keys], [1.3 * static[k] for k in keys])
    for run in first_scaler, first_static:  # each run alone "settles" the drift, not the strategies
        _, low, high = median_ratio_interval(*run, paired=True)
        assert not low < 1.0 < high, (low, high)
    ratio, low, high = crossover_interval([first_scaler, first_static])
    assert low < 1.0 < high and high / low < 1.2 and ratio == pytest.approx(1.0, abs=0.05), (ratio, low, high)
    # a true 20% in both runs survives the crossover
    slower = [([1.2 * t for t in a], b) for a, b in (first_scaler, first_static)]
    ratio, low, high = crossover_interval(slower)
    assert 1.1 < low < ratio < high, (ratio, low, high)


def test_a_rerun_of_some_strategies_replaces_only_their_rows():
    from soak import merged, runs_lines

    def row(environment, strategy, started):
        run = {"command": f"soak.py ({started})", "started": started, "machine": "m", "users": 8, "think": 90,
               "session_allowance": 90}
        return {"environment": environment, "strategy": strategy, "run": run}

    previous = [row("kubernetes", "scaler", "1"), row("local", "scaler", "1"), row("local", "static", "1"),
                row("local", "original", "1")]
    rerun = [row("local", "static", "2"), row("local", "scaler", "2")]
    rows = merged(previous, rerun)
    assert [(r["environment"], r["strategy"], r["run"]["started"]) for r in rows] == [
        ("kubernetes", "scaler", "1"), ("local", "original", "1"),
        ("local", "static", "2"), ("local", "scaler", "2")]
    runs = [line for line in runs_lines(rows) if line]
    assert runs[0].startswith("kubernetes (scaler), local (original): ") and runs[1].startswith(
        "local (static, scaler): "), runs


def test_users_sessions_are_planned_alike_for_every_strategy_however_long_they_take():
    behaviour = Behaviour(think=90, session_allowance=90)
    first, second = (planned_sessions(random.Random(1001), behaviour) for _ in range(2))
    plans = [next(first) for _ in range(20)]
    assert plans == [next(second) for _ in range(20)]
    starts = [at for at, _ in plans]
    assert all(later - earlier >= 90 for earlier, later in zip(starts, starts[1:])), starts


def test_first_executor_times_are_split_by_how_the_pool_met_each_driver():
    """A driver that found a worker ready waited for its own start; one that found none
    waited for a worker's, and one whose wait overlapped worker starts shared the CPUs
    with them. The sampler's readings at each driver's start tell which."""
    pool = PoolStats(readiness=[(99.0, 1, 0), (199.5, 0, 1), (299.0, 0, 0)],
                     arrivals=[(190.0, "127.0.8.2"), (305.0, "127.0.8.3"), (330.0, "127.0.8.4")])
    starts = [(100.0, 5.0), (200.0, 12.0), (300.0, 10.0), (50.0, 7.0)]
    sessions = [Session("user1", n, result={"wall_start": start, "first_executor_s": ttfe})
                for n, (start, ttfe) in enumerate(starts, 1)]
    s = summarize(RunResult("scaler", "local", 600.0, sessions, pool, []))
    # user1#4 started before the pool's first reading; user1#3 met no worker and one arrived in its wait
    assert s["pool_by_session"] == {"user1#1": [1, 0], "user1#2": [0, 1], "user1#3": [0, 1]}
    assert s["ttfe_by_pool"] == {
        "found a worker ready": {"sessions": 1, "median": 5.0},
        "found none ready": {"sessions": 2, "median": 11.0},
        "waited while workers started": {"sessions": 2, "median": 11.0},
        "waited with no worker starting": {"sessions": 1, "median": 5.0},
    }


# -- the cold-start model: workers that start late, and the four strategies compared ---------------


def test_a_worker_start_delay_is_fixed_uniform_or_lognormal_and_anything_else_names_the_flag():
    from soaklib.start_delay import StartDelay

    assert [str(StartDelay.parse(s)) for s in ("60", " 2.5 ", "uniform:30:90", "lognormal:60:0.5")] == [
        "60", "2.5", "uniform:30:90", "lognormal:60:0.5"]
    for bad in ("", "sixty", "uniform:30", "uniform:90:30", "normal:60:5", "lognormal:60:0.5:1", "-1",
                "nan", "uniform:0:inf"):
        with pytest.raises(ValueError, match="^--worker-start-delay: "):
            StartDelay.parse(bad)


def test_sampled_start_delays_are_seeded_per_start_and_bounded():
    from soaklib.start_delay import StartDelay

    uniform, lognormal = StartDelay.parse("uniform:30:90"), StartDelay.parse("lognormal:60:0.5")
    for delay in uniform, lognormal:
        draws = [delay.draw(1, n) for n in range(1, 2001)]
        # start n waits the same in every strategy of a run, whichever starts came before it
        assert draws[::-1] == [delay.draw(1, n) for n in range(2000, 0, -1)]
        assert draws != [delay.draw(2, n) for n in range(1, 2001)]  # another seed, other delays
        assert len(set(draws)) > 1900
        assert delay.bound >= max(draws) and min(draws) > 0
    assert uniform.bound == 90 and 30 <= min(uniform.draw(1, n) for n in range(1, 2001)) < 31
    assert 89 < max(uniform.draw(1, n) for n in range(1, 2001)) <= 90
    # the median is the lognormal's, its tail cut at 3 sigma (start_timeout is set above the bound)
    assert statistics.median(lognormal.draw(1, n) for n in range(1, 2001)) == pytest.approx(60, rel=0.05)
    assert lognormal.bound == pytest.approx(60 * math.exp(1.5))
    assert StartDelay.parse("60").draw(5, 9) == 60 == StartDelay.parse("60").bound


def test_a_late_worker_is_the_same_process_and_the_pool_counts_it_only_once_it_is_the_worker():
    """The stub sleeps, then execs the worker's command: one pid, which the backend
    recognises as its worker from the start (the command line carries the worker's
    arguments), and the soak's sampler counts only after the exec (as a pod's process
    that has not started is not counted). A python process stands for the JVM."""
    from soaklib.cluster import WORKER_CLASS, _cmdline, worker_processes
    from soaklib.start_delay import LATE_START, late_command, start_number

    worker = [sys.executable, "-c", "import time; time.sleep(60)", WORKER_CLASS, "--host", "127.0.9.2",
              "--work-dir", "/state/work/local-4", "spark://127.0.0.1:7077"]
    assert start_number(worker) == 4
    asked = time.monotonic()
    process = subprocess.Popen(late_command(worker, 1.5), cwd="/", env={"PATH": "/usr/bin:/bin"},
                               start_new_session=True, stdout=subprocess.PIPE)
    try:
        until_sync(lambda: LATE_START in _cmdline(process.pid), timeout=10, interval=0.01,
                   what="the stub to show its command line")
        assert WORKER_CLASS in _cmdline(process.pid) and worker_processes("127.0.9.") == {}
        until_sync(lambda: worker_processes("127.0.9.") == {process.pid: "127.0.9.2"}, timeout=10,
                   interval=0.01, what="the worker's command after the delay")
        assert time.monotonic() - asked >= 1.5
        assert _cmdline(process.pid)[:len(worker)] == worker
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    assert process.stdout.read().decode().startswith("soak: worker start delayed 1.500 s")
    process.stdout.close()


def test_the_local_scaler_gets_the_late_backend_by_import_path_and_reactive_gets_no_pre_warm():
    from types import SimpleNamespace

    from jhub_spark_scaler.cli import BackendType
    from soaklib.environments import KubeEnv, LocalEnv
    from soaklib.run import RunConfig, _scaler_settings
    from soaklib.start_delay import LateStartLocalBackend, StartDelay

    master = SimpleNamespace(url="spark://127.0.0.1:7077", ui="http://127.0.0.1:8080")
    env = LocalEnv(Path("/tmp/soak"), start_delay=StartDelay.parse("uniform:30:90"), seed=4)
    settings = _scaler_settings(env, master, RunConfig(strategy="reactive", minutes=1, users=1,
                                                       start_timeout=210))
    assert settings["prewarm_workers_per_server"] == 0 and settings["start_timeout"] == 210
    assert settings["LateStartLocalBackend__start_delay"] == "uniform:30:90"
    assert settings["LateStartLocalBackend__start_delay_seed"] == 4
    # what the service's own --backend-class resolves (from the repository's root on PYTHONPATH)
    assert BackendType().validate(None, settings["backend_class"]).__name__ == LateStartLocalBackend.__name__
    assert "prewarm_workers_per_server" not in _scaler_settings(
        LocalEnv(Path("/tmp/soak")), master, RunConfig(strategy="scaler", minutes=1, users=1))
    assert "backend_class" not in LocalEnv(Path("/tmp/soak")).scaler_flags(master, "scaler")
    # the kubelet's hook: the n-th pod of each pool waits the n-th draw, as the local n-th worker
    kube = KubeEnv(Path("/tmp/soak"), start_delay=StartDelay.parse("uniform:30:90"), seed=4)
    pods = ("spark-worker-soak-scaler-x1b2c", "spark-worker-soak-static-aaaaa",
            "spark-worker-soak-scaler-q9z8y")
    delays = [kube._pod_delay(name) for name in pods]
    draw = StartDelay.parse("uniform:30:90").draw
    assert delays == [draw(4, 1), draw(4, 1), draw(4, 2)]


def cold_start_rows(delay: str = "60") -> list[dict]:
    """Four strategies' rows with first-executor times by session: the static pool and the
    scaler alike, the scaler without pre-warm and the original policy waiting ~60 s more."""
    scaler, static = crowded_sessions(slower=1.0)
    waits = {"static": static, "scaler": scaler, "reactive": {k: t + 60 for k, t in scaler.items()},
             "original": {k: t + 70 for k, t in scaler.items()}}
    idle = {"static": 12000, "scaler": 3000, "reactive": 1500, "original": 1000}
    return [{"environment": "local", "strategy": name, "worker_start_delay": delay, "ttfe_by_session": times,
             "ttfe_median": statistics.median(times.values()), "ttfe_p90": 99.0,
             "idle_worker_seconds": idle[name]} for name, times in waits.items()]


def test_the_four_strategies_are_compared_with_paired_intervals_and_the_cold_start_targets():
    from soaklib.compare import comparison_lines

    lines = comparison_lines(cold_start_rows())
    assert lines[0].startswith("local, worker start delay 60: ")
    table = [line for line in lines if line.startswith("| ") and "strategy" not in line]
    assert [line.split(" | ")[0] for line in table] == [
        "| static pool", "| original policy", "| scaler without pre-warm", "| scaler with pre-warm"]
    assert table[0].endswith("| 1.00x (1.00 to 1.00, 100 paired) |")
    assert " 100 paired) |" in table[2] and "| 1500 |" in table[2]
    [targets] = [line for line in lines if line.startswith("- cold-start targets: ")]
    assert "within 10% of the static pool's (0.98x (0.96 to 1.04, 100 paired)): met" in targets, targets
    assert "static pool's (25%): met." in targets
    assert ">= 1.5x the scaler's (" in targets and "**missed**" not in targets, targets
    # without a delay: the same table, the fast-start targets against the original policy
    plain = comparison_lines([{**row, "worker_start_delay": ""} for row in cold_start_rows()])
    assert plain[0].startswith("local, worker start delay none: ")
    assert not any(line.startswith("- cold-start targets") for line in plain)
    [fast] = [line for line in plain if line.startswith("- fast-start targets: ")]
    assert "idle worker-s <= 1.5x the original policy's (3.00x): **missed**" in fast, fast
    assert "no later than the original policy's (0.27x (0.25 to 0.29, 100 paired)): met." in fast, fast


def test_rows_of_a_worker_start_delay_are_kept_apart_from_rows_without():
    from soak import merged, table, targets_lines

    previous = [{**row, "worker_start_delay": ""} for row in cold_start_rows()]
    rows = merged(previous, cold_start_rows("60"))
    assert len(rows) == 8
    assert len(merged(rows, cold_start_rows("60"))) == 8  # a rerun replaces its own
    lines = targets_lines([{**row, "executors_lost": 0, "tasks_failed": 0, "retirements": 60}
                           for row in rows])
    assert len(lines) == 2 and lines[1].startswith("- local (worker start delay 60) targets: "), lines
    assert [line.split(" | ")[2] for line in table(rows)[2:]] == ["–"] * 4 + ["60"] * 4
