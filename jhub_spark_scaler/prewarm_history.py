"""Each user's recent servers: whether a Spark app of theirs started while each ran.

A user whose last `keep` servers ran no Spark app is cold (`activity.Gate.cold`): their
servers pre-warm nothing until an app of theirs starts. The hub keeps no record of
stopped servers, so the record is kept here: a server counts once it is gone from the
hub, and it "ran Spark" when the master lists an app of its user (the app's `user`, the
driver's hub user) that started while it ran. With `path` (the local backend's state
directory) the record is a small JSON file there and survives a restart; without one it
lives in memory, and a restarted scaler knows no history, so it pre-warms for everyone
until each user's next `keep` servers have ended.
"""

from __future__ import annotations

import logging
import os
from bisect import bisect_left
from collections.abc import Iterable

from .activity import Key, Server
from .backends.state_files import read_json, write_json
from .model import AppStart

#: the record's file name in the local backend's state directory
FILE_NAME = "prewarm-history.json"


class PrewarmHistory:
    """The outcome of each user's last `keep` ended servers, newest last: [ended_at, ran_spark]."""

    def __init__(self, *, keep: int, log: logging.Logger, state_dir: str | None = None):
        self.keep = keep
        self.log = log
        self.state_dir = state_dir
        self.path = os.path.join(state_dir, FILE_NAME) if state_dir else None
        self.users: dict[str, list[list]] = self._load() if keep else {}
        self._running: dict[Key, Server] = {}  # the servers seen at the last observation
        self._ran: set[Key] = set()  # running servers of whose user an app started meanwhile

    def _load(self) -> dict[str, list[list]]:
        doc = read_json(self.path, root=self.state_dir, log=self.log) if self.path else None
        users = doc.get("users") if doc else None
        if not isinstance(users, dict):
            return {}
        return {user: [[float(at), bool(ran)] for at, ran in runs][-self.keep:]
                for user, runs in users.items()
                if isinstance(user, str) and isinstance(runs, list)
                and all(isinstance(r, list) and len(r) == 2 and isinstance(r[0], (int, float)) for r in runs)}

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
            self._save()

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

    def _save(self) -> None:
        if not self.path:
            return
        try:
            write_json(self.path, {"users": self.users}, root=self.state_dir)
        except OSError as e:  # the record is a hint: pre-warm goes on from memory
            self.log.warning("cannot write %s: %s (pre-warm history kept in memory)", self.path, e)
