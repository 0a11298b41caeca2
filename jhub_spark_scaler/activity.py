"""Which notebook servers run on the hub, and how many workers they pre-warm.

Push for latency, poll for truth: hooks in the hub push `start`/`stop` events
(`HubActivity.on_event`), and `HubActivity.poll` rebuilds the whole state from
the hub's users API, so a restarted service recovers everything and a crash
that sent no event is noticed at the next poll.

The pure part (`Server`, `Gate`, `prewarm_credit`, `apply_event`, `merge_poll`,
`parse_users_page`) does no I/O and reads no clock; `HubActivity` does the I/O.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from types import MappingProxyType
from typing import Any
from urllib.parse import urlencode

from tornado.httpclient import AsyncHTTPClient, HTTPRequest

from . import clock
from .constants import EVENT_ACTIONS, EVENT_STOP, SERVICE_SCOPES
from .httpjson import fetch_json
from .model import AppStart

#: A server's key: (user name, server name); the default server's name is "".
Key = tuple[str, str]

#: Users asked for per page; the hub caps it at its `api_page_max_limit` (default 200).
PAGE_LIMIT = 200
#: Seconds before a read of the hub's users API gives up (the next poll tries again).
API_TIMEOUT = 10.0


class HubError(Exception):
    """The hub's users API could not be read or answered nonsense (one line)."""


@dataclass(frozen=True, slots=True)
class Server:
    """One active notebook server, as the hub reports it."""

    user: str
    name: str  # "" for the user's default server
    started: float | None  # epoch seconds; the hub sets it when the spawn begins
    pending: str | None  # "spawn", "stop", ... or None
    ready: bool
    profile: str = ""  # the KubeSpawner profile slug from its user_options, "" without one

    @property
    def key(self) -> Key:
        return (self.user, self.name)


@dataclass(frozen=True, slots=True)
class Gate:
    """Which servers may pre-warm at all: those whose profile slug or server name is in
    `profiles` (empty: every server), of users not in `cold` (users whose last `history`
    servers ran no Spark app)."""

    profiles: frozenset[str] = frozenset()
    cold: frozenset[str] = frozenset()
    history: int = 0

    def why_not(self, server: Server) -> str | None:
        """Why `server` gets no pre-warm, or None when it may."""
        if self.profiles and server.profile not in self.profiles and server.name not in self.profiles:
            return "profile not in prewarm_profiles"
        if server.user in self.cold:
            return f"no Spark in the user's last {self.history} servers"
        return None


@dataclass(frozen=True, slots=True)
class Event:
    """A pushed `start` or `stop` of one server, at `at` (epoch seconds)."""

    action: str
    user: str
    name: str
    at: float


def warm_servers(servers: Iterable[Server], *, now: float, window: float,
                 app_starts: Iterable[AppStart] = (), gate: Gate = Gate()) -> list[Server]:
    """The servers that still pre-warm: let through by `gate`, started at most `window`
    seconds before `now`, and not yet followed by a Spark app (pre-warm is for a user's
    first driver; after it, the pool's idle workers serve). In start order, each app uses up
    one server's credit:

    - an app whose user (the name the master reports) has a server here uses up that user's
      oldest warm server that started before the app, or nothing: another user's credit
      stays theirs;
    - any other app (a driver named after its OS user, or started outside the hub) uses up
      the oldest warm server of anyone that started before it.

    A `started` after `now` (the hub's clock ahead of ours) counts as just started.
    """
    servers = tuple(servers)
    hub_users = {s.user for s in servers}
    warm = sorted((s for s in servers if s.started is not None and now - s.started <= window
                   and gate.why_not(s) is None), key=lambda s: s.started)
    used = [False] * len(warm)
    oldest = _Oldest(range(len(warm)), warm, used)
    per_user: dict[str, _Oldest] = {}
    for i, s in enumerate(warm):
        per_user.setdefault(s.user, _Oldest([], warm, used)).indexes.append(i)
    for start in sorted(app_starts):
        pick = per_user.get(start.user) if start.user in hub_users else oldest
        i = pick.take(start.at) if pick else None
        if i is not None:
            used[i] = True
    return [s for s, gone in zip(warm, used) if not gone]


class _Oldest:
    """The oldest of some warm servers (`indexes` into `warm`, in start order) not used up yet."""

    def __init__(self, indexes, warm: list[Server], used: list[bool]):
        self.indexes = list(indexes)
        self.warm, self.used = warm, used
        self.next = 0  # all before it are used up: apps come in start order, so it only advances

    def take(self, at: float) -> int | None:
        """The oldest one not used up, if it started by `at`."""
        while self.next < len(self.indexes) and self.used[self.indexes[self.next]]:
            self.next += 1
        if self.next < len(self.indexes) and self.warm[self.indexes[self.next]].started <= at:
            return self.indexes[self.next]
        return None


