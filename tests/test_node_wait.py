"""Waiting for a node (pure): what the scheduler and cluster-autoscaler said of a worker pod,
the state a worker not yet registered is in, and how the admin page shows it.

The events are shaped as cluster-autoscaler records them (core/v1 Events, source component
`cluster-autoscaler`, involvedObject the pod); the real-apiserver test is in
tests/test_kubernetes_node_wait.py.
"""

from __future__ import annotations

import pytest

from jhub_spark_scaler.backends.node_events import FIELD_SELECTOR, Verdict, judged, verdicts
from jhub_spark_scaler.backends.worker_pod import pod_worker
from jhub_spark_scaler.metrics import ScalerMetrics
from jhub_spark_scaler.model import BackendWorker, NodeWait, WorkerState
from jhub_spark_scaler.observe import ObserveSettings, classify, unregistered
from jhub_spark_scaler.policy import History, plan
from jhub_spark_scaler.web.view import STATE_BADGES

from .settings import make_policy
from .test_policy import snap, worker
from .test_web_view import view

S, N = WorkerState, NodeWait
SETTINGS = ObserveSettings(start_timeout=300.0, node_wait_timeout=1200.0, held_after=120.0)
TRIGGERED = "pod triggered scale-up: [{spark-pool 1->2 (max: 10)}]"
NOT_TRIGGERED = "pod didn't trigger scale-up: 1 max node group size reached"
UNSCHEDULABLE = "Unschedulable: 0/3 nodes are available: 3 Insufficient cpu."


def bw(node: NodeWait = N.NONE, problem: str = "", created_at: float = 1000.0) -> BackendWorker:
    return BackendWorker("spark-worker-x", "", created_at, node=node, problem=problem)


def event(uid: str, reason: str, message: str, at: str, **extra) -> dict:
    return {"metadata": {"name": f"{uid}.{reason}", "namespace": "spark"}, "reason": reason,
            "message": message, "source": {"component": "cluster-autoscaler"}, "type": "Normal",
            "involvedObject": {"kind": "Pod", "namespace": "spark", "name": f"pod-{uid}", "uid": uid},
            "lastTimestamp": at, **extra}


# -- the rule --------------------------------------------------------------------------


@pytest.mark.parametrize("node, problem, age, state, why", [
    # nothing said: start_timeout, the pod's own problem as why
    (N.NONE, "", 299.0, S.STARTING, ""),
    (N.NONE, "ErrImagePull: x", 300.0, S.UNSCHEDULABLE, "ErrImagePull: x"),
    (N.NONE, "", 300.0, S.UNSCHEDULABLE, "not registered within start_timeout"),
    # the scheduler cannot place it, the autoscaler has said nothing (none installed?): start_timeout
    (N.UNPLACED, UNSCHEDULABLE, 299.0, S.STARTING, UNSCHEDULABLE),
    (N.UNPLACED, UNSCHEDULABLE, 300.0, S.UNSCHEDULABLE, UNSCHEDULABLE),
    # a node is coming: starting past start_timeout, up to node_wait_timeout
    (N.COMING, f"waiting for a node: {TRIGGERED}", 300.0, S.STARTING, f"waiting for a node: {TRIGGERED}"),
    (N.COMING, f"waiting for a node: {TRIGGERED}", 1199.0, S.STARTING, f"waiting for a node: {TRIGGERED}"),
    (N.ADDED, "", 1000.0, S.STARTING, ""),  # placed on its new node, pulling its image
    (N.ADDED, "ErrImagePull: x", 1200.0, S.UNSCHEDULABLE, "not registered within node_wait_timeout "
                                                          "(ErrImagePull: x)"),
    (N.COMING, f"waiting for a node: {TRIGGERED}", 1200.0, S.UNSCHEDULABLE,
     f"not registered within node_wait_timeout (waiting for a node: {TRIGGERED})"),
    (N.COMING, "", 1200.0, S.UNSCHEDULABLE, "not registered within node_wait_timeout"),
    # no node will come: unschedulable at once
    (N.NEVER, f"{UNSCHEDULABLE}; no node will be added: {NOT_TRIGGERED}", 5.0, S.UNSCHEDULABLE,
     f"{UNSCHEDULABLE}; no node will be added: {NOT_TRIGGERED}"),
])
def test_unregistered(node, problem, age, state, why):
    assert unregistered(bw(node, problem), age, SETTINGS) == (state, why)
    w = classify(bw(node, problem), None, None, 1000.0 + age, SETTINGS)
    assert (w.state, w.why) == (state, why)


def test_a_registered_worker_is_the_masters_whatever_the_autoscaler_said():
    from .test_observe import mw

    b = BackendWorker("spark-worker-x", "10.0.0.1", 1000.0, node=N.COMING)
    assert classify(b, mw("10.0.0.1"), None, 5000.0, SETTINGS).state is S.IDLE


