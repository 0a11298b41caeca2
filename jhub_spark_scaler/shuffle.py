"""Which idle workers still serve shuffle files a running app needs: pure functions.

With an external shuffle service on the workers (`spark.shuffle.service.enabled`, the
usual companion of dynamic allocation), an executor's shuffle files outlive the executor:
the service serves them to the app's later stages until the app ends, when the worker
deletes the app's directories. Dynamic allocation removes idle executors, so a worker the
master calls idle (no cores used) may still hold map outputs of a running app. Retiring it
costs that app those outputs: once the worker is gone the driver drops every map output on
its host and runs the stages that wrote them again.

A worker's own `/json/` lists its running `executors` and the last
`spark.worker.ui.retainedExecutors` (1,000 by default) `finishedexecutors`, each with its
app's id. A worker holds shuffle files of app X when an executor of X ran there (running or
finished) and X still runs at the master. An app whose finished executors on a worker fell
out of that list (over 1,000 executors ended there since) is missed.

The reconciler reads our idle workers' `/json/` (`candidates`, `pick`, `next_reads`, at most
a budget a cycle, each read kept while the worker stays idle) and `keeps` says which of them
are not retirement candidates, and why. A worker not read yet is kept until it is (the never
read go first); one whose reads fail is kept while they have failed for less than `grace`
seconds (the policy passes scale_down_delay), then it may be retired like any idle worker:
retiring only decommissions it, and a retiring worker that cannot be read stays draining
(its service still up) unless drain_timeout stops it.
"""

from __future__ import annotations

import heapq
from collections.abc import Mapping
from dataclasses import dataclass

from .model import ShuffleRead, Snapshot, WorkerState, WorkerStatus


NOT_READ = "not read yet"


@dataclass(frozen=True, slots=True)
class KeepForShuffle:
    """An idle worker of ours kept: it serves shuffle files of running apps, or cannot be read."""

    handle: str
    apps: tuple[str, ...]  # the running apps whose shuffle files it holds, () when unread
    unread: str = ""  # why its own /json/ is not known ("" when read)
    unread_for: float = 0.0  # seconds its reads have failed
    grace: float = 0.0  # seconds an unreadable worker is kept


def kept_words(keep: KeepForShuffle) -> str:
    """Why the worker is kept, without its name: for the page's worker row."""
    if not keep.unread:
        return "keeps shuffle files of " + ", ".join(f"{app} (running)" for app in keep.apps)
    if not keep.grace or keep.unread == NOT_READ:
        return f"may keep shuffle files of running apps: its own /json/ is {keep.unread}"
    return (f"may keep shuffle files of running apps, its own /json/ is unknown ({keep.unread}); "
            f"kept {keep.unread_for:.0f} s of {keep.grace:.0f} s")


def candidates(snapshot: Snapshot) -> dict[str, str]:
    """Our idle workers, by handle, with the address of their own web UI ("" where unknown)."""
    found = {}
    for w in snapshot.workers:
        if w.ours and w.state is WorkerState.IDLE:
            found[w.handle] = w.backend.webui_url or (w.master.webui_address if w.master else "")
    return found


def pick(targets: Mapping[str, str], reads: Mapping[str, ShuffleRead], budget: int) -> list[str]:
    """The idle workers to read this cycle, at most `budget`: the never read first, then those
    whose last read failed, then the oldest reads."""

    def rank(handle: str) -> tuple[int, float]:
        read = reads.get(handle)
        if read is None:
            return 0, 0.0
        return (1 if read.apps is None else 2), read.read_at

    return heapq.nsmallest(budget, targets, key=rank)


def next_reads(targets: Mapping[str, str], reads: Mapping[str, ShuffleRead],
               results: Mapping[str, WorkerStatus | str], now: float) -> dict[str, ShuffleRead]:
    """The reads to keep: one per worker still idle (a worker that was busy or retiring since
    is read afresh), this cycle's `results` (its /json/ or the error) as read at `now`."""
    kept = {}
    for handle in targets:
        result, old = results.get(handle), reads.get(handle)
        if isinstance(result, WorkerStatus):
            apps = frozenset(e.app_id for e in (*result.executors, *result.finished))
            kept[handle] = ShuffleRead(now, apps)
        elif result is not None:
            since = old.unread_since if old is not None and old.unread_since is not None else now
            kept[handle] = ShuffleRead(now, None, result, since)
        elif old is not None:
            kept[handle] = old
    return kept


def keeps(snapshot: Snapshot, *, grace: float) -> dict[str, KeepForShuffle]:
    """Our idle workers that are not retirement candidates, by handle (none without a shuffle
    service): those holding shuffle files of an app running at the master, those not read yet,
    and those whose reads have failed for less than `grace` seconds."""
    if not snapshot.shuffle_service:
        return {}
    now, running = snapshot.taken_at, {a.id for a in snapshot.apps}
    found = {}
    for w in snapshot.workers:
        if not (w.ours and w.state is WorkerState.IDLE):
            continue
        read = snapshot.shuffle_reads.get(w.handle)
        if read is None:
            found[w.handle] = KeepForShuffle(w.handle, (), NOT_READ, 0.0, grace)
        elif read.apps is None:
            since = read.unread_since if read.unread_since is not None else read.read_at
            if now - since < grace:
                found[w.handle] = KeepForShuffle(w.handle, (), read.error, now - since, grace)
        elif held := sorted(read.apps & running):
            found[w.handle] = KeepForShuffle(w.handle, tuple(held))
    return found
