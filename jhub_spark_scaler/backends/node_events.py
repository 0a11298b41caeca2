"""What cluster-autoscaler said of the worker pods the scheduler cannot place.

cluster-autoscaler records an Event on each unschedulable pod it has considered (source
component `cluster-autoscaler`, involvedObject the pod): `TriggeredScaleUp` when it adds a
node the pod will fit on ("pod triggered scale-up: [{<group> 1->2 (max: 10)}]"),
`NotTriggerScaleUp` when no node group can take it ("pod didn't trigger scale-up: ...").
Its recorder repeats an event by raising its count and lastTimestamp.

`NodeEvents.read()` lists the namespace's Events from that source in one request, only
while some pod of the pool is unplaced, and at most every `INTERVAL` seconds (the
autoscaler's own scan interval is 10 s): the API load does not grow with the pool. What a
pod was last told is kept while the pod exists, so a pod placed on its new node keeps the
longer bound while its image is pulled there. Everything but `read()` is pure.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import NamedTuple

from .. import clock
from ..model import BackendWorker, NodeWait
from . import BackendError
from .kube_api import KubeApi

SOURCE = "cluster-autoscaler"
#: the Events a list asks for: the namespace's pods', from the autoscaler only
FIELD_SELECTOR = f"involvedObject.kind=Pod,source={SOURCE}"
REASONS = {"TriggeredScaleUp": NodeWait.COMING, "NotTriggerScaleUp": NodeWait.NEVER}
#: seconds between two lists at most: cluster-autoscaler's default --scan-interval
INTERVAL = 10.0
#: most Events read in one list: the latest events of a namespace's pods (the apiserver keeps
#: events an hour), bounded so that a namespace full of them costs one page
LIMIT = 2000


class Verdict(NamedTuple):
    """The autoscaler's latest word on one pod."""

    node: NodeWait
    message: str
    at: str  # the event's last time (RFC 3339, comparable as text)


def _when(event: dict) -> str:
    return (event.get("lastTimestamp") or event.get("eventTime") or event.get("firstTimestamp")
            or event["metadata"].get("creationTimestamp") or "")


def verdicts(events: Iterable[dict]) -> dict[str, Verdict]:
    """Pod uid -> the latest of its autoscaler events that says whether a node is coming."""
    latest: dict[str, Verdict] = {}
    for event in events:
        node = REASONS.get(event.get("reason", ""))
        uid = (event.get("involvedObject") or {}).get("uid")
        if node is None or not uid:
            continue
        verdict = Verdict(node, event.get("message") or "", _when(event))
        if uid not in latest or verdict.at >= latest[uid].at:
            latest[uid] = verdict
    return latest


def judged(worker: BackendWorker, verdict: Verdict | None) -> BackendWorker:
    """`worker` (as read from its pod: UNPLACED while the scheduler cannot place it) with what
    the autoscaler said: COMING while a node is added for it, ADDED once it is placed there (the
    longer bound still covers the image pull on the new node); "no node" (NEVER) counts only
    while the pod is still unplaced."""
    if verdict is None or (verdict.node is NodeWait.NEVER and worker.node is not NodeWait.UNPLACED):
        return worker
    if verdict.node is NodeWait.COMING and worker.node is NodeWait.UNPLACED:
        return worker._replace(node=NodeWait.COMING, problem=f"waiting for a node: {verdict.message}")
    if verdict.node is NodeWait.COMING:
        return worker._replace(node=NodeWait.ADDED)
    return worker._replace(node=NodeWait.NEVER, problem=f"{worker.problem}; no node will be added: "
                                                        f"{verdict.message}".lstrip("; "))


class NodeEvents:
    """The autoscaler's verdicts on the pool's pods, read as `read()` decides."""

    def __init__(self, api: KubeApi, log: logging.Logger):
        self.api, self.log = api, log
        self.by_uid: dict[str, Verdict] = {}
        self._read_at = float("-inf")
        self._error = ""

    async def read(self, workers: list[BackendWorker], uids: Mapping[str, str]) -> list[BackendWorker]:
        """`workers` judged by the autoscaler's latest verdicts; `uids` maps their handles to
        their pods' uids. Lists the Events first if a worker is unplaced and INTERVAL has
        passed. A failed list is logged once and leaves the last verdicts: the pool is still
        seen, and a pod without a verdict has start_timeout."""
        now = clock.now()
        if any(w.node is NodeWait.UNPLACED for w in workers) and now - self._read_at >= INTERVAL:
            self._read_at = now
            try:
                answer = await self.api.list_events(FIELD_SELECTOR, LIMIT)
            except BackendError as e:
                if str(e) != self._error:
                    self.log.warning("cannot read cluster-autoscaler's pod events: %s", e)
                self._error = str(e)
            else:
                self._error = ""
                live, read = set(uids.values()), verdicts(answer.get("items") or ())
                self.by_uid = {uid: v for uid, v in {**self.by_uid, **read}.items() if uid in live}
        if not self.by_uid:
            return workers
        return [judged(w, self.by_uid.get(uids.get(w.handle, ""))) for w in workers]