# -- the pod and the events ----------------------------------------------------------


def test_an_unplaced_pod_is_read_as_unplaced():
    pod = {"metadata": {"name": "p", "creationTimestamp": "2026-12-05T10:00:00Z"},
           "status": {"phase": "Pending", "conditions": [
               {"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                "message": "0/3 nodes are available: 3 Insufficient cpu."}]}}
    w = pod_worker(pod)
    assert (w.node, w.problem) == (N.UNPLACED, UNSCHEDULABLE)
    pod["status"] = {"phase": "Pending", "conditions": [{"type": "PodScheduled", "status": "True"}]}
    assert pod_worker(pod).node is N.NONE


def test_verdicts_take_each_pods_latest_word():
    events = [
        event("a", "NotTriggerScaleUp", NOT_TRIGGERED, "2026-12-05T10:00:10Z"),
        event("a", "TriggeredScaleUp", TRIGGERED, "2026-12-05T10:00:40Z"),  # a node group freed up
        event("b", "TriggeredScaleUp", TRIGGERED, "2026-12-05T10:00:10Z"),
        event("b", "NotTriggerScaleUp", NOT_TRIGGERED, "2026-12-05T10:01:10Z"),  # its group failed
        event("c", "FailedScheduling", "0/3 nodes are available", "2026-12-05T10:02:00Z"),  # not a verdict
        event("", "TriggeredScaleUp", TRIGGERED, "2026-12-05T10:02:00Z"),  # no uid: whose?
        # an event of the newer API has eventTime and no lastTimestamp
        event("d", "TriggeredScaleUp", TRIGGERED, None, eventTime="2026-12-05T10:03:00.000000Z"),
    ]
    assert verdicts(events) == {
        "a": Verdict(N.COMING, TRIGGERED, "2026-12-05T10:00:40Z"),
        "b": Verdict(N.NEVER, NOT_TRIGGERED, "2026-12-05T10:01:10Z"),
        "d": Verdict(N.COMING, TRIGGERED, "2026-12-05T10:03:00.000000Z"),
    }


def test_the_events_asked_for_are_the_autoscalers_on_pods():
    assert FIELD_SELECTOR == "involvedObject.kind=Pod,source=cluster-autoscaler"


def test_judged():
    unplaced = bw(N.UNPLACED, UNSCHEDULABLE)
    coming, never = Verdict(N.COMING, TRIGGERED, "t"), Verdict(N.NEVER, NOT_TRIGGERED, "t")
    assert judged(unplaced, None) == unplaced
    assert judged(unplaced, coming) == unplaced._replace(node=N.COMING,
                                                         problem=f"waiting for a node: {TRIGGERED}")
    assert judged(unplaced, never) == unplaced._replace(
        node=N.NEVER, problem=f"{UNSCHEDULABLE}; no node will be added: {NOT_TRIGGERED}")
    # placed on the node added for it: the longer bound stays while its image is pulled
    placed = bw(N.NONE, "ErrImagePull: x")
    assert judged(placed, coming) == placed._replace(node=N.ADDED)
    # placed after a "no node" (another pod freed room): nothing against it
    assert judged(placed, never) == placed


# -- the page ------------------------------------------------------------------------------


def test_the_page_shows_the_workers_waiting_for_a_node():
    waiting = worker("w", S.STARTING)._replace(
        backend=bw(N.COMING, f"waiting for a node: {TRIGGERED}"), why=f"waiting for a node: {TRIGGERED}")
    starting = worker("s", S.STARTING)
    v = view(snap(waiting, starting))
    rows = {w["handle"]: w for w in v["workers"]}
    assert (rows["w"]["state"], rows["w"]["waiting_for_node"]) == ("starting", True)
    assert rows["w"]["why"] == f"waiting for a node: {TRIGGERED}"
    assert rows["s"]["waiting_for_node"] is False
    (problem,) = v["problems"]
    assert (problem["kind"], problem["count"]) == ("waiting-for-node", 1)
    assert problem["filter"] == {"state": "starting"}
    assert problem["text"].startswith("1 worker waiting for a node that cluster-autoscaler is adding")
    assert problem["kind"] in STATE_BADGES


def test_the_metrics_count_the_workers_waiting_for_a_node():
    waiting = worker("w", S.STARTING)._replace(backend=bw(N.COMING, f"waiting for a node: {TRIGGERED}"))
    placed = worker("p", S.STARTING)._replace(backend=bw(N.ADDED))  # on its new node, not registered
    pool = snap(waiting, placed, worker("i", S.IDLE))
    m = ScalerMetrics()
    m.observe_cycle(snapshot=pool, plan=plan(pool, make_policy(), History()), duration=0.01)
    assert m.registry.get_sample_value("spark_scaler_workers_waiting_for_node") == 1
    assert m.registry.get_sample_value("spark_scaler_workers", {"state": "starting"}) == 2
    assert not placed.waiting_for_node
