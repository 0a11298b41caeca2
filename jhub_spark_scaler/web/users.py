"""Who is using the pool: one row per user that has a notebook server or a Spark app,
built from the page's own server, app and worker rows (pure). A user's apps are matched
by the user name the master reports (the driver JVM's `user.name`), which is the hub user's
name where `configure()` names the notebooks' drivers (`driver_user`) or the servers run
as Unix users of the same name; otherwise the driver's OS user, a row of its own."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def _empty(user: str, *, hub_user: bool) -> dict[str, Any]:
    return {"key": user, "user": user, "hub_user": hub_user, "servers": 0, "server_names": [],
            "apps": 0, "cores": 0, "waiting_apps": 0, "workers": 0, "prewarm_credit": 0}


def user_rows(*, servers: Sequence[dict[str, Any]], apps: Sequence[dict[str, Any]],
              workers: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows keyed by user, in user order. `workers` counts the workers known to run one of
    the user's apps (a worker's `users`), so workers whose apps were not read count for no one."""
    rows: dict[str, dict[str, Any]] = {}
    for s in servers:
        row = rows.get(s["user"]) or rows.setdefault(s["user"], _empty(s["user"], hub_user=True))
        row["servers"] += 1
        row["server_names"].append(s["name"])
        row["prewarm_credit"] += s["prewarm_credit"]
    for a in apps:
        row = rows.get(a["user"]) or rows.setdefault(a["user"], _empty(a["user"], hub_user=False))
        row["apps"] += 1
        row["cores"] += a["cores"]
        row["waiting_apps"] += a["cores"] == 0
    for w in workers:
        for user in w["users"]:
            if user in rows:
                rows[user]["workers"] += 1
    for row in rows.values():
        row["server_names"].sort()
    return [rows[user] for user in sorted(rows)]