def prewarm_credit(servers: Iterable[Server], *, now: float, window: float, per_server: int,
                   app_starts: Iterable[AppStart] = (), gate: Gate = Gate()) -> int:
    """`per_server` workers for each of the `warm_servers`."""
    warm = warm_servers(servers, now=now, window=window, app_starts=app_starts, gate=gate)
    return per_server * len(warm)


def apply_event(
    servers: Mapping[Key, Server], action: str, user: str, name: str, now: float
) -> Mapping[Key, Server]:
    """The state after one pushed event; `servers` is not changed.

    `start` adds an unknown server as started at `now` (a known one keeps its
    `started`); `stop` removes the server.
    """
    if action not in EVENT_ACTIONS:
        expected = " or ".join(map(repr, EVENT_ACTIONS))
        raise ValueError(f"unknown hub event action {action!r}: expected {expected}")
    key = (user, name)
    updated = dict(servers)
    if action == EVENT_STOP:
        updated.pop(key, None)
    elif key not in updated:
        updated[key] = Server(user=user, name=name, started=now, pending="spawn", ready=False)
    return MappingProxyType(updated)


def merge_poll(
    polled: Mapping[Key, Server], pushed_since_poll_began: Sequence[Event]
) -> Mapping[Key, Server]:
    """The poll is the truth, except events pushed while it ran, re-applied on top.

    The hub may have answered before those events happened: a start pushed
    during a slow poll must not be lost, a stop pushed during it must win.
    """
    servers: Mapping[Key, Server] = MappingProxyType(dict(polled))
    for event in pushed_since_poll_began:
        servers = apply_event(servers, event.action, event.user, event.name, event.at)
    return servers


