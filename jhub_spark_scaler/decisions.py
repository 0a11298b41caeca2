"""The decision log's records: what one pass of the reconciler did, and why.

Plain data (`reconciler.py` makes them; the admin page, the metrics and the log read them).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from .model import Snapshot
from .policy import Plan


class Action(str, enum.Enum):
    """What a decision-log entry records. The values are what the page and the log show."""

    START = "start"
    RETIRE = "retire"
    STOP = "stop"
    #: a draining or held worker stopped anyway after drain_timeout: its apps lose executors
    DRAIN_TIMEOUT = "drain-timeout"
    REDECOMMISSION = "redecommission"  # a decommission resent; only its failures are recorded
    BLIND = "blind"
    SEEING = "seeing"
    SATURATED = "saturated"  # more workers wanted than max_workers allows
    UNSATURATED = "unsaturated"  # no longer
    #: a due scale-down spared an idle worker: it serves shuffle files of a running app
    KEEP = "keep"
    ERROR = "error"
    PAUSE = "pause"
    RESUME = "resume"
    IDLE_TARGET = "idle-target"

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True, slots=True)
class Decision:
    """One entry of the decision log: what was done (or seen), when and why."""

    at: float
    action: Action
    detail: str
    #: the plan's words for it: `explain(plan)` for a start, the handle's reason for the others
    reasons: tuple[str, ...] = ()
    handles: tuple[str, ...] = ()  # the workers it concerns
    #: its number in this process's log, from 1, never reused (the page keys its rows by it)
    seq: int = 0


@dataclass(frozen=True, slots=True)
class CycleReport:
    """What one pass saw, decided and did: for metrics and the pool history."""

    snapshot: Snapshot
    plan: Plan
    duration: float  # seconds
    decisions: tuple[Decision, ...]  # recorded during the pass
    started: tuple[str, ...] = ()  # handles of the workers started
    retired: tuple[str, ...] = ()  # handles decommissioned (resends not counted)
    stopped: tuple[str, ...] = ()  # handles stopped, drain_timeout's included
    errors: tuple[Decision, ...] = ()  # failed actions
