"""What the admin page shows, as plain JSON-ready data: a pure function.

`pool_view(...)` reads the last Snapshot and Plan, the decision log and the
hub's servers and returns one dict; the page renders it, `api/pool` returns
it as JSON, the page's script re-renders its tables from it. No I/O, no clock:
`now` is passed in.

`settings` holds the configured values: `max_workers`, `min_workers`,
`idle_workers` (the configured value; `idle_override`, when not None,
replaces it), `prewarm_window` and `prewarm_per_server`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime, timezone
from typing import Any

from ..activity import Server, warm_servers
from ..model import Snapshot, Worker, WorkerState
from ..policy import Plan, explain
from ..reconciler import Decision

STATES = tuple(state.value for state in WorkerState)


def iso(at: float | None) -> str | None:
    """Epoch seconds as ISO 8601 UTC to the second, or None."""
    if at is None:
        return None
    return datetime.fromtimestamp(at, timezone.utc).isoformat(timespec="seconds")


def _status(snapshot: Snapshot | None, paused: bool) -> tuple[str, str]:
    if snapshot is None:
        return "blind", "no observation yet"
    if snapshot.blind:
        return "blind", snapshot.master_error or snapshot.backend_error
    return ("paused", "") if paused else ("healthy", "")


def _worker(w: Worker, *, now: float, idle_since: Mapping[str, float]) -> dict[str, Any]:
    m = w.master
    apps = sorted({e.app_name or e.app_id for e in w.executors}) if w.executors is not None else None
    since = idle_since.get(w.handle)
    return {
        "handle": w.handle,
        "host": w.host,
        "state": w.state.value,
        "why": w.why,
        "ours": w.ours,
        "cores_used": m.cores_used if m else None,
        "cores": m.cores if m else None,
        "memory_used": m.memory_used if m else None,  # MiB, as the master reports it
        "memory": m.memory if m else None,
        "apps": apps,  # None: not read (only retiring workers' executors are)
        "age": round(now - w.created_at) if w.ours and w.created_at else None,
        "idle_since": iso(since) if w.state is WorkerState.IDLE else None,
    }


def _server(s: Server, *, warm: bool, per_server: int) -> dict[str, Any]:
    return {
        "user": s.user,
        "name": s.name,
        "started": iso(s.started),
        "pending": s.pending,
        "ready": s.ready,
        "prewarm_credit": per_server if warm else 0,
    }


def _target(plan: Plan | None, snapshot: Snapshot | None, *, idle_override: int | None,
            settings: Mapping[str, Any]) -> dict[str, Any]:
    demand = plan.demand if plan else None
    return {
        "target": demand.target if demand else None,
        "busy": demand.busy if demand else None,
        "waiting": demand.waiting if demand else None,
        "idle_target": demand.idle_target if demand else None,
        "foreign_capacity": demand.foreign_capacity if demand else None,
        "prewarm_credit": snapshot.prewarm_credit if snapshot else 0,
        "idle_workers": settings["idle_workers"] if idle_override is None else idle_override,
        "idle_workers_configured": settings["idle_workers"],
        "idle_override": idle_override,
        "min": settings["min_workers"],
        "max": settings["max_workers"],
    }


def _plan(plan: Plan | None) -> dict[str, Any]:
    return {
        "start": plan.start if plan else 0,
        "retire": list(plan.retire) if plan else [],
        "stop": list(plan.stop) if plan else [],
        "reasons": list(explain(plan)) if plan else [],
    }


def _decision(d: Decision) -> dict[str, Any]:
    return {"at": iso(d.at), "action": str(d.action), "detail": d.detail, "reasons": list(d.reasons)}


def pool_view(
    *,
    snapshot: Snapshot | None,
    plan: Plan | None,
    decisions: Iterable[Decision],
    servers: Iterable[Server],
    hub_healthy: bool,
    hub_error: str,
    paused: bool,
    idle_override: int | None,
    settings: Mapping[str, Any],
    now: float,
) -> dict[str, Any]:
    """Everything the admin page shows; JSON-serialisable."""
    status, error = _status(snapshot, paused)
    workers = snapshot.workers if snapshot else ()
    counts = {state: 0 for state in STATES}
    for w in workers:
        if w.ours:  # as the metrics count; foreign workers are counted apart
            counts[w.state.value] += 1
    idle_since = plan.history.idle_since if plan else {}
    servers = tuple(servers)
    warm = warm_servers(servers, now=now, window=settings["prewarm_window"],
                        app_starts=snapshot.app_starts if snapshot else ())
    return {
        "now": iso(now),
        "status": status,
        "error": error,
        "paused": paused,
        "observed_at": iso(snapshot.taken_at) if snapshot else None,
        "hub": {"healthy": hub_healthy, "error": hub_error},
        "counts": counts,
        "foreign": sum(1 for w in workers if not w.ours),
        "target": _target(plan, snapshot, idle_override=idle_override, settings=settings),
        "plan": _plan(plan),
        "workers": [_worker(w, now=now, idle_since=idle_since) for w in workers],
        "apps": [
            {"id": a.id, "name": a.name, "cores": a.cores, "state": a.state, "user": a.user}
            for a in (snapshot.apps if snapshot else ())
        ],
        "servers": [_server(s, warm=s in warm, per_server=settings["prewarm_per_server"]) for s in servers],
        "decisions": [_decision(d) for d in reversed(list(decisions))],
    }
