"""What needs an admin, in the order the page's summary strip shows it (pure).

Each problem is `{kind, count, text, table, filter}`: `table` and `filter` name the rows
behind it (the query parameters that show them), or are None where no table holds them.
Only problems with a count are listed.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from ..reconciler import Action, Decision

#: How long a stop by drain_timeout stays on the page: seconds.
DRAIN_TIMEOUT_SHOWN_FOR = 3600.0
#: workers named in that problem's line; the decisions name them all
NAMED = 5

#: The worker states that need an admin, with what they mean.
WORKER_PROBLEMS = (
    ("held", "decommissioned, but their executors do not leave (an app without decommission)"),
    ("lost", "process or pod gone, or the master declared them dead"),
    ("unschedulable", "never registered within start_timeout (node_wait_timeout while a node was being "
                      "added for them), or no node will be added for them"),
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


def drain_timeouts(decisions: Iterable[Decision], now: float) -> dict[str, Any] | None:
    """Workers stopped by drain_timeout in the last DRAIN_TIMEOUT_SHOWN_FOR seconds, executors of
    running apps on them. Their decisions name the apps; the log keeps decision_log_size of them."""
    since = now - DRAIN_TIMEOUT_SHOWN_FOR
    handles = [h for d in decisions if d.action is Action.DRAIN_TIMEOUT and d.at >= since
               for h in d.handles]
    if not handles:
        return None
    named = ", ".join(handles[:NAMED]) + (f" and {len(handles) - NAMED} more" if len(handles) > NAMED else "")
    return _problem("drain-timeout", len(handles),
                    f"{_workers(len(handles))} stopped by drain_timeout in the last hour ({named}): "
                    "apps lost executors on them (see the drain-timeout decisions)")


def problems(*, blind: str | None, paused: bool, paused_by: str | None, counts: Mapping[str, int],
             target: Mapping[str, Any], apps: Sequence[Mapping[str, Any]],
             hub_error: str | None, decisions: Iterable[Decision], now: float,
             waiting_for_node: int = 0) -> list[dict[str, Any]]:
    """`blind`: why the pool cannot be seen (None: it can); `hub_error`: None while the hub is read;
    `decisions`: the decision log, read at `now` for the workers stopped by drain_timeout;
    `waiting_for_node`: starting workers whose pods wait for a node being added for them."""
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
    if waiting_for_node:
        found.append(_problem("waiting-for-node", waiting_for_node, (
            f"{_workers(waiting_for_node)} waiting for a node that cluster-autoscaler is adding: counted as "
            "starting, removed only after node_wait_timeout"), "starting"))
    stopped = drain_timeouts(decisions, now)
    if stopped:
        found.append(stopped)
    if hub_error is not None:
        found.append(_problem("hub", 1, f"hub not readable: {hub_error or 'no answer yet'}"))
    return found
