"""Immutable records the scaler observes and decides on.

Everything here is plain data: the Spark master's and workers' JSON parsed into
records (`spark.py` builds them), what a backend knows of its workers, and the
per-cycle `Snapshot` that joins the two (`observe.py` builds it). `policy.plan`
reads a Snapshot and nothing else.

Records made once per worker per cycle (`MasterWorker`, `BackendWorker`,
`Worker`) are NamedTuples: as immutable as frozen dataclasses, and about five
times cheaper to build, which matters at 10,000 workers a cycle.

Times are wall-clock seconds since the epoch (`clock.now()`), because some of
them (when a retirement began) are persisted by backends and must survive a
restart of the scaler.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import NamedTuple


class WorkerState(str, enum.Enum):
    """What a worker is doing, from the scaler's point of view."""

    STARTING = "starting"  # the backend has it; the master does not list it yet
    IDLE = "idle"  # ALIVE at the master, no cores used
    BUSY = "busy"  # ALIVE at the master, running executors
    DRAINING = "draining"  # decommissioned, executors still leaving
    HELD = "held"  # decommissioned, executors not leaving (app without decommission)
    DRAINED = "drained"  # decommissioned and its own /json/ lists no executors: stop it
    LOST = "lost"  # process/pod gone, or the master declared it DEAD
    UNSCHEDULABLE = "unschedulable"  # never registered within start_timeout, or no node for it


class NodeWait(str, enum.Enum):
    """Whether a worker waits for a node (`BackendWorker.node`): what the scheduler and a node
    autoscaler said of it."""

    NONE = ""  # placed, or nothing known
    UNPLACED = "unplaced"  # the scheduler cannot place it; no autoscaler said anything (yet)
    COMING = "coming"  # a node is being added for it (cluster-autoscaler: TriggeredScaleUp)
    ADDED = "added"  # placed on the node that was added for it (its image may still be pulled)
    NEVER = "never"  # still unplaced, and no node will be added for it (NotTriggerScaleUp)


#: States that give capacity to Spark apps now or soon.
CAPACITY_STATES = frozenset({WorkerState.STARTING, WorkerState.IDLE, WorkerState.BUSY})


class MasterWorker(NamedTuple):
    """One entry of the master's `/json/` `workers[]`."""

    id: str
    host: str
    port: int
    webui_address: str
    cores: int
    cores_used: int
    memory: int
    memory_used: int
    state: str  # ALIVE, DECOMMISSIONED, DEAD, UNKNOWN, ...
    last_heartbeat: int  # ms since the epoch


@dataclass(frozen=True, slots=True)
class MasterApp:
    """One entry of the master's `/json/` `activeapps[]`."""

    id: str
    name: str
    cores: int  # cores granted right now (0 while the app waits for a worker)
    state: str  # WAITING, RUNNING, ...
    user: str
    start_time: int  # ms since the epoch


class AppStart(NamedTuple):
    """An app's start, running or completed: when (epoch seconds), and the user the master
    reports for it (its driver JVM's `user.name`)."""

    at: float
    user: str


@dataclass(frozen=True, slots=True)
class MasterStatus:
    """The master's `/json/` answer."""

    url: str  # spark://host:port
    status: str  # ALIVE, STANDBY, RECOVERING, ...
    workers: tuple[MasterWorker, ...]
    apps: tuple[MasterApp, ...]
    completed_apps: tuple[AppStart, ...] = ()  # of `completedapps[]`

    @property
    def app_starts(self) -> tuple[AppStart, ...]:
        """Every app the master knows of, running or completed."""
        return (*(AppStart(a.start_time / 1000, a.user) for a in self.apps), *self.completed_apps)

    @property
    def ready(self) -> bool:
        return self.status == "ALIVE"


@dataclass(frozen=True, slots=True)
class Executor:
    """One entry of a worker's own `/json/` `executors[]`."""

    app_id: str
    executor_id: int
    app_name: str


@dataclass(frozen=True, slots=True)
class WorkerStatus:
    """A worker's own `/json/` answer: the truth about its executors."""

    id: str
    executors: tuple[Executor, ...]
    #: `finishedexecutors[]`: the last spark.worker.ui.retainedExecutors (1,000) that ended here
    finished: tuple[Executor, ...] = ()


class BackendWorker(NamedTuple):
    """What a backend knows of one worker it runs (a process or a pod)."""

    handle: str  # stable backend key: "local-3", a pod name
    host: str  # the address the worker binds to ("" while unknown, e.g. a pod without IP)
    created_at: float
    running: bool = True  # False once the process exited / the pod terminated
    port: int = 0  # the worker's RPC port, 0 where unknown
    webui_url: str = ""  # the worker's own UI, "" where unknown
    retiring_since: float | None = None  # when the scaler decommissioned it (persisted)
    problem: str = ""  # a backend-known reason it cannot start (image pull error, ...)
    stopping: bool = False  # already being stopped (a terminating pod): nothing more to do
    node: NodeWait = NodeWait.NONE  # what a node autoscaler said of it


class ShuffleRead(NamedTuple):
    """An idle worker's own /json/, read for the shuffle files it may hold."""

    read_at: float
    #: apps with an executor there, running or finished: their shuffle files stay until the app
    #: ends; None: the read failed
    apps: frozenset[str] | None
    error: str = ""  # why the read failed
    unread_since: float | None = None  # when its reads began to fail (None: the last one did not)


class Worker(NamedTuple):
    """One worker as this cycle sees it: backend and master joined."""

    handle: str  # the backend handle, or "master:<worker id>" for a foreign worker
    host: str
    state: WorkerState
    backend: BackendWorker | None  # None: registered at the master, not ours
    master: MasterWorker | None  # None: not (yet) registered
    executors: tuple[Executor, ...] | None = None  # read from the worker when needed
    why: str = ""  # a human-readable reason for the state, where it is not obvious
    executors_read_at: float | None = None  # when executors were read from the worker's own /json/

    @property
    def ours(self) -> bool:
        return self.backend is not None

    @property
    def waiting_for_node(self) -> bool:
        """Starting, its pod waiting for the node a node autoscaler is adding for it."""
        return self.state is WorkerState.STARTING and self.backend is not None and \
            self.backend.node is NodeWait.COMING

    @property
    def created_at(self) -> float:
        return self.backend.created_at if self.backend else 0.0


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Everything one cycle observed. `plan()` decides from this alone."""

    taken_at: float
    workers: tuple[Worker, ...]
    apps: tuple[MasterApp, ...]
    prewarm_credit: int = 0  # extra idle workers asked for by recently started servers
    master_error: str = ""  # non-empty: the master could not be read
    backend_error: str = ""  # non-empty: the backend could not be listed
    app_starts: tuple[AppStart, ...] = ()  # each app's start uses up one server's credit
    #: the workers run an external shuffle service: an idle one may serve a running app's shuffle files
    shuffle_service: bool = False
    #: with it, what our idle workers' own /json/ said of the apps that ran there, by handle
    shuffle_reads: Mapping[str, ShuffleRead] = field(default_factory=lambda: MappingProxyType({}))

    @property
    def blind(self) -> bool:
        """True when the scaler cannot see the whole pool and must not retire."""
        return bool(self.master_error or self.backend_error)

    def count(self, *states: WorkerState, ours_only: bool = True) -> int:
        return sum(1 for w in self.workers if w.state in states and (w.ours or not ours_only))