def parse_time(value: Any, where: str) -> float | None:
    """An ISO 8601 timestamp as the hub writes it ("2025-01-01T10:00:00.123456Z"), or None."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise HubError(f"{where}: 'started' is {type(value).__name__}, expected an ISO 8601 string")
    try:
        moment = datetime.fromisoformat(value[:-1] + "+00:00" if value.endswith("Z") else value)
    except ValueError:
        raise HubError(f"{where}: 'started' is not an ISO 8601 time: {value!r}") from None
    if moment.tzinfo is None:  # the hub writes UTC
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.timestamp()


def _parse_server(user: str, name: Any, doc: Any) -> Server:
    where = f"hub users API: server {user}/{name}"
    if not isinstance(name, str) or not isinstance(doc, dict):
        raise HubError(f"{where}: expected a name and a JSON object, got {type(doc).__name__}")
    pending = doc.get("pending")
    if pending is not None and not isinstance(pending, str):
        raise HubError(f"{where}: 'pending' is {type(pending).__name__}, expected string or null")
    ready = doc.get("ready", False)
    if not isinstance(ready, bool):
        raise HubError(f"{where}: 'ready' is {type(ready).__name__}, expected boolean")
    return Server(user, name, parse_time(doc.get("started"), where), pending, ready, _profile(doc))


def _profile(doc: dict) -> str:
    """KubeSpawner's profile slug, which it keeps as `user_options["profile"]`; "" for none
    (another spawner, or a value that is not a string)."""
    options = doc.get("user_options")
    profile = options.get("profile") if isinstance(options, dict) else None
    return profile if isinstance(profile, str) else ""


def _parse_user(doc: Any) -> list[Server]:
    if not isinstance(doc, dict) or not isinstance(doc.get("name"), str):
        raise HubError("hub users API: an entry of 'items' is not a user object with a 'name'")
    user = doc["name"]
    if "servers" not in doc:
        raise HubError(
            f"hub users API: user {user!r} came without 'servers': "
            "the service's role needs the read:servers scope"
        )
    servers = doc["servers"]
    if not isinstance(servers, dict):
        kind = type(servers).__name__
        raise HubError(f"hub users API: user {user!r}: 'servers' is {kind}, expected object")
    return [_parse_server(user, name, server) for name, server in servers.items()]


def parse_users_page(doc: Any) -> tuple[list[Server], int | None]:
    """One page of `GET /users` in the paginated form: its servers and the next offset.

    The page is `{"items": [user, ...], "_pagination": {"offset", "limit",
    "total", "next": null | {"offset", "limit", "url"}}}`.
    """
    if not isinstance(doc, dict) or not isinstance(doc.get("items"), list):
        raise HubError("hub users API: expected an object with an 'items' list (JupyterHub >= 2.0)")
    pagination = doc.get("_pagination")
    following = pagination.get("next") if isinstance(pagination, dict) else None
    if following is None:
        next_offset = None
    elif isinstance(following, dict) and type(following.get("offset")) is int:
        next_offset = following["offset"]
    else:
        raise HubError("hub users API: '_pagination.next' has no integer 'offset'")
    return [s for user in doc["items"] for s in _parse_user(user)], next_offset


class HubActivity:
    """The hub's active servers: polled (the truth) and pushed (at once).

    The service's token needs exactly the scopes `constants.SERVICE_SCOPES`,
    `list:users` and `read:servers` (it reads `GET /users?state=active` and nothing else;
    `read:servers` shows each server's `user_options`, so its profile, too).

    `poll()` never raises: while the hub cannot be read, the last known state
    is kept (`healthy` is False, `last_error` says why), and once the last good
    poll is more than `stale_after` seconds old, the state is forgotten
    (`stale` is True), so that credit for servers which may have stopped
    meanwhile does not keep workers forever. Events pushed after that still
    apply; the next good poll replaces everything.
    """

    def __init__(
        self, *, api_url: str, api_token: str, log: logging.Logger, stale_after: float,
        timeout: float = API_TIMEOUT,
    ):
        self.api_url = api_url.rstrip("/")
        self.timeout = timeout
        self.stale_after = stale_after
        self.log = log
        self._headers = {
            "Authorization": f"token {api_token}",
            "Accept": "application/jupyterhub-pagination+json",
        }
        self._servers: Mapping[Key, Server] = MappingProxyType({})
        self._last_good = clock.now()  # never polled: staleness counts from creation
        self._ok: bool | None = None  # None until the first poll
        self._pushed_during_poll: list[Event] | None = None  # a list while a poll runs
        self.stale = False
        self.last_error = ""

    @property
    def healthy(self) -> bool:
        """True when the last poll succeeded."""
        return self._ok is True

    @property
    def servers(self) -> tuple[Server, ...]:
        """The known active servers, by user and name."""
        return tuple(self._servers[key] for key in sorted(self._servers))

    def credit(self, *, window: float, per_server: int, app_starts: Iterable[AppStart] = (),
               gate: Gate = Gate()) -> int:
        """Extra idle workers for servers started within `window` seconds (see `warm_servers`)."""
        return prewarm_credit(self._servers.values(), now=clock.now(), window=window, per_server=per_server,
                              app_starts=app_starts, gate=gate)

    def on_event(self, action: str, user: str, server: str) -> None:
        """Apply a pushed event at once. Raises ValueError for an unknown action."""
        event = Event(action, user, server, clock.now())
        self._servers = apply_event(self._servers, action, user, server, event.at)
        if self._pushed_during_poll is not None:
            self._pushed_during_poll.append(event)

    async def poll(self) -> None:
        """Rebuild the state from the hub (events pushed meanwhile re-applied). Never raises."""
        if self._pushed_during_poll is not None:
            self.log.debug("hub poll already running: skipped")
            return
        began = clock.now()
        self._pushed_during_poll = []
        try:
            polled = await self._fetch_active()
        except HubError as e:
            self._failed(str(e))
        except Exception as e:  # a bug, not the hub: keep the traceback, keep going
            self.log.exception("hub poll failed")
            self._failed(f"internal error: {e!r}")
        else:
            self._servers = merge_poll(polled, self._pushed_during_poll)
            self._succeeded(began)
        finally:
            self._pushed_during_poll = None

    def _succeeded(self, began: float) -> None:
        if self._ok is False:
            self.log.info("hub users API readable again: %d active servers", len(self._servers))
        self._ok, self.stale, self.last_error, self._last_good = True, False, "", began

    def _failed(self, error: str) -> None:
        if self._ok is not False:
            self.log.warning("%s (keeping the %d known servers)", error, len(self._servers))
        self._ok, self.last_error = False, error
        age = clock.now() - self._last_good
        if not self.stale and age > self.stale_after:
            self.log.warning(
                "no good hub poll for %.0f s (hub_stale_after %.0f s): forgetting %d servers",
                age, self.stale_after, len(self._servers),
            )
            self._servers, self.stale = MappingProxyType({}), True

    async def _fetch_active(self) -> dict[Key, Server]:
        """Every active server, following the pages of `GET /users?state=active`."""
        servers: dict[Key, Server] = {}
        offset: int | None = 0
        while offset is not None:
            page, next_offset = parse_users_page(await self._get_json(self._users_url(offset)))
            servers.update((s.key, s) for s in page)
            if next_offset is not None and next_offset <= offset:
                raise HubError(f"hub users API: next page offset {next_offset} is not past {offset}")
            offset = next_offset
        return servers

    def _users_url(self, offset: int) -> str:
        # Offsets, not `_pagination.next.url`: the hub builds that URL from its own view
        # of the request (Host, scheme), which behind a proxy may not reach it from here.
        # A user whose servers all stop between two pages shifts the later pages by one,
        # so another user can be missed for one poll; a large page makes that rare.
        query = urlencode({"state": "active", "offset": offset, "limit": PAGE_LIMIT})
        return f"{self.api_url}/users?{query}"

    async def _get_json(self, url: str) -> Any:
        request = HTTPRequest(
            url, headers=self._headers, connect_timeout=self.timeout, request_timeout=self.timeout,
            follow_redirects=False,  # it carries the token: never sent on to where an answer points
        )
        scopes = " and ".join(SERVICE_SCOPES)
        advice = f"check hub_api_token and that the service's role has the scopes {scopes}"
        return await fetch_json(
            AsyncHTTPClient(), request, what="the hub API", error=HubError, advice={401: advice, 403: advice}
        )
