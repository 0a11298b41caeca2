"""How many workers there should be, and which to retire: a pure function.

`plan(snapshot, settings, history) -> Plan` does no I/O, reads no clock
(`snapshot.taken_at` is "now") and uses no randomness. State that must carry
over from one cycle to the next (how long a surplus has lasted, since when a
worker has been idle) goes in and comes out as a `History` value.

    wanted = busy + waiting + idle_workers + prewarm_credit - foreign capacity
    target = clamp(wanted, min_workers, max_workers)

A pool whose wanted size is past max_workers is saturated: the plan says so (`SaturatedNote`:
wanted, max_workers, the apps waiting and the longest wait), which the log, the decision log
and the metrics read, so that a saturated pool never looks like a quiet one at its limit.

Only workers this scaler owns are started or retired. Workers registered at the master by
someone else ("foreign") count as demand and capacity only with `count_foreign_workers`:
anyone who reaches the master's port can register a worker (Spark's RPC has no
authentication), and fake idle ones would shrink the pool. Without it, busy counts our
workers only and foreign capacity is 0.

A retiring worker is waited on for as long as its executors stay, unless the admin set
`drain_timeout`: a draining or held worker of ours retiring for that long is stopped
anyway, and its apps lose their executors on it (the one exception to never taking a
worker from a running app; off, 0, by default).

With an external shuffle service on the workers, an idle worker of ours that serves shuffle
files of a running app is no retirement candidate until the app ends (`shuffle.keeps`).

A `Plan` says why as data: a reason per worker it stops or retires (`Plan.why`, by handle),
per worker it keeps (`Plan.kept`) and notes on the pool as a whole (`Plan.notes`). `explain(plan)`
and `describe(item)` are the only place those become words, so the page and logs read the same.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Mapping, Union

from .model import CAPACITY_STATES, MasterApp, Snapshot, Worker, WorkerState
from .shuffle import KeepForShuffle, keeps, kept_words

#: Our workers in these states are stopped at once: nothing can run on them.
STOP_STATES = (WorkerState.DRAINED, WorkerState.LOST, WorkerState.UNSCHEDULABLE)


@dataclass(frozen=True, slots=True)
class PolicySettings:
    """The policy's settings; their defaults are the command's (`SparkScalerApp`)."""

    max_workers: int
    min_workers: int
    idle_workers: int
    max_surge: int
    scale_down_delay: float
    #: after removing unschedulable workers, start no new ones for this long
    unschedulable_backoff: float
    #: workers of others at the master count as demand (busy) and capacity (busy or idle)
    count_foreign_workers: bool
    #: seconds a draining or held worker of ours is waited on before it is stopped anyway; 0: forever
    drain_timeout: float


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
    idle_workers: int  # the idle workers in force: the admin's override, else the configured value
    prewarm_credit: int  # idle workers asked for by recently started notebook servers
    foreign_capacity: int
    wanted: int  # workers of ours wanted, before clamping to [min_workers, max_workers]
    target: int  # workers of ours wanted, after clamping

    @property
    def idle_target(self) -> int:
        """The idle workers planned for: configured (or overridden) plus the pre-warm credit."""
        return self.idle_workers + self.prewarm_credit


# -- why: per worker ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StopForState:
    """A worker stopped because of its state: drained, lost or unschedulable."""

    handle: str
    state: WorkerState
    detail: str  # the worker's own why ("its pod is gone"), "" if none


@dataclass(frozen=True, slots=True)
class StopDrainTimeout:
    """A draining or held worker stopped anyway: it has been retiring for drain_timeout."""

    handle: str
    state: WorkerState  # draining or held
    waited: float  # seconds since its decommission
    drain_timeout: float
    #: the apps with executors on it (they lose them), None: unknown (its own /json/ is unread)
    apps: tuple[str, ...] | None


@dataclass(frozen=True, slots=True)
class StopNeverRegistered:
    """Surplus: a worker that never registered, stopped rather than retired."""

    handle: str


@dataclass(frozen=True, slots=True)
class RetireIdle:
    """Surplus: an idle worker retired, the longest idle first."""

    handle: str
    idle_for: float  # seconds


WorkerReason = Union[StopForState, StopDrainTimeout, StopNeverRegistered, RetireIdle]


# -- why: the pool ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TargetNote:
    """What the target is made of. Every plan's first note."""

    demand: Demand
    min_workers: int
    max_workers: int


@dataclass(frozen=True, slots=True)
class BlindNote:
    """The pool cannot be seen: nothing changes."""

    why: str


