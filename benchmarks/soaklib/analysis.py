"""From a run's raw records to the soak's numbers. Losses on a worker the chaos
killed (from the kill on), and executors lost while the chaos restarted the Spark master
or in the seconds after (a recovering master kills executors it does not know yet), are
the test's own and counted apart."""

from __future__ import annotations

import bisect
import math
import random
import re
import statistics
from datetime import datetime, timezone

GRACEFUL = ("executor decommission", "killed by driver")
OWN_DEPARTURE_WINDOW = 60.0  # s after a chaos kill in which that host's departure is the kill's
LOSS_SEEN_WITHIN = 10.0  # s from a worker kill until its executors' drivers have them removed
# s from the master's return until its drivers have the executors removed that it told a
# re-registering worker to kill while recovering: the worker gives an executor up to 10 s
# (Spark's executor terminate timeout) to exit before it reports the kill
RESTART_KILLS_SEEN_WITHIN = 15.0


def _lost(executor: dict) -> bool:
    reason = (executor.get("reason") or "").lower()
    return bool(reason) and not any(g in reason for g in GRACEFUL)


def _hit(executor: dict, killed_at: float, read_at: float) -> bool:
    """The executor ran when its worker was killed, and its driver read its executors long
    enough after the kill to have it removed. (A session ending just after the kill read
    them before it; its executor does not show the loss.)"""
    alive = _epoch(executor.get("added")) < killed_at < _epoch(executor.get("removed"))
    return alive and read_at > killed_at + LOSS_SEEN_WITHIN


def _caused_by(task: dict, killed_executors: set[str], killed_stages: set[str],
               only_killed_departed: bool) -> bool:
    """A task that failed on an executor the chaos killed, or fetching shuffle output
    that was on one: FetchFailed(BlockManagerId(<executor id>, host, port, ...)), or
    FetchFailed(null, ...) ("missing an output location": the killed executors' map
    output was dropped) or a failure the stage counts but its task list lacks (no
    executor: map tasks whose output was on a killed executor, resubmitted). Those two
    name no executor, so they are the chaos's only in a stage attempt that lost tasks on
    a killed executor, or in a session where no executor but the killed ones departed:
    output goes missing only with the executor that held it."""
    if task["executor"] in killed_executors:
        return True
    if task["error"].startswith("FetchFailed(null,") or not task["executor"]:
        return task["stage"] in killed_stages or only_killed_departed
    fetch = re.search(r"BlockManagerId\((\w+),", task["error"])
    return bool(fetch) and fetch.group(1) in killed_executors


def _pool_at_session(pool, start: float, first_executor: float) -> tuple[int, int] | None:
    """The pool as a session's driver met it: workers ready for an app at its start, and
    worker JVMs starting during its wait for a first executor (starting at its start, or
    arriving before the first executor); None before the pool's first reading."""
    readings = bisect.bisect_right(pool.readiness, (start, math.inf, math.inf))  # those up to its start
    if not readings:
        return None
    _, ready, starting = pool.readiness[readings - 1]
    arriving = sum(1 for at, _ in pool.arrivals if start < at <= start + first_executor)
    return ready, starting + arriving


