"""What the admin page shows, as plain JSON-ready data: a pure function.

`pool_view(...)` reads the last Snapshot and Plan, the decision log and the
hub's servers and returns one dict with every row of every table; `query.py`
filters, sorts and pages it for the page and `api/pool`. No I/O, no clock:
`now` is passed in.

`settings` holds the configured values: `max_workers`, `min_workers`,
`idle_workers` (the configured value; `idle_override`, when not None,
replaces it), `prewarm_window`, `prewarm_per_server` and `prewarm_gate` (an
`activity.Gate`; absent: every server may pre-warm).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime, timezone
from typing import Any

from ..activity import Gate, Server, warm_servers
from ..model import MasterApp, Snapshot, Worker, WorkerState
from ..policy import Plan, explain
from ..reconciler import Decision
from ..shuffle import KeepForShuffle, kept_words
from .placement import place
from .problems import problems
from .users import user_rows

STATES = tuple(state.value for state in WorkerState)

#: How much a worker's state needs an admin, lower first: the workers table's default order.
ATTENTION: Mapping[str, int] = {
    "lost": 0, "held": 1, "unschedulable": 2, "draining": 3, "starting": 4, "drained": 5,
    "busy": 6, "idle": 7,
}
assert set(ATTENTION) == set(STATES)

#: The Bootstrap badge colour (`text-bg-<colour>`) of each worker state and problem kind: the
#: only copy; the page hands it to its script.
STATE_BADGES: Mapping[str, str] = {
    "lost": "danger", "held": "danger", "unschedulable": "danger",
    "draining": "warning", "drained": "warning",
    "starting": "info", "busy": "success", "idle": "secondary",
    "blind": "danger", "saturated": "danger", "hub": "danger", "paused": "warning",
    "drain-timeout": "warning", "waiting-for-node": "info",
}


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


def _worker(w: Worker, *, listed: Mapping[str, MasterApp], holding: list[MasterApp],
            idle_since: Mapping[str, float], kept: Mapping[str, KeepForShuffle],
            now: float) -> dict[str, Any]:
    m = w.master
    placed = place(w, listed=listed, holding=holding)
    since = idle_since.get(w.handle)
    keep = kept.get(w.handle)
    return {
        "key": w.handle,
        "handle": w.handle,
        "host": w.host,
        "state": w.state.value,
        "why": kept_words(keep) if keep else w.why,
        "waiting_for_node": w.waiting_for_node,
        # the running apps whose shuffle files keep it from retiring, though idle
        "keeps_shuffle_of": list(keep.apps) if keep else [],
        "ours": w.ours,
        "attention": ATTENTION[w.state.value],
        "cores_used": m.cores_used if m else None,
        "cores": m.cores if m else None,
        "memory_used": m.memory_used if m else None,  # MiB, as the master reports it
        "memory": m.memory if m else None,
        "apps": placed.apps,
        "apps_source": placed.source,
        "apps_read_at": iso(placed.read_at),
        "apps_text": placed.text,
        "users": sorted({a["user"] for a in placed.apps if a["user"]}),
        "age": round(now - w.created_at) if w.ours and w.created_at else None,
        "idle_since": iso(since) if w.state is WorkerState.IDLE and since is not None else None,
    }


def _workers(snapshot: Snapshot | None, plan: Plan | None, *, now: float) -> list[dict[str, Any]]:
    if snapshot is None:
        return []
    listed = {a.id: a for a in snapshot.apps}
    holding = [a for a in snapshot.apps if a.cores > 0]
    idle_since = plan.history.idle_since if plan else {}
    kept = plan.kept if plan else {}
    return [_worker(w, listed=listed, holding=holding, idle_since=idle_since, kept=kept, now=now)
            for w in snapshot.workers]


def _apps(snapshot: Snapshot | None, workers: list[dict[str, Any]], *, hub_users: set[str],
          now: float) -> list[dict[str, Any]]:
    running: dict[str, int] = {}
    for w in workers:
        for a in w["apps"]:
            running[a["id"]] = running.get(a["id"], 0) + 1
    return [
        {"key": a.id, "id": a.id, "name": a.name, "cores": a.cores, "state": a.state, "user": a.user,
         "hub_user": a.user in hub_users, "workers": running.get(a.id, 0),
         "waiting_for": max(0, round(now - a.start_time / 1000)) if a.cores == 0 else None,
         "started": iso(a.start_time / 1000)}
        for a in (snapshot.apps if snapshot else ())
    ]


def _server(s: Server, *, warm: bool, per_server: int, gate: Gate, now: float,
            window: float) -> dict[str, Any]:
    why = gate.why_not(s)
    if why is None and not warm:
        why = "no start time" if s.started is None else (
            "started over prewarm_window ago" if now - s.started > window else "used up by a Spark app")
    return {
        "key": f"{s.user}/{s.name}",
        "user": s.user,
        "name": s.name,
        "started": iso(s.started),
        "pending": s.pending,
        "ready": s.ready,
        "profile": s.profile,
        "prewarm_credit": per_server if warm else 0,
        "prewarm_why": None if warm else why,
    }


def _target(plan: Plan | None, snapshot: Snapshot | None, *, idle_override: int | None,
            settings: Mapping[str, Any]) -> dict[str, Any]:
    demand = plan.demand if plan else None
    idle = settings["idle_workers"] if idle_override is None else idle_override
    return {
        "target": demand.target if demand else None,
        "wanted": demand.wanted if demand else None,
        "busy": demand.busy if demand else None,
        "waiting": demand.waiting if demand else None,
        # in force now: an override set since the last plan shows at once
        "idle_workers": idle,
        "prewarm_credit": demand.prewarm_credit if demand else (snapshot.prewarm_credit if snapshot else 0),
        "foreign_capacity": demand.foreign_capacity if demand else None,
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
    return {"key": str(d.seq), "seq": d.seq, "at": iso(d.at), "action": str(d.action), "detail": d.detail,
            "reasons": list(d.reasons)}


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
    paused_by: str | None = None,
    idle_override_by: str | None = None,
) -> dict[str, Any]:
    """Everything the admin page shows, every row of every table; JSON-serialisable."""
    status, error = _status(snapshot, paused)
    decisions = tuple(decisions)  # read twice: for the problems and the table
    counts = {state: 0 for state in STATES}
    for w in snapshot.workers if snapshot else ():
        if w.ours:  # as the metrics count; foreign workers are counted apart
            counts[w.state.value] += 1
    servers = tuple(servers)
    gate = settings.get("prewarm_gate") or Gate()
    warm = set(warm_servers(servers, now=now, window=settings["prewarm_window"],
                            app_starts=snapshot.app_starts if snapshot else (), gate=gate))
    server_rows = [_server(s, warm=s in warm, per_server=settings["prewarm_per_server"], gate=gate, now=now,
                           window=settings["prewarm_window"]) for s in servers]
    workers = _workers(snapshot, plan, now=now)
    apps = _apps(snapshot, workers, hub_users={s.user for s in servers}, now=now)
    target = _target(plan, snapshot, idle_override=idle_override, settings=settings)
    return {
        "now": iso(now),
        "status": status,
        "error": error,
        "paused": paused,
        "paused_by": paused_by,
        "idle_override_by": idle_override_by,
        "observed_at": iso(snapshot.taken_at) if snapshot else None,
        "hub": {"healthy": hub_healthy, "error": hub_error},
        "counts": counts,
        "foreign": sum(1 for w in snapshot.workers if not w.ours) if snapshot else 0,
        "target": target,
        "plan": _plan(plan),
        "problems": problems(blind=error if status == "blind" else None, paused=paused,
                             paused_by=paused_by, counts=counts, target=target, apps=apps,
                             hub_error=None if hub_healthy else hub_error, decisions=decisions, now=now,
                             waiting_for_node=sum(1 for w in workers if w["waiting_for_node"])),
        "workers": workers,
        "apps": apps,
        "servers": server_rows,
        "users": user_rows(servers=server_rows, apps=apps, workers=workers),
        "decisions": [_decision(d) for d in reversed(list(decisions))],
    }