@dataclass(frozen=True, slots=True)
class ScaleUpPausedNote:
    """Workers are wanted, but scale-up waits after workers failed to register."""

    wanted: int
    paused_for: float  # seconds left


@dataclass(frozen=True, slots=True)
class StartingNote:
    start: int
    capacity: int
    target: int


@dataclass(frozen=True, slots=True)
class AtMaxWorkersNote:
    max_workers: int


@dataclass(frozen=True, slots=True)
class SaturatedNote:
    """More workers wanted than max_workers allows: what the pool cannot grow to give."""

    wanted: int
    max_workers: int
    waiting: int  # apps with no cores at all
    longest_wait: float  # seconds the oldest of them has waited, 0 with none
    oldest: str  # that app's id and user ("app-... of alice"), "" with none


@dataclass(frozen=True, slots=True)
class WaitingNote:
    """A surplus that has not yet lasted scale_down_delay."""

    surplus: int
    waited: float  # seconds
    scale_down_delay: float


Note = Union[TargetNote, BlindNote, ScaleUpPausedNote, StartingNote, AtMaxWorkersNote, SaturatedNote,
             WaitingNote]
NO_REASONS: Mapping[str, WorkerReason] = MappingProxyType({})
NO_KEPT: Mapping[str, KeepForShuffle] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class Plan:
    demand: Demand
    start: int
    retire: tuple[str, ...]  # handles to decommission (they drain, then get stopped)
    stop: tuple[str, ...]  # stop now: drained, lost, unschedulable, past drain_timeout, unregistered surplus
    notes: tuple[Note, ...]  # the TargetNote first
    why: Mapping[str, WorkerReason]  # a reason for each handle in `retire` and `stop`
    history: History
    kept: Mapping[str, KeepForShuffle] = field(default_factory=lambda: NO_KEPT)  # idle, not candidates
    spared: tuple[str, ...] = ()  # the kept that a scale-down due now would have retired

    @property
    def acts(self) -> bool:
        return bool(self.start or self.retire or self.stop)

    @property
    def timed_out(self) -> tuple[str, ...]:
        """The handles in `stop` stopped because of drain_timeout."""
        return tuple(h for h in self.stop if isinstance(self.why[h], StopDrainTimeout))


def describe(item: Note | WorkerReason | KeepForShuffle) -> str:
    """One note or worker reason in words."""
    match item:
        case TargetNote(need, low, high):
            # foreign capacity is 0 unless counted (count_foreign_workers): "- 0 foreign" would
            # read as if foreign workers were counted
            # likewise a pre-warm credit is named only when a server asks for one
            credit = f" + {need.prewarm_credit} pre-warm credit" if need.prewarm_credit else ""
            foreign = f" - {need.foreign_capacity} foreign" if need.foreign_capacity else ""
            return (f"target {need.target} = {need.busy} busy + {need.waiting} waiting + "
                    f"{need.idle_workers} idle{credit}{foreign}, clamped to [{low}, {high}]")
        case BlindNote(why):
            return f"blind, changing nothing: {why}"
        case ScaleUpPausedNote(wanted, paused_for):
            return (f"not starting {wanted}: workers did not register "
                    f"recently, scale-up paused for {paused_for:.0f} s")
        case StartingNote(start, capacity, target):
            return f"starting {start}: capacity {capacity} < target {target}"
        case AtMaxWorkersNote(max_workers):
            return f"at max_workers ({max_workers}): cannot start more"
        case SaturatedNote():
            return f"saturated: {saturated_words(item)}"
        case WaitingNote(surplus, waited, delay):
            return f"surplus of {surplus} for {waited:.0f} s of {delay:.0f} s scale_down_delay: waiting"
        case StopForState(handle, state, detail):
            return f"stopping {handle}: {state.value}" + (f" ({detail})" if detail else "")
        case StopDrainTimeout(handle, state, waited, timeout, apps):
            if apps is None:
                losing = "its executors are unknown (the worker cannot be read)"
            else:
                losing = f"{', '.join(apps)} lose executors" if apps else "no executors on it"
            return (f"stopping {handle}: {state.value} {waited:.0f} s, over drain_timeout "
                    f"{timeout:.0f} s; {losing}")
        case StopNeverRegistered(handle):
            return f"stopping {handle}: surplus, never registered"
        case RetireIdle(handle, idle_for):
            return f"retiring {handle}: surplus, idle {idle_for:.0f} s"
        case KeepForShuffle(handle):
            return f"keeping {handle}: idle, but {kept_words(item)}"
    raise TypeError(f"not a note or worker reason: {item!r}")


