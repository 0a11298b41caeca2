"""What needs an admin, in the order the page's summary strip shows it (pure).

Each problem is `{kind, count, text, table, filter}`: `table` and `filter` name the rows
behind it (the query parameters that show them), or are None where no table holds them.
Only problems with a count are listed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

#: The worker states that need an admin, with what they mean.
WORKER_PROBLEMS = (
    ("held", "decommissioned, but their executors do not leave (an app without decommission)"),
    ("lost", "process or pod gone, or the master declared them dead"),
    ("unschedulable", "never registered within start_timeout"),
)


def _problem(kind: str, count: int, text: str, state: str | None = None) -> dict[str, Any]:
    return {"kind": kind, "count": count, "text": text, "table": "workers" if state else None,
            "filter": {"state": state} if state else None}


def _workers(n: int) -> str:
    return f"{n} worker" if n == 1 else f"{n} workers"


def saturated(target: Mapping[str, Any], apps: Sequence[Mapping[str, Any]]) -> dict[str, Any] | None:
    """More workers wanted than max_workers allows: apps wait for cores the pool cannot grow to give."""
    wanted, most = target["wanted"], target["max"]
    if wanted is None or wanted <= most:
        return None
    waits = [a["waiting_for"] for a in apps if a["waiting_for"] is not None]
    if not waits:
        waiting = "no app waiting"
    elif len(waits) == 1:
        waiting = f"1 app waiting, for {waits[0]} s"
    else:
        waiting = f"{len(waits)} apps waiting, the longest {max(waits)} s"
    return _problem("saturated", wanted - most, f"wanted {wanted} workers, max_workers {most}: {waiting}")


def problems(*, blind: str | None, paused: bool, paused_by: str | None, counts: Mapping[str, int],
             target: Mapping[str, Any], apps: Sequence[Mapping[str, Any]],
             hub_error: str | None) -> list[dict[str, Any]]:
    """`blind`: why the pool cannot be seen (None: it can); `hub_error`: None while the hub is read."""
    found = []
    if blind is not None:
        found.append(_problem("blind", 1, f"blind, changing nothing: {blind}"))
    if paused:
        by = f" by {paused_by}" if paused_by else ""
        found.append(_problem("paused", 1, f"paused{by}: observing and planning, "
                                           "starting, retiring and stopping nothing"))
    full = saturated(target, apps)
    if full:
        found.append(full)
    for state, meaning in WORKER_PROBLEMS:
        if counts.get(state):
            n = counts[state]
            found.append(_problem(state, n, f"{_workers(n)} {state}: {meaning}", state))
    if hub_error is not None:
        found.append(_problem("hub", 1, f"hub not readable: {hub_error or 'no answer yet'}"))
    return found
