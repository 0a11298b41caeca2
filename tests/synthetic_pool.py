"""A synthetic pool at fleet scale, built from the scaler's own model objects, for the admin
page's scale browser test and benchmark (tests/admin_harness.py serves it).

No Spark, no backend, no hub: `BackendWorker` and `MasterWorker` records (and a worker's own
`WorkerStatus` for the retiring ones) are made up from a seeded random generator and joined
by the scaler's own `observe.classify`, so every state and `why` is the one the scaler would
show; `policy.plan` plans on the result; the decision log holds `reconciler.Decision`s and the
hub's servers are `activity.Server`s. Sizes are parameters; the default mix follows a real
fleet: mostly busy and idle, 7 % draining, 2 % held, a few starting, lost and unschedulable.

`step(fraction)` changes about `fraction` of the workers (state or cores used), of the apps
(cores granted) and appends new decisions, as one refresh of a live pool would see it.
"""

from __future__ import annotations

import dataclasses
import random
import time
from collections.abc import Sequence

from jhub_spark_scaler.activity import Server
from jhub_spark_scaler import model
from jhub_spark_scaler.model import (
    BackendWorker,
    Executor,
    MasterApp,
    MasterWorker,
    Snapshot,
    Worker,
    WorkerState,
    WorkerStatus,
)
from jhub_spark_scaler.observe import ObserveSettings, classify
from jhub_spark_scaler.policy import History, Plan, PolicySettings, plan
from jhub_spark_scaler.reconciler import Action, Decision

#: fraction of the workers in each state; busy and idle share what is left (2:1)
MIX = {
    WorkerState.DRAINING: 0.07,
    WorkerState.HELD: 0.02,
    WorkerState.STARTING: 0.01,
    WorkerState.LOST: 0.005,
    WorkerState.UNSCHEDULABLE: 0.005,
    WorkerState.DRAINED: 0.002,
}
CORES = 4
MEMORY = 8192  # MiB
OBSERVE = ObserveSettings(start_timeout=300.0, node_wait_timeout=1200.0, held_after=600.0)
WAITING_APPS = 0.03  # of the apps, granted no cores yet


def policy_settings(workers: int) -> PolicySettings:
    """The pool's policy; drain_timeout (off) is set where the checkout under test has it."""
    values = {"max_workers": workers, "min_workers": 0, "idle_workers": 20, "max_surge": 10,
              "scale_down_delay": 300.0, "unschedulable_backoff": 60.0, "count_foreign_workers": False}
    if "drain_timeout" in {f.name for f in dataclasses.fields(PolicySettings)}:
        values["drain_timeout"] = 0.0
    return PolicySettings(**values)


def make_decision(*, seq: int, at: float, action: Action, detail: str, reasons: tuple[str, ...],
                  handles: tuple[str, ...]) -> Decision:
    """A Decision; `seq` is set where the Decision of the checkout under test has one."""
    values = {"at": at, "action": action, "detail": detail, "reasons": reasons, "handles": handles}
    if "seq" in {f.name for f in dataclasses.fields(Decision)}:
        values["seq"] = seq
    return Decision(**values)