def apps_waiting(n: int) -> str:
    return {0: "no app waiting", 1: "1 app waiting"}.get(n, f"{n} apps waiting")


def saturated_words(note: SaturatedNote) -> str:
    """A saturation in words, without the word "saturated" (the decision log's action says it)."""
    waiting = apps_waiting(note.waiting)
    if note.waiting == 1:
        waiting += f", {note.oldest} for {note.longest_wait:.0f} s"
    elif note.waiting:
        waiting += f", the longest {note.oldest} for {note.longest_wait:.0f} s"
    return f"wanted {note.wanted} workers, max_workers {note.max_workers}: {waiting}"


def saturation(plan: Plan) -> SaturatedNote | None:
    """The plan's saturation note: None when the pool can grow to what is wanted, or is not seen."""
    return next((n for n in plan.notes if isinstance(n, SaturatedNote)), None)


def explain(plan: Plan) -> tuple[str, ...]:
    """The plan in words, one line per note and per worker, in the order it was decided:
    the target, the workers stopped, what limits scale-up or scale-down, the workers retired
    and those a due scale-down spared for their shuffle files."""
    target, *rest = plan.notes
    return (
        describe(target),
        *(describe(plan.why[h]) for h in plan.stop),
        *(describe(note) for note in rest),
        *(describe(plan.why[h]) for h in plan.retire),
        *(describe(plan.kept[h]) for h in plan.spared),
    )


# -- deciding -------------------------------------------------------------------


def demand(snapshot: Snapshot, settings: PolicySettings) -> Demand:
    """The target size of our pool and what it is made of."""
    counted = settings.count_foreign_workers
    busy = snapshot.count(WorkerState.BUSY, ours_only=not counted)
    waiting = sum(1 for app in snapshot.apps if app.cores == 0)
    idle, credit = settings.idle_workers, snapshot.prewarm_credit
    foreign = sum(1 for w in snapshot.workers if not w.ours and w.state in CAPACITY_STATES) if counted else 0
    wanted = busy + waiting + idle + credit - foreign
    target = min(max(wanted, settings.min_workers), settings.max_workers)
    return Demand(busy, waiting, idle, credit, foreign, wanted, target)


def _timed_out(ours: list[Worker], *, now: float, drain_timeout: float) -> dict[str, StopDrainTimeout]:
    """Our draining or held workers retiring for drain_timeout or longer (none when it is 0).
    Only those this scaler decommissioned: since when another one has been, nothing says."""
    if not drain_timeout:
        return {}
    why = {}
    for w in ours:
        since = w.backend.retiring_since
        if (w.state in (WorkerState.DRAINING, WorkerState.HELD) and since is not None
                and not w.backend.stopping and now - since >= drain_timeout):
            apps = None if w.executors is None else tuple(sorted({e.app_id for e in w.executors}))
            why[w.handle] = StopDrainTimeout(w.handle, w.state, now - since, drain_timeout, apps)
    return why


def oldest_waiting(snapshot: Snapshot) -> MasterApp | None:
    """The app that has waited longest with no cores at all (None: no app waits)."""
    return min((a for a in snapshot.apps if a.cores == 0), key=lambda a: (a.start_time, a.id), default=None)


def _saturated(snapshot: Snapshot, need: Demand, max_workers: int) -> SaturatedNote:
    oldest = oldest_waiting(snapshot)
    if oldest is None:
        return SaturatedNote(need.wanted, max_workers, 0, 0.0, "")
    longest = max(0.0, snapshot.taken_at - oldest.start_time / 1000)
    name = f"{oldest.id} of {oldest.user}" if oldest.user else oldest.id
    return SaturatedNote(need.wanted, max_workers, need.waiting, longest, name)


def _retire_order(workers: list[Worker], idle_since: Mapping[str, float]) -> list[Worker]:
    """Never-registered workers first (newest first), then the longest idle (the kept included)."""
    starting = sorted(
        (w for w in workers if w.state is WorkerState.STARTING), key=lambda w: -w.created_at
    )
    idle = sorted(
        (w for w in workers if w.state is WorkerState.IDLE),
        key=lambda w: (idle_since.get(w.handle, 0.0), w.created_at, w.handle),
    )
    return starting + idle


def _scale_up(need: Demand, *, capacity: int, ours: int, paused_for: float,
              settings: PolicySettings) -> tuple[int, Note]:
    """How many to start (target above capacity), and why that many. `ours`: our workers
    in every state, which all take room under max_workers."""
    room = settings.max_workers - ours
    start = max(0, min(need.target - capacity, settings.max_surge, room))
    if paused_for > 0:
        return 0, ScaleUpPausedNote(need.target - capacity, paused_for)
    if start:
        return start, StartingNote(start, capacity, need.target)
    return 0, AtMaxWorkersNote(settings.max_workers)


