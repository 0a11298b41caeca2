"""What the admin page's handlers read: the reconciler (attached once it exists), the hub's
activity, the metrics and the pool history. Admin changes go to the reconciler's own
controls (`Reconciler.pause`, `resume`, `set_idle_override`); this object only reads.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from markupsafe import Markup

from .. import clock
from ..activity import Gate, HubActivity
from ..metrics import ScalerMetrics
from ..reconciler import Reconciler
from .chart import render_svg
from .history import PoolHistory
from .view import pool_view


class PoolState:
    def __init__(
        self,
        *,
        activity: HubActivity,
        prewarm_window: float,
        prewarm_per_server: int,
        metrics: ScalerMetrics,
        history: PoolHistory,
        poll_interval: float,
        on_change: Callable[[], None] = lambda: None,
        gate: Callable[[], Gate] = Gate,
    ):
        self.metrics = metrics
        self.history = history
        self.activity = activity
        self.prewarm_window = prewarm_window
        self.prewarm_per_server = prewarm_per_server
        self.poll_interval = poll_interval
        #: called after an admin change that should take effect at once (a cycle soon)
        self.on_change = on_change
        self.reconciler: Reconciler | None = None
        self.gate = gate  # which servers may pre-warm, as of the last cycle

    def attach(self, reconciler: Reconciler) -> None:
        self.reconciler = reconciler

    def view(self) -> dict[str, Any]:
        r = self.reconciler
        assert r is not None
        return pool_view(
            snapshot=r.last_snapshot,
            plan=r.last_plan,
            decisions=r.decisions,
            servers=self.activity.servers,
            hub_healthy=self.activity.healthy,
            hub_error=self.activity.last_error,
            paused=r.paused,
            paused_by=r.paused_by,
            idle_override=r.idle_override,
            idle_override_by=r.idle_override_by,
            settings={
                "max_workers": r.policy.max_workers,
                "min_workers": r.policy.min_workers,
                "idle_workers": r.policy.idle_workers,
                "prewarm_window": self.prewarm_window,
                "prewarm_per_server": self.prewarm_per_server,
                "prewarm_gate": self.gate(),
            },
            now=clock.now(),
        )

    def chart(self) -> Markup:
        """The pool size by state over the last hour, as inline SVG (numbers only)."""
        now = clock.now()
        return Markup(render_svg(self.history.samples(now), now=now))