class SyntheticPool:
    """The pool as the last cycle saw it: `snapshot`, `plan`, `decisions` (oldest first),
    `servers`; `policy` and `observe` are the settings it was classified and planned with."""

    def __init__(self, *, workers: int = 2000, apps: int = 1000, decisions: int = 1000,
                 servers: int = 500, seed: int = 1, now: float | None = None):
        self.random = random.Random(seed)
        self.now = time.time() if now is None else now
        self.policy = policy_settings(workers)
        self.observe = OBSERVE
        self.users = [f"user{i:04d}" for i in range(max(1, servers * 9 // 10))]
        self.servers = self._servers(servers)
        self.apps = [self._app(i) for i in range(apps)]
        self._backend: dict[str, BackendWorker] = {}
        self._master: dict[str, MasterWorker | None] = {}
        self._status: dict[str, WorkerStatus | None] = {}
        states = self._states(workers)
        for i, state in enumerate(states):
            self._make_worker(f"spark-worker-{i:05d}", i, state)
        self.seq = 0
        self.decisions: list[Decision] = []
        for i in range(decisions):
            self._add_decision(self.now - (decisions - i) * 7.0)
        self.history = History()
        self.snapshot: Snapshot
        self.plan: Plan
        self._observe()

    # -- building ---------------------------------------------------------------------

    def _states(self, n: int) -> list[WorkerState]:
        states = [state for state, share in MIX.items() for _ in range(round(n * share))]
        rest = n - len(states)
        states += [WorkerState.BUSY] * (rest * 2 // 3)
        states += [WorkerState.IDLE] * (n - len(states))
        self.random.shuffle(states)
        return states[:n]

    def _servers(self, n: int) -> tuple[Server, ...]:
        made: dict[tuple[str, str], Server] = {}
        for i in range(n):
            user = self.users[i % len(self.users)]
            name = "" if i < len(self.users) else f"gpu{i}"
            pending = "spawn" if self.random.random() < 0.02 else None
            started = self.now - self.random.uniform(30, 86400)
            made[(user, name)] = Server(user, name, started, pending, pending is None)
        return tuple(made[key] for key in sorted(made))

    def _app(self, i: int) -> MasterApp:
        start = self.now - self.random.uniform(5, 7200)
        waiting = self.random.random() < WAITING_APPS
        # a few apps of users without a server at the hub (spark-submit from elsewhere)
        user = self.random.choice(self.users) if self.random.random() < 0.95 else f"batch{i % 7}"
        return MasterApp(
            id=f"app-20261205{i // 100:04d}-{i:04d}", name=f"job {i} of {user}",
            cores=0 if waiting else self.random.choice((1, 2, 4, 8, 16)),
            state="WAITING" if waiting else "RUNNING", user=user, start_time=int(start * 1000),
        )

    def _executors(self, count: int) -> tuple[Executor, ...]:
        running = [a for a in self.apps if a.cores] or self.apps
        picked = self.random.sample(running, k=min(count, len(running)))
        return tuple(Executor(a.id, n, a.name) for n, a in enumerate(picked))

    def _make_worker(self, handle: str, i: int, state: WorkerState) -> None:
        host = f"10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}"
        age = self.random.uniform(120, 6 * 3600)
        backend = BackendWorker(handle, host, self.now - age, port=7078, webui_url=f"http://{host}:8081")
        master: MasterWorker | None = None
        status: WorkerStatus | None = None
        used = {WorkerState.BUSY: self.random.randint(1, CORES), WorkerState.IDLE: 0}.get(state, 0)
        if state in (WorkerState.BUSY, WorkerState.IDLE):
            master = self._master_entry(i, host, "ALIVE", used)
        elif state in (WorkerState.DRAINING, WorkerState.HELD, WorkerState.DRAINED):
            since = self.now - (self.random.uniform(700, 3000) if state is WorkerState.HELD
                                else self.random.uniform(5, 500))
            backend = backend._replace(retiring_since=since, created_at=min(backend.created_at, since - 60))
            held_cores = 0 if state is WorkerState.DRAINED else self.random.randint(1, CORES)
            master = self._master_entry(i, host, "DECOMMISSIONED", held_cores)
            executors = () if state is WorkerState.DRAINED else self._executors(self.random.randint(1, 2))
            status = WorkerStatus(f"worker-{i}", executors)
        elif state is WorkerState.STARTING:
            backend = backend._replace(created_at=self.now - self.random.uniform(1, 60))
        elif state is WorkerState.UNSCHEDULABLE:
            backend = backend._replace(problem="0/40 nodes are available: 40 Insufficient cpu")
        elif state is WorkerState.LOST:
            master = self._master_entry(i, host, "DEAD", 0)
        self._backend[handle], self._master[handle], self._status[handle] = backend, master, status

    def _master_entry(self, i: int, host: str, state: str, used: int) -> MasterWorker:
        return MasterWorker(
            id=f"worker-20261205-{host}-7078", host=host, port=7078, webui_address=f"http://{host}:8081",
            cores=CORES, cores_used=used, memory=MEMORY, memory_used=used * MEMORY // CORES,
            state=state, last_heartbeat=int(self.now * 1000),
        )

    def _add_decision(self, at: float) -> None:
        self.seq += 1
        handle = f"spark-worker-{self.random.randrange(max(1, len(self._backend) or 1)):05d}"
        action = self.random.choice((Action.START, Action.RETIRE, Action.RETIRE, Action.STOP))
        if action is Action.START:
            detail, reasons, handles = f"started {handle}", ("target 1200 = 1180 busy + 20 idle",), (handle,)
        elif action is Action.RETIRE:
            detail, reasons, handles = f"decommissioned {handle}", (f"{handle}: idle 300 s",), (handle,)
        else:
            detail, reasons, handles = f"stopped {handle}", (f"{handle}: drained",), (handle,)
        self.decisions.append(make_decision(seq=self.seq, at=at, action=action, detail=detail,
                                            reasons=reasons, handles=handles))

    def _observe(self) -> None:
        workers: list[Worker] = [
            classify(self._backend[h], self._master[h], self._status[h], self.now, self.observe)
            for h in self._backend
        ]
        credit = sum(1 for s in self.servers if s.started and self.now - s.started < 600)
        # the benchmark's "before" tree predates AppStart: there an app start is its time alone
        starts = tuple(model.AppStart(a.start_time / 1000, a.user) if hasattr(model, "AppStart")
                       else a.start_time / 1000 for a in self.apps)
        self.snapshot = Snapshot(taken_at=self.now, workers=tuple(workers), apps=tuple(self.apps),
                                 prewarm_credit=credit, app_starts=starts)
        self.plan = plan(self.snapshot, self.policy, self.history)
        self.history = self.plan.history

    # -- a refresh ----------------------------------------------------------------------

    def step(self, fraction: float, *, handles: Sequence[str] = (), now: float | None = None) -> list[str]:
        """Change about `fraction` of the workers (busy <-> idle, cores used), of the apps
        (cores) and add `fraction` of the decision log's size as new decisions; observe and
        plan again. `handles` (running workers) are among the workers changed. Returns the
        handles of the workers changed."""
        self.now = time.time() if now is None else max(now, self.now)
        running = [h for h, m in self._master.items()
                   if m is not None and m.state == "ALIVE" and self._backend[h].retiring_since is None]
        count = min(len(running), max(1, round(fraction * len(self._backend))))
        changed = [h for h in handles if h in running]
        others = [h for h in running if h not in changed]
        changed += self.random.sample(others, k=max(0, count - len(changed)))
        for handle in changed:
            m = self._master[handle]
            used = self.random.choice([u for u in range(CORES + 1) if u != m.cores_used])
            self._master[handle] = m._replace(cores_used=used, memory_used=used * MEMORY // CORES)
        for i in self.random.sample(range(len(self.apps)), k=max(1, round(fraction * len(self.apps)))):
            app = self.apps[i]
            cores = self.random.choice((1, 2, 4, 8, 16))
            self.apps[i] = dataclasses.replace(app, cores=cores, state="RUNNING")
        for _ in range(max(1, round(fraction * len(self.decisions)))):
            self._add_decision(self.now)
        self._observe()
        return changed
