"""Prometheus metrics of the scaler, on a registry of their own.

`ScalerMetrics` owns a dedicated `CollectorRegistry` (not prometheus_client's
global one), so tests and several scalers in one process never collide. It is
fed plain values once per cycle (`observe_cycle`) and serialised by `render()`
for the `/metrics` handler. It imports the model and the pure policy only: the app
feeds it and the admin page serves it, never the other way round.

Exported (with the default namespace `spark_scaler`):

    spark_scaler_workers{state}                      gauge, our workers by state (every state, 0 included)
    spark_scaler_workers_waiting_for_node            gauge, starting workers whose pods wait for a new node
    spark_scaler_target_workers                      gauge, workers of ours the policy wants
    spark_scaler_wanted_workers                      gauge, the same before clamping to [min, max]
    spark_scaler_max_workers                         gauge, the configured max_workers
    spark_scaler_saturated                           gauge, 1 while wanted_workers > max_workers
    spark_scaler_waiting_apps                        gauge, apps at the master with no cores at all
    spark_scaler_oldest_waiting_app_seconds          gauge, how long the longest waiting of them has waited
    spark_scaler_oldest_held_worker_seconds          gauge, since the oldest held worker was decommissioned
    spark_scaler_prewarm_credit_workers              gauge, extra idle workers asked for by new servers
    spark_scaler_paused                              gauge, 1 while paused from the admin page
    spark_scaler_scale_up_paused                     gauge, 1 while scale-up waits (unschedulable workers)
    spark_scaler_reachable{part}                     gauge, 1 when master / backend / hub was readable
    spark_scaler_workers_started_total               counter
    spark_scaler_workers_retired_total               counter, workers decommissioned
    spark_scaler_workers_stopped_total               counter
    spark_scaler_workers_stopped_by_drain_timeout_total  counter, draining or held workers stopped anyway
    spark_scaler_errors_total{kind}                  counter, kind = master, backend, hub, action
    spark_scaler_cycle_duration_seconds              histogram, one observe-plan-act pass
    spark_scaler_decommission_to_stop_seconds        histogram, retiring_since to stop, per worker
"""

from __future__ import annotations

from collections.abc import Collection
from typing import TYPE_CHECKING

from prometheus_client import (
    CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest,
)

from .model import Snapshot, WorkerState
from .policy import TargetNote, oldest_waiting, saturation

if TYPE_CHECKING:  # only for annotations
    from .policy import Plan

#: the kinds of errors counted
ERROR_KINDS = ("master", "backend", "hub", "action")

# A cycle is milliseconds with a few workers, seconds at 10,000 workers or a slow master.
CYCLE_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
# A drain is seconds for an idle worker, up to hours behind a long job.
DRAIN_BUCKETS = (1.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0, 21600.0)


