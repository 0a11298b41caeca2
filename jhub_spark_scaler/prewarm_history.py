"""Each user's recent servers: whether a Spark app of theirs started while each ran.

A user whose last `keep` servers ran no Spark app is cold (`activity.Gate.cold`): their
servers pre-warm nothing until an app of theirs starts. The hub keeps no record of
stopped servers, so the record is kept here: a server counts once it is gone from the
hub, and it "ran Spark" when the master lists an app of its user (the app's `user`, the
driver's hub user) that started while it ran.

This module is the record alone, in memory, with no I/O: `record()` gives it as a JSON
object for a store, `parse_record()` reads one back (strictly: anything malformed is
refused whole), `merge()` adds what was read. `prewarm_keeper` loads and saves it in the
backend's store (`backends.history_store`). A scaler that knows no history pre-warms for
everyone until each user's next `keep` servers have ended.
"""

from __future__ import annotations

import json
import math
from bisect import bisect_left
from collections.abc import Iterable

from .activity import Key, Server
from .model import AppStart

#: the most users kept in memory; past it, those whose last server ended longest ago go first
MAX_USERS = 50_000

Runs = list[list]  # [[ended_at, ran_spark], ...], oldest first


class PrewarmHistory:
    """The outcome of each user's last `keep` ended servers, newest last: [ended_at, ran_spark]."""

    def __init__(self, *, keep: int):
        self.keep = keep
        self.users: dict[str, Runs] = {}
        #: bumped at every change of `users`: a store writes only when it moved
        self.version = 0
        self._running: dict[Key, Server] = {}  # the servers seen at the last observation
        self._ran: set[Key] = set()  # running servers of whose user an app started meanwhile

    def observe(self, servers: Iterable[Server], app_starts: Iterable[AppStart], *, now: float) -> None:
        """Record the servers gone since the last call. Call it only with a good hub poll's
        servers: a server missing because the hub could not be read has not ended. With no
        app at all (the master unreachable, or restarted) nothing is learnt: the servers that
        ended wait for an answer that lists apps."""
        if not self.keep:
            return
        starts = tuple(app_starts)
        if not starts:
            self._running.update((s.key, s) for s in servers)
            return
        current = {s.key: s for s in servers}
        # each user's app start times, sorted: one lookup per server instead of a scan of
        # every app (this runs every cycle, with hundreds of servers and apps on a big hub)
        by_user: dict[str, list[float]] = {}
        for a in starts:
            by_user.setdefault(a.user, []).append(a.at)
        for times in by_user.values():
            times.sort()
        for key, s in {**self._running, **current}.items():
            # marked while it runs: the master keeps only its last completed apps
            times = by_user.get(s.user)
            if key in self._ran or s.started is None or not times:
                continue
            first = bisect_left(times, s.started)
            if first < len(times) and times[first] <= now:
                self._ran.add(key)
        ended = [s for key, s in self._running.items() if key not in current and s.started is not None]
        self._running = current
        for s in ended:
            self.users[s.user] = [*self.users.get(s.user, []), [now, s.key in self._ran]][-self.keep:]
        self._ran &= current.keys()
        if ended:
            self._changed()

    def cold(self, app_starts: Iterable[AppStart]) -> frozenset[str]:
        """The users whose last `keep` servers ran no Spark app and who started none since."""
        if not self.keep:
            return frozenset()
        last_app: dict[str, float] = {}
        for a in app_starts:
            last_app[a.user] = max(a.at, last_app.get(a.user, a.at))
        return frozenset(
            user for user, runs in self.users.items()
            if len(runs) >= self.keep and not any(ran for _, ran in runs)
            and last_app.get(user, float("-inf")) < runs[-1][0]
        )

    def merge(self, users: dict[str, Runs]) -> None:
        """Add runs read from a store (`parse_record`) to those seen since the start: each
        user's runs in the order they ended, the last `keep` kept."""
        if not self.keep or not users:
            return
        for user, runs in users.items():
            both = sorted({(at, ran) for at, ran in [*runs, *self.users.get(user, [])]})
            self.users[user] = [[at, ran] for at, ran in both][-self.keep:]
        self._changed()

    def record(self, *, max_bytes: int) -> dict:
        """The history as a JSON object of at most `max_bytes` bytes serialized: the users
        whose last server ended most recently, as many as fit (the others are dropped)."""
        budget = max_bytes - len('{"users":{}}')
        kept: dict[str, Runs] = {}
        for user, runs in newest_first(self.users):
            size = len(json.dumps(user)) + len(json.dumps(runs, separators=(",", ":"))) + 2  # ':' and ','
            if size > budget:
                break
            budget -= size
            kept[user] = runs
        return {"users": kept}

    def _changed(self) -> None:
        if len(self.users) > MAX_USERS:
            self.users = dict(newest_first(self.users)[:MAX_USERS])
        self.version += 1


def newest_first(users: dict[str, Runs]) -> list[tuple[str, Runs]]:
    """The users by the end of their last server, most recent first."""
    return sorted(users.items(), key=lambda item: item[1][-1][0] if item[1] else -math.inf, reverse=True)


def parse_record(doc: object, *, keep: int) -> dict[str, Runs]:
    """Each user's last `keep` runs from a stored record; ValueError naming what is wrong
    when anything in it is not what `PrewarmHistory.record` writes."""
    users = doc.get("users") if isinstance(doc, dict) else None
    if not isinstance(users, dict):
        raise ValueError('not an object with a "users" object')
    parsed: dict[str, Runs] = {}
    for user, runs in users.items():
        if not isinstance(runs, list) or not all(_run(r) for r in runs):
            raise ValueError(f"the runs of user {user!r} are not [[seconds, true|false], ...]")
        if runs:
            parsed[user] = [[float(at), ran] for at, ran in runs][-keep:] if keep else []
    return {user: runs for user, runs in parsed.items() if runs}


def _run(run: object) -> bool:
    return (isinstance(run, list) and len(run) == 2 and isinstance(run[1], bool)
            and isinstance(run[0], (int, float)) and not isinstance(run[0], bool) and math.isfinite(run[0]))
