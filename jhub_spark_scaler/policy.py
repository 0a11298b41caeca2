"""How many workers there should be, and which to retire: a pure function.

`plan(snapshot, settings, history) -> Plan` does no I/O, reads no clock
(`snapshot.taken_at` is "now") and uses no randomness. State that must carry
over from one cycle to the next (how long a surplus has lasted, since when a
worker has been idle) goes in and comes out as a `History` value.

    target = clamp(busy + waiting + idle_target - foreign capacity, min_workers, max_workers)
    idle_target = idle_workers + prewarm_credit

Only workers this scaler owns are started or retired; workers registered at
the master by someone else ("foreign") count as demand and capacity.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Mapping

from .model import CAPACITY_STATES, Snapshot, Worker, WorkerState

#: Our workers in these states are stopped at once: nothing can run on them.
STOP_STATES = (WorkerState.DRAINED, WorkerState.LOST, WorkerState.UNSCHEDULABLE)


@dataclass(frozen=True, slots=True)
class PolicySettings:
    max_workers: int
    min_workers: int = 0
    idle_workers: int = 1
    max_surge: int = 10
    scale_down_delay: float = 60.0
    #: after removing unschedulable workers, start no new ones for this long
    unschedulable_backoff: float = 120.0


@dataclass(frozen=True, slots=True)
class History:
    """What `plan` remembers between cycles. Lost on restart, which is safe:
    a fresh History only delays scale-down by one `scale_down_delay`."""

    surplus_since: float | None = None
    idle_since: Mapping[str, float] = field(default_factory=lambda: MappingProxyType({}))
    scale_up_paused_until: float = 0.0


@dataclass(frozen=True, slots=True)
class Demand:
    busy: int
    waiting: int
    idle_target: int
    foreign_capacity: int
    target: int  # workers of ours wanted, after clamping


@dataclass(frozen=True, slots=True)
class Plan:
    demand: Demand
    start: int
    retire: tuple[str, ...]  # handles to decommission (they drain, then get stopped)
    stop: tuple[str, ...]  # handles to stop now: drained, lost, unschedulable, unregistered surplus
    reasons: tuple[str, ...]
    history: History

    @property
    def acts(self) -> bool:
        return bool(self.start or self.retire or self.stop)


def demand(snapshot: Snapshot, settings: PolicySettings) -> Demand:
    """The target size of our pool and what it is made of."""
    busy = snapshot.count(WorkerState.BUSY, ours_only=False)
    waiting = sum(1 for app in snapshot.apps if app.cores == 0)
    idle_target = settings.idle_workers + snapshot.prewarm_credit
    foreign = sum(1 for w in snapshot.workers if not w.ours and w.state in CAPACITY_STATES)
    wanted = busy + waiting + idle_target - foreign
    target = min(max(wanted, settings.min_workers), settings.max_workers)
    return Demand(busy, waiting, idle_target, foreign, target)


def _retire_order(workers: list[Worker], idle_since: Mapping[str, float]) -> list[Worker]:
    """Never-registered workers first (newest first), then the longest idle."""
    starting = sorted(
        (w for w in workers if w.state is WorkerState.STARTING), key=lambda w: -w.created_at
    )
    idle = sorted(
        (w for w in workers if w.state is WorkerState.IDLE),
        key=lambda w: (idle_since.get(w.handle, 0.0), w.created_at, w.handle),
    )
    return starting + idle


def plan(snapshot: Snapshot, settings: PolicySettings, history: History) -> Plan:
    """Decide what to do this cycle. Pure: same inputs, same Plan."""
    now = snapshot.taken_at
    need = demand(snapshot, settings)
    reasons = [
        f"target {need.target} = {need.busy} busy + {need.waiting} waiting + "
        f"{need.idle_target} idle target - {need.foreign_capacity} foreign, "
        f"clamped to [{settings.min_workers}, {settings.max_workers}]"
    ]
    if snapshot.blind:
        why = snapshot.master_error or snapshot.backend_error
        reasons.append(f"blind, changing nothing: {why}")
        # what happened while blind is unknown: a surplus must last scale_down_delay again
        # once the pool is seen (after a master restart, users may be on their way back)
        return Plan(need, 0, (), (), tuple(reasons), replace(history, surplus_since=None))

    ours = [w for w in snapshot.workers if w.ours]
    idle_since = MappingProxyType(
        {w.handle: history.idle_since.get(w.handle, now) for w in ours if w.state is WorkerState.IDLE}
    )
    stop = [w for w in ours if w.state in STOP_STATES and not w.backend.stopping]
    for w in stop:
        reasons.append(f"stopping {w.handle}: {w.state.value}" + (f" ({w.why})" if w.why else ""))
    paused_until = history.scale_up_paused_until
    if any(w.state is WorkerState.UNSCHEDULABLE for w in stop):
        paused_until = now + settings.unschedulable_backoff

    capacity = sum(1 for w in ours if w.state in CAPACITY_STATES)
    start, retire, surplus_since = 0, [], None
    if need.target > capacity:
        room = settings.max_workers - len(ours)
        start = max(0, min(need.target - capacity, settings.max_surge, room))
        if paused_until > now:
            reasons.append(
                f"not starting {need.target - capacity}: workers did not register "
                f"recently, scale-up paused for {paused_until - now:.0f} s"
            )
            start = 0
        elif start:
            reasons.append(f"starting {start}: capacity {capacity} < target {need.target}")
        else:
            reasons.append(f"at max_workers ({settings.max_workers}): cannot start more")
    elif need.target < capacity:
        surplus = capacity - need.target
        surplus_since = history.surplus_since if history.surplus_since is not None else now
        waited = now - surplus_since
        if waited < settings.scale_down_delay:
            reasons.append(
                f"surplus of {surplus} for {waited:.0f} s of {settings.scale_down_delay:.0f} s "
                "scale_down_delay: waiting"
            )
        else:
            for w in _retire_order(ours, idle_since)[:surplus]:
                if w.state is WorkerState.STARTING:
                    stop.append(w)
                    reasons.append(f"stopping {w.handle}: surplus, never registered")
                else:
                    retire.append(w)
                    reasons.append(f"retiring {w.handle}: surplus, idle {now - idle_since[w.handle]:.0f} s")
            surplus_since = None if retire or stop else surplus_since

    return Plan(
        demand=need,
        start=start,
        retire=tuple(w.handle for w in retire),
        stop=tuple(w.handle for w in stop),
        reasons=tuple(reasons),
        history=History(surplus_since, idle_since, paused_until),
    )