class ScalerMetrics:
    """The scaler's metrics. Call `observe_cycle` once per cycle, `render` per scrape.

    The app feeds it: the Reconciler hands each pass's `CycleReport` to its
    `on_cycle` callback (`SparkScalerApp.observe_cycle`), which passes on the
    snapshot, the plan, the duration, the counts of the workers started and
    retired and of the failed actions, the handles stopped, the hub's health
    and whether the scaler is paused. Blind cycles are reported too: that is
    how master and backend errors are counted. A resent decommission is not a
    retirement.
    """

    def __init__(self, *, namespace: str = "spark_scaler", registry: CollectorRegistry | None = None):
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        common = {"namespace": namespace, "registry": self.registry}
        self.workers = Gauge("workers", "Workers of this scaler by state.", ["state"], **common)
        self.waiting_for_node = Gauge(
            "workers_waiting_for_node", "Starting workers whose pods wait for the node cluster-autoscaler "
            "is adding for them (counted as starting too).", **common)
        self.target = Gauge("target_workers", "Workers of ours the policy wants.", **common)
        self.wanted = Gauge(
            "wanted_workers",
            "Workers of ours the policy wants, before clamping to [min_workers, max_workers].", **common,
        )
        self.max_workers = Gauge(
            "max_workers", "The most workers of ours the scaler runs (max_workers).", **common
        )
        self.saturated = Gauge(
            "saturated", "1 while more workers are wanted than max_workers allows, else 0.", **common
        )
        self.waiting_apps = Gauge("waiting_apps", "Spark apps at the master with no cores at all.", **common)
        self.oldest_waiting = Gauge(
            "oldest_waiting_app_seconds",
            "How long the app that has waited longest with no cores has waited; 0 with none waiting.",
            **common,
        )
        self.oldest_held = Gauge(
            "oldest_held_worker_seconds",
            "Seconds since the oldest held worker (decommissioned, executors not leaving) was "
            "decommissioned; 0 with none held.", **common,
        )
        self.prewarm_credit = Gauge(
            "prewarm_credit_workers", "Extra idle workers asked for by recently started notebook servers.",
            **common,
        )
        self.paused = Gauge(
            "paused", "1 while the scaler is paused (starts, retires, stops nothing), else 0.", **common
        )
        self.scale_up_paused = Gauge(
            "scale_up_paused", "1 while scale-up waits after workers failed to register, else 0.", **common
        )
        self.reachable = Gauge(
            "reachable", "1 when the part (master, backend, hub) was readable at the last cycle, else 0.",
            ["part"], **common,
        )
        self.started = Counter("workers_started", "Workers started (scale-ups).", **common)
        self.retired = Counter("workers_retired", "Workers decommissioned (scale-downs).", **common)
        self.stopped = Counter(
            "workers_stopped", "Workers stopped: drained, lost, unschedulable or surplus.", **common
        )
        self.stopped_by_drain_timeout = Counter(
            "workers_stopped_by_drain_timeout",
            "Draining or held workers stopped anyway after drain_timeout; their apps lost executors on them.",
            **common,
        )
        self.errors = Counter(
            "errors",
            "Cycles in which the master, the backend or the hub (its last poll) could not be read, "
            "and failed actions (kind=action).",
            ["kind"], **common,
        )
        self.cycle_duration = Histogram(
            "cycle_duration_seconds", "Duration of one observe-plan-act cycle.",
            buckets=CYCLE_BUCKETS, **common,
        )
        self.drain_duration = Histogram(
            "decommission_to_stop_seconds",
            "Time from a worker's decommission (retiring_since) to its stop.",
            buckets=DRAIN_BUCKETS, **common,
        )
        # Export every label value from the start, so a series never appears out of nowhere.
        for state in WorkerState:
            self.workers.labels(state.value).set(0)
        for kind in ERROR_KINDS:
            self.errors.labels(kind)
        # reachability is exported from the first cycle on: before it, nothing is known
        self._hub_exported = False  # the hub series exists only once a hub health was given

    def observe_cycle(
        self,
        *,
        snapshot: Snapshot,
        plan: Plan,
        duration: float,
        started: int = 0,
        retired: int = 0,
        stopped: Collection[str] = (),
        action_errors: int = 0,
        hub_healthy: bool | None = None,
        paused: bool = False,
        now: float | None = None,
    ) -> None:
        """Record one cycle.

        `started` / `retired`: workers actually started / decommissioned this cycle.
        `stopped`: handles of the workers actually stopped; those with a
        `retiring_since` in `snapshot` feed the decommission-to-stop histogram,
        measured up to `now` (default `snapshot.taken_at`); those `plan` stopped for
        drain_timeout (`Plan.timed_out`) are counted apart too.
        `action_errors`: failed start / retire / stop calls.
        `hub_healthy`: `HubActivity.healthy`; None when no hub is configured (the
        hub reachability series is then not exported).
        Workers by state, the wanted size, saturation, waiting apps and held workers keep
        their last values through a blind cycle: a pool seen in part would read as calm.
        `paused`: the admin pause (`Reconciler.paused`). Whether scale-up waits
        after unschedulable workers is read from the plan.
        """
        counts = dict.fromkeys(WorkerState, 0)
        retiring_since: dict[str, float] = {}
        for w in snapshot.workers:
            if w.backend is None:
                continue
            counts[w.state] += 1
            if w.backend.retiring_since is not None:
                retiring_since[w.handle] = w.backend.retiring_since
        if not snapshot.blind:  # a pool seen in part would read as workers gone: keep the last counts
            for state, n in counts.items():
                self.workers.labels(state.value).set(n)
            self.waiting_for_node.set(sum(1 for w in snapshot.workers if w.waiting_for_node))
            self._observe_demand(snapshot, plan)
        self.target.set(plan.demand.target)
        self.prewarm_credit.set(snapshot.prewarm_credit)
        self.paused.set(1 if paused else 0)
        self.scale_up_paused.set(1 if plan.history.scale_up_paused_until > snapshot.taken_at else 0)

        self._observe_health(snapshot, hub_healthy, action_errors)

        if started:
            self.started.inc(started)
        if retired:
            self.retired.inc(retired)
        if stopped:
            self.stopped.inc(len(stopped))
            timed_out = set(plan.timed_out)
            self.stopped_by_drain_timeout.inc(sum(1 for handle in stopped if handle in timed_out))
        end = snapshot.taken_at if now is None else now
        for handle in stopped:
            since = retiring_since.get(handle)
            if since is not None:
                self.drain_duration.observe(max(0.0, end - since))
        self.cycle_duration.observe(max(0.0, duration))

    def _observe_demand(self, snapshot: Snapshot, plan: Plan) -> None:
        """What is wanted against what max_workers allows, and who waits for it."""
        now = snapshot.taken_at
        self.wanted.set(plan.demand.wanted)
        limits = plan.notes[0]
        if isinstance(limits, TargetNote):
            self.max_workers.set(limits.max_workers)
        self.saturated.set(1 if saturation(plan) else 0)
        self.waiting_apps.set(plan.demand.waiting)
        oldest = oldest_waiting(snapshot)
        self.oldest_waiting.set(max(0.0, now - oldest.start_time / 1000) if oldest else 0)
        held = [w.backend.retiring_since if w.backend.retiring_since is not None else w.backend.created_at
                for w in snapshot.workers if w.backend is not None and w.state is WorkerState.HELD]
        self.oldest_held.set(max(0.0, now - min(held)) if held else 0)

    def _observe_health(self, snapshot: Snapshot, hub_healthy: bool | None, action_errors: int) -> None:
        """Reachability gauges and error counters."""
        self.reachable.labels("master").set(0 if snapshot.master_error else 1)
        self.reachable.labels("backend").set(0 if snapshot.backend_error else 1)
        if hub_healthy is None:
            if self._hub_exported:
                self.reachable.remove("hub")
        else:
            self.reachable.labels("hub").set(1 if hub_healthy else 0)
        self._hub_exported = hub_healthy is not None
        if snapshot.master_error:
            self.errors.labels("master").inc()
        if snapshot.backend_error:
            self.errors.labels("backend").inc()
        if hub_healthy is False:
            self.errors.labels("hub").inc()
        if action_errors:
            self.errors.labels("action").inc(action_errors)

    def render(self) -> tuple[bytes, str]:
        """The exposition text and its content type, for the `/metrics` handler."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