@dataclass(slots=True)
class _ScaleDown:
    stop: list[Worker]
    retire: list[Worker]
    why: dict[str, WorkerReason]
    notes: tuple[Note, ...]
    surplus_since: float
    due: bool  # the surplus has lasted scale_down_delay
    spared: tuple[str, ...] = ()  # kept workers that would have been retired


def _scale_down(ours: list[Worker], surplus: int, *, idle_since: Mapping[str, float],
                kept: Mapping[str, KeepForShuffle], history: History, now: float,
                settings: PolicySettings) -> _ScaleDown:
    """Which workers to remove (target below capacity), once the surplus has lasted."""
    surplus_since = history.surplus_since if history.surplus_since is not None else now
    waited = now - surplus_since
    if waited < settings.scale_down_delay:
        waiting = WaitingNote(surplus, waited, settings.scale_down_delay)
        return _ScaleDown([], [], {}, (waiting,), surplus_since, due=False)
    stop, retire, why = [], [], {}
    order = _retire_order(ours, idle_since)
    spared = tuple(w.handle for w in order[:surplus] if w.handle in kept)
    for w in [w for w in order if w.handle not in kept][:surplus]:
        if w.state is WorkerState.STARTING:
            stop.append(w)
            why[w.handle] = StopNeverRegistered(w.handle)
        else:
            retire.append(w)
            why[w.handle] = RetireIdle(w.handle, now - idle_since[w.handle])
    return _ScaleDown(stop, retire, why, (), surplus_since, due=True, spared=spared)


def plan(snapshot: Snapshot, settings: PolicySettings, history: History) -> Plan:
    """Decide what to do this cycle. Pure: same inputs, same Plan."""
    now = snapshot.taken_at
    need = demand(snapshot, settings)
    notes: list[Note] = [TargetNote(need, settings.min_workers, settings.max_workers)]
    if snapshot.blind:
        notes.append(BlindNote(snapshot.master_error or snapshot.backend_error))
        # what happened while blind is unknown: a surplus must last scale_down_delay again
        # once the pool is seen (after a master restart, users may be on their way back)
        return Plan(need, 0, (), (), tuple(notes), NO_REASONS, replace(history, surplus_since=None))

    ours = [w for w in snapshot.workers if w.ours]
    idle_since = MappingProxyType(
        {w.handle: history.idle_since.get(w.handle, now) for w in ours if w.state is WorkerState.IDLE}
    )
    stop = [w for w in ours if w.state in STOP_STATES and not w.backend.stopping]
    why: dict[str, WorkerReason] = {w.handle: StopForState(w.handle, w.state, w.why) for w in stop}
    timed_out = _timed_out(ours, now=now, drain_timeout=settings.drain_timeout)
    stop += [w for w in ours if w.handle in timed_out]
    why.update(timed_out)
    paused_until = history.scale_up_paused_until
    if any(w.state is WorkerState.UNSCHEDULABLE for w in stop):
        paused_until = now + settings.unschedulable_backoff

    capacity = sum(1 for w in ours if w.state in CAPACITY_STATES)
    start, retire, surplus_since, spared = 0, [], None, ()
    kept = keeps(snapshot, grace=settings.scale_down_delay)
    if need.target > capacity:
        start, note = _scale_up(need, capacity=capacity, ours=len(ours), paused_for=paused_until - now,
                                settings=settings)
        notes.append(note)
    elif need.target < capacity:
        down = _scale_down(ours, capacity - need.target, idle_since=idle_since, kept=kept,
                           history=history, now=now, settings=settings)
        stop += down.stop
        spared = down.spared
        retire = down.retire
        why.update(down.why)
        notes += down.notes
        # a surplus acted on (or workers stopped) waits afresh; one held back by kept workers goes on
        surplus_since = None if down.due and (retire or stop) else down.surplus_since
    if need.wanted > settings.max_workers:
        notes.append(_saturated(snapshot, need, settings.max_workers))

    return Plan(
        demand=need,
        start=start,
        retire=tuple(w.handle for w in retire),
        stop=tuple(w.handle for w in stop),
        notes=tuple(notes),
        why=MappingProxyType(why),
        history=History(surplus_since, idle_since, paused_until),
        kept=MappingProxyType(kept),
        spared=spared,
    )
