"""A watch-backed cache of the scaler's pods: reading the pool costs no API request.

List, then watch from the list's resourceVersion; on "410 Gone" (the version
was compacted away) list again; on any other failure watch again from the same
resourceVersion (list again after three failures in a row) with exponential
backoff (0.1 s doubling to `backoff_max`), and report the failure in `error`
until a watch is open again, so the reconciler knows it is blind. The backend also
`put()`s the objects its own create/patch/delete calls return, so a pod it just
created is counted before its watch event arrives. Pods that match the selector
but fail `keep` (another scaler's, by their owner) are left out as if absent.

A list replaces the cache only once it is complete: meanwhile the pods read before stay
readable, and what `put()` records meanwhile is judged against the list when it is done
(a pod our DELETE answer shows terminating, deleted before the list read, stays out).
A terminating pod still cached OVERDUE seconds past its deletion deadline is checked:
`forget_overdue()` lists the pods and forgets those the apiserver no longer has, so a
DELETED event that never reached the watch cannot keep a pod "stopping" for good.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import OrderedDict
from collections.abc import Callable
from datetime import datetime
from typing import Generic, TypeVar

import aiohttp

from .. import clock
from . import BackendError
from .kube_api import KubeApi

T = TypeVar("T")
MAX_DELETED = 10_000  # deleted pods remembered between lists (a list forgets them all)
#: s past a terminating pod's deletion deadline (deletionTimestamp: the request's time plus
#: its grace period, by which the kubelet has killed it) before the cache asks the apiserver
#: whether the pod still exists; also the least time between two such checks
OVERDUE = 30.0
#: what the API and the network cause; anything else (a pod `convert` cannot read) is logged
#: with its traceback, so that a bug does not pass for an outage
_OUTAGES = (BackendError, aiohttp.ClientError, asyncio.TimeoutError, OSError, json.JSONDecodeError)


class Gone(Exception):
    """The watch's resourceVersion is too old: list again."""


def _deadline(pod: dict) -> float | None:
    """A terminating pod's deletionTimestamp in epoch seconds; None if it is not terminating."""
    stamp = pod["metadata"].get("deletionTimestamp")
    if not stamp:
        return None
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def _version(obj: dict) -> int:
    try:
        return int(obj["metadata"].get("resourceVersion") or 0)
    except ValueError:  # opaque in principle; numeric on every apiserver backed by etcd
        return 0