def _ttfe_by_pool(ttfe: dict[str, float], pool_at: dict[str, tuple[int, int]]) -> dict:
    """Sessions' first-executor times split by how the pool met them: how many and the median."""
    split = {}
    for index, names in enumerate([("found a worker ready", "found none ready"),
                                   ("waited while workers started", "waited with no worker starting")]):
        for name, some in zip(names, (True, False)):
            times = [ttfe[k] for k, at in pool_at.items() if (at[index] > 0) == some]
            median = statistics.median(times) if times else None
            split[name] = {"sessions": len(times), "median": _round(median)}
    return split


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def summarize(result) -> dict:
    killed = {f.detail: f.at for f in result.faults if f.kind == "kill-busy-worker" and f.detail}
    # a killed worker's executors: on its host, added before the next worker there arrived
    # (an executor it launched may register with its driver after the kill), not removed
    # before the kill
    arrivals = result.pool.arrivals
    until = {host: min((at for at, h in arrivals if h == host and at > killed_at), default=math.inf)
             for host, killed_at in killed.items()}
    # a master restart's losses: executors that ran before it was back, removed from its kill
    # until RESTART_KILLS_SEEN_WITHIN after it was back. A worker that re-registers with the
    # recovering master before reporting its executors is told to kill them (Spark's
    # WorkerLatestState); a master back in under a second has their drivers see that after
    # its return. (The scaler is blind until the master is back, which the blind check below
    # holds it to.)
    restarts = [(f.at, f.blind_until) for f in result.faults if f.kind == "restart-master" and f.blind_until]
    lost_by_restart = 0
    lost = lost_by_test = hit_by_test = tasks_failed = tasks_failed_by_test = jobs_failed = jobs = 0
    ttfe_calm, reasons, errors = [], [], []
    ttfe_by_session: dict[str, float] = {}
    pool_by_session: dict[str, tuple[int, int]] = {}  # (workers ready at start, starts during the wait)
    # while a fault lasts (injected, until the scaler converged), sessions wait for its reason
    faults = [(f.at, f.at + (f.converged_s if f.converged_s is not None else 180.0)) for f in result.faults]
    for s in result.sessions:
        if s.error:
            errors.append(f"{s.user}#{s.n}: {s.error}")
        r = s.result
        if not r:
            continue
        jobs += r.get("jobs", 0)
        jobs_failed += r.get("jobs_failed", 0)
        if "first_executor_s" in r:
            ttfe_by_session[f"{s.user}#{s.n}"] = r["first_executor_s"]
            if (at := _pool_at_session(result.pool, r["wall_start"], r["first_executor_s"])) is not None:
                pool_by_session[f"{s.user}#{s.n}"] = at
            waited = (r["wall_start"], r["wall_start"] + r["first_executor_s"])
            if not any(a < waited[1] and waited[0] < b for a, b in faults):
                ttfe_calm.append(r["first_executor_s"])
        else:
            errors.append(f"{s.user}#{s.n}: {r.get('first_executor_error', 'no first executor')}")
        executors = r.get("executors", [])
        killed_executors = {e["id"] for e in executors if e["host"] in killed
                            and _epoch(e.get("added")) < until[e["host"]]
                            and _epoch(e.get("removed")) >= killed[e["host"]]}
        hit_by_test += sum(1 for e in executors if e["id"] in killed_executors
                           and _hit(e, killed[e["host"]], r.get("executors_read_at", math.inf)))
        by_restart = {e["id"] for e in executors if e["id"] not in killed_executors and _lost(e)
                      and any(_epoch(e.get("added")) < b and a <= _epoch(e.get("removed"))
                              <= b + RESTART_KILLS_SEEN_WITHIN for a, b in restarts)}
        lost_by_restart += len(by_restart)
        chaos_executors = killed_executors | by_restart
        failed_tasks = r.get("failed_tasks", [])
        killed_stages = {t["stage"] for t in failed_tasks if t["executor"] in chaos_executors}
        departed = {e["id"] for e in executors if e.get("reason") or e.get("removed")}
        only_killed_departed = bool(departed) and departed <= chaos_executors
        caused = [_caused_by(t, chaos_executors, killed_stages, only_killed_departed) for t in failed_tasks]
        by_test_failed = sum(caused)
        reasons += [f"task on executor {t['executor']}: {t['error']}"
                    for t, by_chaos in zip(failed_tasks, caused) if not by_chaos]
        for e in executors:
            by_test = e["id"] in chaos_executors
            if _lost(e):
                if by_test:
                    lost_by_test += 1
                else:
                    lost += 1
                    reasons.append(f"{s.user}#{s.n} executor {e['id']} on {e['host']}, removed "
                                   f"{e.get('removed')}: {e['reason']}")
        tasks_failed_by_test += by_test_failed
        tasks_failed += r.get("tasks_failed", 0) - by_test_failed
    ttfe = list(ttfe_by_session.values())
    pool = result.pool
    retirements = [
        (at, host) for at, host in pool.departures
        if not (host in killed and 0 <= at - killed[host] <= OWN_DEPARTURE_WINDOW)
    ]
    blind = []
    drained = set(pool.drained_departures)
    for f in result.faults:
        if f.blind_until is not None:
            # a drained worker's stop finishes a retirement decided with sight: a cycle that
            # saw the pool just before the fault may act on it just after (blind cycles stop nothing)
            during = [(at, host) for at, host in pool.departures if f.at <= at <= f.blind_until]
            blind.append({"fault": f.kind, "seconds": round(f.blind_until - f.at, 1),
                          "departures": [host for at, host in during if (at, host) not in drained],
                          "drained_workers_stopped": [host for at, host in during if (at, host) in drained]})
    return {
        "strategy": result.strategy,
        "environment": result.environment,
        "minutes": round(result.seconds / 60, 1),
        "sessions": len(result.sessions),
        "sessions_late": sum(1 for s in result.sessions if s.late >= 1.0),  # started after their plan
        "jobs": jobs,
        "session_errors": errors,
        "executors_lost": lost,
        "failure_reasons": reasons[:10],  # of the losses and failed tasks not caused by the test
        "tasks_failed": tasks_failed,
        "jobs_failed": jobs_failed,
        "executors_lost_by_test": lost_by_test,
        "executors_hit_by_test": hit_by_test,
        "executors_lost_by_master_restart": lost_by_restart,  # of executors_lost_by_test
        "tasks_failed_by_test": tasks_failed_by_test,
        "ttfe_median": _round(statistics.median(ttfe) if ttfe else None),
        "ttfe_p90": _round(_percentile(ttfe, 0.9)),
        "ttfe_mean": _round(statistics.fmean(ttfe) if ttfe else None),
        "ttfe_max": _round(max(ttfe) if ttfe else None),
        "ttfe_sessions_outside_faults": len(ttfe_calm),
        "ttfe_median_outside_faults": _round(statistics.median(ttfe_calm) if ttfe_calm else None),
        "ttfe_p90_outside_faults": _round(_percentile(ttfe_calm, 0.9)),
        # what first_executor_samples pairs across strategies
        "ttfe_by_session": {k: _round(t) for k, t in sorted(ttfe_by_session.items())},
        # whether a slow first executor waited for a worker or for CPUs that worker starts took
        "ttfe_by_pool": _ttfe_by_pool(ttfe_by_session, pool_by_session),
        "pool_by_session": {k: list(at) for k, at in sorted(pool_by_session.items())},
        "scale_ups": pool.scale_ups,
        "retirements": len(retirements),
        "idle_worker_seconds": round(pool.idle_worker_seconds),
        "worker_seconds": round(pool.worker_seconds),
        "peak_workers": pool.peak_workers,
        # wall times, to set beside the failure reasons' removal times
        "faults": [{"kind": f.kind, "detail": f.detail, "at": _stamp(f.at), "back": _stamp(f.blind_until),
                    "converged_s": f.converged_s, "error": f.error} for f in result.faults],
        "blind": blind,
        "settled": result.settled,
        "baseline": result.baseline,
        "cpu_busy": _round(result.cpu_busy),
    }


