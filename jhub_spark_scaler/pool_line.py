"""The scaler's one-line summary of the pool, logged when it changes (pure).

Counts by state, the target (and, when the wanted size is past max_workers, it and the
apps waiting), then one indented line per worker of ours with a reason for its state
(why it is held, say).
"""

from __future__ import annotations

from collections import Counter

from .model import Snapshot
from .policy import Plan, apps_waiting, saturation


def pool_line(snapshot: Snapshot, decided: Plan) -> str:
    counts = Counter(w.state.value for w in snapshot.workers)
    parts = [f"{n} {state}" for state, n in sorted(counts.items())] or ["no workers"]
    line = f"pool: {', '.join(parts)}; target {decided.demand.target}"
    if full := saturation(decided):
        line += f", wanted {full.wanted} > max_workers {full.max_workers}, {apps_waiting(full.waiting)}"
    details = [f"{w.handle} {w.state.value}: {w.why}" for w in snapshot.workers if w.why and w.ours]
    return line + "".join(f"\n    {d}" for d in details)
