"""The soak's attribution of losses: what the chaos's own worker kill caused is counted
apart, anything else counts against the scaler. The records are a real session's of the
first full-length soak (user6 #1, 2026-11-26), whose worker the chaos SIGKILLed while its
executors ran the reduce stage."""

from __future__ import annotations

import sys
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

from soaklib.analysis import summarize  # noqa: E402
from soaklib.chaos import Fault  # noqa: E402
from soaklib.pool import PoolStats  # noqa: E402
from soaklib.run import RunResult  # noqa: E402
from soaklib.users import Session  # noqa: E402

KILLED_AT = datetime(2026, 11, 26, 1, 12, 22, tzinfo=timezone.utc).timestamp()
LOST = "worker lost: 127.0.6.3:59533 got disassociated"
MISSING_OUTPUT = "FetchFailed(null, shuffleId=0, mapIndex=-1, mapId=-1, reduceId={}, message="


def killed_session(*extra_failed: dict) -> dict:
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
        ],
    }


def summary_of(record: dict) -> dict:
    result = RunResult("scaler", "local", 60.0, [Session("user6", 1, result=record)],
                       PoolStats(departures=[(KILLED_AT + 0.5, "127.0.6.3")]),
                       [Fault("kill-busy-worker", KILLED_AT, "127.0.6.3", converged_s=2.5)])
    return summarize(result)


def test_the_killed_workers_losses_and_the_missing_shuffle_output_they_left_are_the_tests():
    s = summary_of(killed_session())
    assert (s["executors_lost_by_test"], s["tasks_failed_by_test"]) == (2, 5)
    assert s["executors_hit_by_test"] == 2
    assert (s["executors_lost"], s["tasks_failed"], s["retirements"]) == (0, 0, 0), s["failure_reasons"]


def test_missing_shuffle_output_in_a_stage_the_kill_did_not_touch_counts_against_the_scaler():
    s = summary_of(killed_session({"executor": "2", "stage": "stage 3.0", "error": MISSING_OUTPUT.format(0)}))
    assert (s["tasks_failed_by_test"], s["tasks_failed"]) == (5, 1)
    assert s["failure_reasons"] == [f"task on executor 2: {MISSING_OUTPUT.format(0)}"]


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