def first_executor_samples(scaler: dict, static: dict) -> tuple[list[float], list[float], bool] | None:
    """The first-executor times to compare two strategies' rows by: session by session
    (paired: sessions start at the same planned times in every strategy) when both rows
    name their sessions, else each row's own (rows from before the planned sessions)."""
    a, b = scaler.get("ttfe_by_session"), static.get("ttfe_by_session")
    if a and b:
        both = sorted(a.keys() & b.keys())
        return [a[k] for k in both], [b[k] for k in both], True
    if scaler.get("ttfe") and static.get("ttfe"):
        return scaler["ttfe"], static["ttfe"], False
    return None


def median_ratio_interval(a: list[float], b: list[float], *, paired: bool = False, draws: int = 4000,
                          seed: int = 1) -> tuple[float, float, float]:
    """median(a) / median(b) and its 90% bootstrap interval (see `ratio_draws`).
    About 100 sessions a strategy leave the time to first executor's median uncertain
    by tens of percent unpaired, since how crowded a session's start is weighs most;
    the interval says whether a run settles a 10% target at all."""
    low, high = interval90(ratio_draws(a, b, paired=paired, draws=draws, rng=random.Random(seed)))
    return statistics.median(a) / statistics.median(b), low, high


def ratio_draws(a: list[float], b: list[float], *, paired: bool, draws: int,
                rng: random.Random) -> list[float]:
    """median(a) / median(b) over `draws` resamples with replacement, of each sample on
    its own or, `paired`, of the pairs (a[i], b[i])."""
    ratios = []
    for _ in range(draws):
        picks_a = rng.choices(range(len(a)), k=len(a))
        picks_b = picks_a if paired else rng.choices(range(len(b)), k=len(b))
        ratios.append(statistics.median(a[i] for i in picks_a) / statistics.median(b[i] for i in picks_b))
    return ratios


def interval90(draws: list[float]) -> tuple[float, float]:
    """The 5th and 95th percentiles of bootstrap draws."""
    ordered = sorted(draws)
    return ordered[int(len(ordered) * 0.05)], ordered[int(len(ordered) * 0.95) - 1]


def _epoch(stamp: str | None) -> float:
    """Spark REST's "2026-11-25T21:00:00.123GMT" as epoch seconds (inf if missing)."""
    if not stamp:
        return float("inf")
    return datetime.strptime(stamp.replace("GMT", "+0000"), "%Y-%m-%dT%H:%M:%S.%f%z").timestamp()


def _stamp(epoch: float | None) -> str | None:
    """Epoch seconds as Spark REST's time stamps are written (UTC, milliseconds)."""
    if epoch is None:
        return None
    return datetime.fromtimestamp(epoch, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "GMT"


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 2)
