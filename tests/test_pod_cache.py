"""The pod cache's bookkeeping of versions, without an apiserver: the order in which
watch events and the answers to our own calls arrive is a race the real apiserver
produces only now and then (the soak found it), so the events are fed in by hand."""

from __future__ import annotations

import logging

import pytest

from jhub_spark_scaler.backends import BackendError
from jhub_spark_scaler.backends.pod_cache import PodCache

from .waiting import until


def pod(name: str, version: int, **status) -> dict:
    return {"metadata": {"name": name, "resourceVersion": str(version)}, "status": status}


def cache() -> PodCache:
    return PodCache(api=None, selector="app=x", convert=lambda p: p["status"], log=logging.getLogger("test"))


def test_the_answer_to_our_delete_after_the_deleted_event_does_not_bring_the_pod_back():
    c = cache()
    c.put(pod("w-1", 5, phase="Failed"))
    c._apply({"type": "DELETED", "object": pod("w-1", 9, phase="Failed")})
    c.put(pod("w-1", 7, phase="Failed", deleting=True))  # our DELETE's answer, late
    assert "w-1" not in c.items


def test_older_copies_never_replace_newer_ones_and_new_pods_come_in():
    c = cache()
    c._apply({"type": "ADDED", "object": pod("w-1", 5, phase="Pending")})
    c._apply({"type": "MODIFIED", "object": pod("w-1", 8, phase="Running")})
    c.put(pod("w-1", 6, phase="Pending", annotated=True))
    assert c.items["w-1"] == {"phase": "Running"}
    c.put(pod("w-2", 12, phase="Pending"))  # a pod we just created, before its ADDED event
    assert c.items["w-2"] == {"phase": "Pending"}


def test_a_pod_deleted_and_created_again_under_its_name_comes_back():
    c = cache()
    c._apply({"type": "DELETED", "object": pod("w-1", 9)})
    c._apply({"type": "ADDED", "object": pod("w-1", 15, phase="Pending")})
    assert c.items["w-1"] == {"phase": "Pending"}


class OnePage:
    """The API for a cache's list: one page with `pods`, or `failure` raised."""

    def __init__(self, pods: list[dict], failure: Exception | None = None):
        self.pods, self.failure = pods, failure

    async def list_pods(self, selector: str, limit: int = 0, continue_from: str = "") -> dict:
        if self.failure:
            raise self.failure
        return {"items": self.pods, "metadata": {"resourceVersion": "9"}}


@pytest.mark.parametrize("case", ["outage", "bug"])
async def test_a_pod_it_cannot_read_is_blindness_with_a_traceback_an_outage_without(case, caplog):
    """Either way the pool cannot be seen (list() raises BackendError); only a pod that
    `convert` fails on, a bug, logs its traceback."""
    def convert(pod: dict) -> dict:
        return pod["status"]["phase"]  # KeyError: the pod below has no status

    api = OnePage([{"metadata": {"name": "w-1", "resourceVersion": "3"}}],
                  BackendError("cannot reach the Kubernetes API") if case == "outage" else None)
    c = PodCache(api=api, selector="app=x", convert=convert, log=logging.getLogger("test"))
    c.start()
    try:
        await until(lambda: c.stats["failures"], timeout=5, what="the list to fail", interval=0.01)
    finally:
        await c.stop()
    with pytest.raises(BackendError):
        c.values()
    [record] = [r for r in caplog.records if r.getMessage().startswith("pod cache: ")]
    assert bool(record.exc_info) == (case == "bug")


def test_pods_keep_refuses_are_left_out_and_dropped_when_they_turn_foreign():
    """`keep` (the backend's owner check): a refused pod is never an item, and a kept pod
    whose owner is changed to another's leaves; `uids` follows the items."""
    c = PodCache(api=None, selector="app=x", convert=lambda p: p["status"], log=logging.getLogger("test"),
                 keep=lambda p: p["metadata"].get("owner") == "us")
    ours = {**pod("w-1", 5, phase="Running"), "metadata": {"name": "w-1", "resourceVersion": "5",
                                                           "uid": "u-1", "owner": "us"}}
    theirs = {**pod("w-2", 6), "metadata": {"name": "w-2", "resourceVersion": "6", "uid": "u-2",
                                            "owner": "them"}}
    c._apply({"type": "ADDED", "object": ours})
    c._apply({"type": "ADDED", "object": theirs})
    assert set(c.items) == set(c.uids) == {"w-1"} and c.uids["w-1"] == "u-1"
    turned = {**ours, "metadata": {**ours["metadata"], "resourceVersion": "7", "owner": "them"}}
    c._apply({"type": "MODIFIED", "object": turned})
    assert c.items == {} and c.uids == {}