class PodCache(Generic[T]):
    """Pods matching a label selector and `keep`, each kept as `convert(pod)`, keyed by name;
    `uids` holds each kept pod's uid."""

    def __init__(
        self, api: KubeApi, selector: str, convert: Callable[[dict], T], log: logging.Logger,
        watch_timeout: int = 300, backoff_max: float = 30.0, page_size: int = 500,
        keep: Callable[[dict], bool] | None = None,
    ):
        self.api, self.selector, self.convert, self.log = api, selector, convert, log
        self.keep = keep
        self.watch_timeout, self.backoff_max, self.page_size = watch_timeout, backoff_max, page_size
        self.items: dict[str, T] = {}
        self.uids: dict[str, str] = {}
        self._versions: dict[str, int] = {}
        # what must not come back: pods deleted since the last list (name -> version of the
        # DELETED event), and anything the last list (at version _floor) did not have
        self._deleted: OrderedDict[str, int] = OrderedDict()
        self._floor = 0
        self._deadlines: dict[str, float] = {}  # terminating pods' deletion deadlines
        self._listing: list[dict] | None = None  # what put() recorded while a list runs
        self._overdue_checked = 0.0
        self.resource_version = ""
        #: non-empty while the cache may be stale: the last failure to list or watch
        self.error = "not listed yet"
        self.listed = asyncio.Event()
        self.stats = {"lists": 0, "watches": 0, "events": 0, "gone": 0, "failures": 0}
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"pod-cache {self.selector}")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass

    async def wait_listed(self, timeout: float) -> None:
        """Until the first list succeeded; BackendError with the reason if it did not in time."""
        try:
            await asyncio.wait_for(self.listed.wait(), timeout)
        except asyncio.TimeoutError:
            raise BackendError(f"cannot list pods: {self.error}") from None

    def values(self) -> list[T]:
        """The cached pods; BackendError while the cache cannot be trusted."""
        if self.error:
            raise BackendError(self.error)
        return list(self.items.values())

    def put(self, pod: dict) -> None:
        """Record an object newer than what the cache has. Ignored when older, and when the
        pod was deleted meanwhile: the answer to our own DELETE can arrive after the watch's
        DELETED event, and must not bring the pod back for good."""
        if self._listing is not None:
            self._listing.append(pod)
        name, version = pod["metadata"]["name"], _version(pod)
        if version:
            if version < self._versions.get(name, 0):
                return
            if name not in self.items and version <= max(self._floor, self._deleted.get(name, 0)):
                return
        self._store(name, version, pod)

    def _store(self, name: str, version: int, pod: dict) -> None:
        if self.keep is not None and not self.keep(pod):
            self.remove(name)  # e.g. its owner reference was changed to another's
            return
        self._versions[name] = version
        self.items[name] = self.convert(pod)
        self.uids[name] = pod["metadata"].get("uid", "")
        deadline = _deadline(pod)
        if deadline is None:
            self._deadlines.pop(name, None)
        else:
            self._deadlines[name] = deadline

    def remove(self, name: str, version: int = 0) -> None:
        """Forget a pod; `version`, that of its DELETED event, keeps older copies out."""
        self.items.pop(name, None)
        self.uids.pop(name, None)
        self._versions.pop(name, None)
        self._deadlines.pop(name, None)
        if version:
            self._deleted[name] = max(version, self._deleted.get(name, 0))
            self._deleted.move_to_end(name)
            while len(self._deleted) > MAX_DELETED:
                self._deleted.popitem(last=False)

    # -- the loop ----------------------------------------------------------------

    async def _run(self) -> None:
        delay, failures, need_list = 0.1, 0, True
        while True:
            try:
                if need_list:
                    await self._list()
                    need_list = False
                await self._watch()
                delay, failures = 0.1, 0
            except asyncio.CancelledError:
                raise
            except Gone:
                self.stats["gone"] += 1
                self.log.info("pod watch expired (410 Gone): listing again")
                need_list = True
            except Exception as e:  # report it, back off, watch again from where we were
                self.stats["failures"] += 1
                failures += 1
                need_list = need_list or failures >= 3  # a watch that keeps failing: start over
                error = str(e) or type(e).__name__
                if error != self.error:
                    self.log.error("pod cache: %s; retrying (the scaler retires nothing meanwhile)", error,
                                   exc_info=not isinstance(e, _OUTAGES))
                self.error = error
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.backoff_max)

    async def _list(self) -> None:
        """All pods, a page at a time: memory stays bounded by a page, not the pool. The
        cache keeps its pods until the list is complete, then takes the list's."""
        self.stats["lists"] += 1
        # filled page by page aside (only its dicts are used): the cache's pods stay readable
        listed = PodCache(self.api, self.selector, self.convert, self.log, keep=self.keep)
        self._listing = []
        try:
            continue_from = ""
            while True:
                answer = await self.api.list_pods(self.selector, self.page_size, continue_from)
                for pod in answer.get("items") or ():
                    listed._store(pod["metadata"]["name"], _version(pod), pod)
                continue_from = answer["metadata"].get("continue") or ""
                if not continue_from:
                    break
        finally:
            recorded, self._listing = self._listing, None
        self.items, self.uids, self._versions = listed.items, listed.uids, listed._versions
        self._deadlines = listed._deadlines
        # the last page's version is the list's: the one the first page was read at
        self.resource_version = answer["metadata"]["resourceVersion"]
        self._floor = _version(answer)
        self._deleted.clear()
        for pod in recorded:  # what our own calls answered meanwhile, if newer than the list
            self.put(pod)
        if self.error:
            self.log.info("pod cache: %d pods listed", len(self.items))
        self.error = ""
        self.listed.set()

    async def forget_overdue(self) -> None:
        """Forget the terminating pods OVERDUE past their deletion deadline that a list no
        longer has (at most one list per OVERDUE seconds; none while no pod is overdue).
        A pod stuck terminating (its node lost) stays: it is still there."""
        now = clock.now()
        overdue = [name for name, deadline in self._deadlines.items() if now - deadline >= OVERDUE]
        if not overdue or now - self._overdue_checked < OVERDUE or self._listing is not None or self.error:
            return
        self._overdue_checked = now
        present, continue_from = set(), ""
        try:
            while True:
                answer = await self.api.list_pods(self.selector, self.page_size, continue_from)
                present.update(p["metadata"]["name"] for p in answer.get("items") or ())
                continue_from = answer["metadata"].get("continue") or ""
                if not continue_from:
                    break
        except _OUTAGES as e:  # the watch stays the cache's source: checked again OVERDUE later
            self.log.warning("pod cache: cannot check the pods overdue to be deleted: %s", e)
            return
        for name in overdue:
            if name not in present and name in self._deadlines:
                self.log.warning("pod cache: pod %s was deleted but its watch never said so: forgotten",
                                 name)
                self.remove(name, max(_version(answer), self._versions.get(name, 0)))

    async def _watch(self) -> None:
        """One watch request until the server ends it; raises on failure or 410."""
        self.stats["watches"] += 1
        response = await self.api.watch_pods(self.selector, self.resource_version, self.watch_timeout)
        if self.error:  # the watch replays every change since resource_version: current again
            self.log.info("pod cache: watching again")
            self.error = ""
        try:
            async for line in response.content:
                if line.strip():
                    self._apply(json.loads(line))
        finally:
            response.release()

    def _apply(self, event: dict) -> None:
        kind, obj = event.get("type"), event.get("object") or {}
        if kind == "ERROR":
            if obj.get("code") == 410:
                raise Gone()
            raise BackendError(f"pod watch failed: {obj.get('message', obj)}")
        self.stats["events"] += 1
        self.resource_version = obj["metadata"]["resourceVersion"]
        if kind == "DELETED":
            self.remove(obj["metadata"]["name"], _version(obj))
        elif kind in ("ADDED", "MODIFIED"):
            self.put(obj)
