"""Which Spark apps run on a worker, and how that is known: a pure function.

The master's `/json/` lists each worker's cores in use and each app's cores granted,
but not which app runs where. A worker's own `/json/` lists its executors; the scaler
reads it for some workers only (`Worker.executors`, None where not read). So a worker's
apps are:

- "worker": read from its own /json/ (`Worker.executors_read_at`);
- "master": deduced from the master alone: no cores used means no apps; when exactly
  one app holds cores in the whole cluster, every worker using cores runs that app;
- "unread": cores in use, several apps hold cores, and its own /json/ was not read.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from typing import Any, NamedTuple

from ..model import MasterApp, Worker


class Placement(NamedTuple):
    apps: list[dict[str, str]]  # [{"id", "name", "user"}], by app id
    source: str  # "worker", "master" or "unread"
    read_at: float | None  # epoch seconds the worker's own /json/ was read ("worker" only)
    text: str  # what the page's cell shows: never a bare "-"


def _app(app_id: str, name: str, listed: Mapping[str, MasterApp]) -> dict[str, str]:
    known = listed.get(app_id)
    # the user comes from the master's app list: "" once the app is not listed there
    return {"id": app_id, "name": name or (known.name if known else "") or app_id,
            "user": known.user if known else ""}


def _clock(at: float) -> str:
    return datetime.fromtimestamp(at, timezone.utc).strftime("%H:%M:%S")


def _names(apps: Sequence[dict[str, Any]]) -> str:
    return ", ".join(a["name"] for a in apps) if apps else "none"


def place(w: Worker, *, listed: Mapping[str, MasterApp], holding: Sequence[MasterApp]) -> Placement:
    """Worker `w`'s apps. `listed`: the master's apps by id; `holding`: those granted cores."""
    if w.executors is not None:
        seen: dict[str, str] = {}
        for e in w.executors:
            seen.setdefault(e.app_id, e.app_name)
        apps = [_app(app_id, name, listed) for app_id, name in sorted(seen.items())]
        read_at = w.executors_read_at
        # the time of the read, not its age: a text that changed every second would rewrite
        # every read row of the page on each refresh
        when = "worker" if read_at is None else f"worker, read {_clock(read_at)} UTC"
        return Placement(apps, "worker", read_at, f"{_names(apps)} ({when})")
    m = w.master
    if m is None:
        return Placement([], "master", None, "none (not registered at the master)")
    if m.cores_used == 0:
        return Placement([], "master", None, "none (master: 0 cores used)")
    if len(holding) == 1:
        only = holding[0]
        apps = [_app(only.id, only.name, listed)]
        return Placement(apps, "master", None, f"{_names(apps)} (master: the only app holding cores)")
    if not holding:
        return Placement([], "unread", None, f"not read: {m.cores_used} cores used, no app holds cores")
    return Placement([], "unread", None, f"not read: one or more of {len(holding)} apps holding cores")
