"""Pre-warm: how long a new user's driver waits for its first executor, three ways.

    python benchmarks/prewarm.py [--reps 3] [--server-ready-seconds 5] [--hook-events 20]
                                 [--worker-start-delay 60 [--seed 1]]

One Spark master (LocalBackend, free ports, a temporary state dir). Each timed run
is a fresh python subprocess, a new user's driver (benchmarks/prewarm_driver.py),
that takes the time just before `SparkSession.builder...getOrCreate()` and polls its
SparkContext every 20 ms until an executor's block manager is registered
(`getExecutorMemoryStatus().size() > 1`), prints JSON with the seconds, then stops.
The driver JVM's start is in every number.

  (a) pre-warm   a Reconciler (idle_workers=0) runs its loop (poll_interval 1 s); the
                 notebook server start is simulated by a pre-warm credit of 1 and a
                 cycle triggered at once (as the hub hook's event does); the driver
                 starts --server-ready-seconds later.
  (b) reactive   the same loop, no credit: the driver starts against an empty pool and
                 the scaler starts a worker when it sees the waiting app.
  (c) static     a worker started by the backend and ALIVE before the driver starts,
                 no scaler: the floor.

Modes take turns in each repetition (the order rotates between repetitions); between
runs the app must be gone and no worker ALIVE at the master (bounded polls of /json/).

Hook-to-start latency: a real HubService (events route, token) and a Reconciler in
this process; `Notifier.send` (the hub side) is fired N times, each for a new user
(so each adds 1 to the pre-warm credit and causes a start), and the time to
`backend.start` being entered is recorded (a spy that returns no workers, so no JVM
is spawned), with the time to `Reconciler.cycle` being entered alongside.

--worker-start-delay (60, uniform:30:90 or lognormal:MEDIAN:SIGMA; soak's
soaklib/start_delay.py) starts every worker JVM that long after `backend.start` (a
benchmark-only subclass of LocalBackend), as when a node is added and an image pulled;
a sampled delay is drawn per worker start, seeded by --seed. The scaler's start
timeout and every wait grow by the longest delay.

Writes the section "Pre-warm: time to first executor" of benchmarks/RESULTS.md (with a
worker start delay, a section of its own, named after the delay).
Every process it starts (master, workers, their executors, drivers and their JVMs)
is stopped at the end, also on failure or SIGTERM/Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import secrets
import signal
import statistics
import sys
import tempfile
import time
import types
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))
sys.path.insert(0, HERE)

from jhub_spark_scaler.app import SparkScalerApp  # noqa: E402
from jhub_spark_scaler.backends.local import LocalBackend  # noqa: E402
from jhub_spark_scaler.backends.processes import free_port  # noqa: E402
from jhub_spark_scaler.hub import Notifier  # noqa: E402
from jhub_spark_scaler.metrics import ScalerMetrics  # noqa: E402
from jhub_spark_scaler.reconciler import Reconciler  # noqa: E402
from jhub_spark_scaler.service import HubService  # noqa: E402
from jhub_spark_scaler.spark import SparkClient  # noqa: E402
from jhub_spark_scaler.web.history import PoolHistory  # noqa: E402
from results import machine, write_section  # noqa: E402
from soaklib.start_delay import LateStartLocalBackend, StartDelay  # noqa: E402
from tests.settings import AS_ROOT, DECISION_LOG_SIZE, HTTP_TIMEOUT, make_observe, make_policy  # noqa: E402
from tests.waiting import WaitTimeout, until  # noqa: E402

TITLE = "Pre-warm: time to first executor"
MODES = {"a": "(a) pre-warm", "b": "(b) reactive only", "c": "(c) static pool"}
POLL_INTERVAL = 1.0
DRIVER = os.path.join(HERE, "prewarm_driver.py")


def late(args) -> float:
    """The longest worker start delay (0 without one): every wait for a worker grows by it."""
    return args.start_delay.bound if args.start_delay else 0.0


def observe(args):
    """The Reconciler's observe settings: start_timeout above the longest start delay."""
    return make_observe(start_timeout=120.0 + late(args)) if args.start_delay else make_observe()


def quiet_logger(name: str) -> logging.Logger:
    log = logging.getLogger(name)
    log.addHandler(logging.NullHandler())
    log.propagate = False
    return log


def master_json(ui: str) -> dict:
    with urllib.request.urlopen(f"{ui}/json/", timeout=2) as r:
        return json.load(r)


async def master_until(ui: str, check, *, timeout: float, what: str, interval: float = 0.1):
    """Poll the master's /json/ (read in a thread; an OSError is "not yet") until
    `check(document)` is truthy, and return that."""
    async def checked():
        return check(await asyncio.to_thread(master_json, ui))

    return await until(checked, timeout=timeout, what=what, interval=interval, ignore=(OSError,))


def alive_workers(doc: dict) -> list[dict]:
    return [w for w in doc.get("workers", []) if w.get("state") in ("ALIVE", "DECOMMISSIONED")]


class Bench:
    def __init__(self, args, tmp: str):
        self.args, self.tmp = args, tmp
        self.log = quiet_logger("prewarm")
        self.backend: LocalBackend | None = None
        self.sessions: set[int] = set()  # pids we spawned in sessions of their own (sid == pid)
        self.drivers: set[asyncio.subprocess.Process] = set()
        self.start_calls: list[float] = []  # epoch seconds backend.start was entered
        self.driver_no = 0

    # -- setup and cleanup -----------------------------------------------------

    async def setup(self) -> None:
        settings = dict(**AS_ROOT, state_dir=os.path.join(self.tmp, "state"), master_port=0,
                        master_webui_port=0, stop_timeout=20, log=self.log, stop_on_exit=True)
        if self.args.start_delay:
            b = LateStartLocalBackend(**settings, start_delay=str(self.args.start_delay),
                                      start_delay_seed=self.args.seed)
        else:
            b = LocalBackend(**settings)
        spawn, start = b._spawn, b.start

        def spawn_spy(*a, **k):  # remember every daemon's pid: its session is swept at the end
            rec = spawn(*a, **k)
            self.sessions.add(rec["pid"])
            return rec

        async def start_spy(n):
            self.start_calls.append(time.time())
            return await start(n)

        b._spawn, b.start = spawn_spy, start_spy
        self.backend = b
        await b.setup()

    async def cleanup(self) -> list[str]:
        """Stop everything we started; return what had to be killed (should be nothing)."""
        problems = []
        for p in list(self.drivers):
            if p.returncode is None:
                problems.append(f"driver pid {p.pid} still running at the end: killed")
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGKILL)
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(p.wait(), 10)
        if self.backend is not None:
            try:
                await self.backend.shutdown()
            except Exception as e:
                problems.append(f"backend shutdown failed: {e!r}")
        problems += await self.sweep()
        return problems

    async def sweep(self) -> list[str]:
        """SIGKILL any process left in a session we created (executors, driver JVMs)."""
        problems = []
        for _ in range(2):
            left = []
            for entry in os.listdir("/proc"):
                if not entry.isdigit() or int(entry) == os.getpid():
                    continue
                try:
                    with open(f"/proc/{entry}/stat", "rb") as f:
                        fields = f.read().rsplit(b")", 1)[1].split()
                except OSError:
                    continue
                if int(fields[3]) in self.sessions and fields[0] not in (b"Z", b"X"):  # field 6: session
                    left.append(int(entry))
            for pid in left:
                problems.append(f"pid {pid} left in one of our sessions: killed")
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            if not left:
                break
            await asyncio.sleep(0.5)
        for pid in self.sessions:  # reap our direct children among them
            with contextlib.suppress(ChildProcessError, OSError):
                os.waitpid(pid, os.WNOHANG)
        return problems

    async def reset_pool(self) -> None:
        """The previous app gone, every worker stopped, none ALIVE at the master (bounded)."""
        ui = self.backend.master_ui_url
        await master_until(ui, lambda doc: not doc.get("activeapps"), timeout=60, what="the app to end")
        await asyncio.gather(*(self.backend.stop(w) for w in await self.backend.list()))
        await master_until(ui, lambda doc: not alive_workers(doc), timeout=60, what="no ALIVE worker")
        if await self.backend.list():
            raise RuntimeError("backend still lists workers after stopping them")

    # -- one driver --------------------------------------------------------------

    async def driver(self) -> dict:
        self.driver_no += 1
        log_path = os.path.join(self.tmp, f"driver-{self.driver_no}.log")
        with open(log_path, "wb") as log:
            p = await asyncio.create_subprocess_exec(
                sys.executable, DRIVER, self.backend.master_url, f"prewarm-user-{self.driver_no}",
                str(self.args.driver_timeout + late(self.args)), stdout=asyncio.subprocess.PIPE, stderr=log,
                stdin=asyncio.subprocess.DEVNULL, start_new_session=True,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        self.sessions.add(p.pid)
        self.drivers.add(p)
        try:
            out, _ = await asyncio.wait_for(p.communicate(), self.args.driver_timeout + late(self.args) + 60)
        except BaseException:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGKILL)
            await p.wait()
            raise
        finally:
            self.drivers.discard(p)
        lines = [ln for ln in out.decode(errors="replace").splitlines() if ln.startswith("RESULT ")]
        if p.returncode != 0 or not lines:
            with open(log_path, errors="replace") as f:
                tail = f.read()[-2000:]
            raise RuntimeError(f"driver exited {p.returncode}: {lines[-1] if lines else ''}\n{tail}")
        return json.loads(lines[-1][len("RESULT "):])

    # -- the modes -----------------------------------------------------------------

    def reconciler(self, credit: list[int]) -> Reconciler:
        return Reconciler(
            backend=self.backend,
            spark=SparkClient(self.backend.master_ui_url, timeout=HTTP_TIMEOUT),
            policy=make_policy(max_workers=self.args.max_workers, idle_workers=0, scale_down_delay=600),
            observe=observe(self.args),
            log=self.log,
            decision_log_size=DECISION_LOG_SIZE,
            prewarm_credit=lambda app_starts: credit[0],  # a fixed credit, whatever apps started
        )

    @contextlib.asynccontextmanager
    async def scaler(self, credit: list[int]):
        """A Reconciler cycling every POLL_INTERVAL in the background, stopped cleanly on exit."""
        r = self.reconciler(credit)
        stop = asyncio.Event()
        first = asyncio.Event()

        async def loop():
            while not stop.is_set():
                try:
                    await r.cycle()
                except Exception:
                    self.log.exception("cycle failed")
                first.set()
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(stop.wait(), POLL_INTERVAL)

        task = asyncio.create_task(loop())
        extra: list[asyncio.Task] = []
        try:
            await asyncio.wait_for(first.wait(), 30)
            yield r, extra
        finally:
            stop.set()
            for t in [task, *extra]:
                try:
                    await asyncio.wait_for(t, 60)
                except Exception:
                    self.log.exception("scaler task")

    async def alive_at(self) -> float:
        """When (epoch) a worker is first ALIVE at the master, polled every 50 ms."""
        await master_until(self.backend.master_ui_url, alive_workers,
                           timeout=120 + late(self.args), what="the pre-warmed worker", interval=0.05)
        return time.time()

    async def run_mode(self, mode: str) -> dict:
        self.start_calls.clear()
        row: dict = {"mode": mode}
        if mode == "c":
            def alive(doc):
                return any(x["host"] == w.host and x["port"] == w.port and x["state"] == "ALIVE"
                           for x in doc["workers"])

            [w] = await self.backend.start(1)
            t0 = time.time()
            await master_until(self.backend.master_ui_url, alive, timeout=120 + late(self.args),
                               interval=0.05, what="the static worker to be ALIVE")
            row["worker_alive_s"] = time.time() - t0
            row.update(await self.driver())
        else:
            credit = [0]
            async with self.scaler(credit) as (r, extra):
                if mode == "a":
                    t_event = time.time()
                    credit[0] = 1  # the notebook server started: its pre-warm credit ...
                    extra.append(asyncio.create_task(r.cycle()))  # ... and the event's cycle at once
                    watch = asyncio.create_task(self.alive_at())
                    extra.append(watch)
                    await asyncio.sleep(self.args.server_ready_seconds)  # deliberate: the server gets ready
                    row.update(await self.driver())
                    row["event_to_driver_s"] = row["wall0"] - t_event
                    row["start_call_s"] = (self.start_calls[0] - t_event) if self.start_calls else None
                    if watch.done() and not watch.exception():
                        row["worker_alive_s"] = watch.result() - t_event
                        row["worker_ready_before_driver"] = watch.result() <= row["wall0"]
                else:
                    row.update(await self.driver())
                    # when the scaler called start(), counted from the driver's t0
                    row["start_call_s"] = (self.start_calls[0] - row["wall0"]) if self.start_calls else None
                credit[0] = 0
        await self.reset_pool()
        return row

    # -- hook-to-start -----------------------------------------------------------------

    async def hook_latency(self, n: int) -> dict:
        log = quiet_logger("prewarm.hook")
        hb = LocalBackend(**AS_ROOT, state_dir=os.path.join(self.tmp, "hook-state"), start_master=False,
                          master_url=self.backend.master_url, master_ui_url=self.backend.master_ui_url,
                          log=log)
        await hb.setup()
        loop = asyncio.get_running_loop()
        waiting: dict = {}
        starts: list[float] = []
        cycles: list[float] = []

        async def start_spy(k: int):
            now = time.perf_counter()
            starts.append(now)
            fut = waiting.get("start")
            if fut is not None and not fut.done():
                fut.set_result(now)
            return []  # entered is what is timed: no JVM spawned, the pool stays empty

        hb.start = start_spy
        r = Reconciler(backend=hb, spark=SparkClient(self.backend.master_ui_url, timeout=HTTP_TIMEOUT),
                       policy=make_policy(max_workers=1000, max_surge=1000, idle_workers=0,
                                          scale_down_delay=600),
                       observe=observe(self.args), log=log, decision_log_size=DECISION_LOG_SIZE)
        cycle = r.cycle

        async def cycle_spy():
            now = time.perf_counter()
            cycles.append(now)
            fut = waiting.get("cycle")
            if fut is not None and not fut.done():
                fut.set_result(now)
            return await cycle()

        r.cycle = cycle_spy
        app = SparkScalerApp()  # its reconcile_soon is what the service calls on an event
        app.log = log
        app.reconciler = r
        token = secrets.token_hex(32)
        port, dead = free_port("127.0.0.1"), free_port("127.0.0.1")
        service = HubService(
            api_url=f"http://127.0.0.1:{dead}/hub/api",  # no hub: its poll fails quietly, events still apply
            api_token=token, events_secret=token, service_url=f"http://127.0.0.1:{port}",
            prefix="/services/spark-scaler/",
            poll_interval=3600, stale_after=3600, prewarm_window=600, prewarm_per_server=1,
            prewarm_profiles=(), prewarm_history=0, history_store=None,
            on_change=app.reconcile_soon, log=log,
            metrics=ScalerMetrics(), pool_history=PoolHistory(interval=POLL_INTERVAL),
            cycle_interval=POLL_INTERVAL, authenticate_prometheus=True,
        )
        r.prewarm_credit = service.credit
        notifier = Notifier(name="spark-scaler", url=f"http://127.0.0.1:{port}", token=token)
        to_start, to_cycle = [], []
        await service.start()
        try:
            for i in range(n + 1):  # the first is a warm-up, not counted
                spawner = types.SimpleNamespace(
                    name="", user=types.SimpleNamespace(name=f"hook-user-{i}", settings={"base_url": "/"}))
                waiting["start"], waiting["cycle"] = loop.create_future(), loop.create_future()
                t0 = time.perf_counter()
                notifier.send("start", spawner)
                t_start = await asyncio.wait_for(waiting["start"], 10)
                t_cycle = await asyncio.wait_for(waiting["cycle"], 1)
                if i:
                    to_start.append((t_start - t0) * 1000)
                    to_cycle.append((t_cycle - t0) * 1000)
                if notifier.pending:
                    await asyncio.wait(notifier.pending, timeout=5)
                with contextlib.suppress(WaitTimeout):
                    await until(lambda: not r._lock.locked(), timeout=10, interval=0.005,
                                what="the cycle's end")
            credit = service.credit()
        finally:
            service.stop()
            await hb.shutdown()
        return {"to_start": to_start, "to_cycle": to_cycle, "credit_after": credit}


# -- report ------------------------------------------------------------------------------


def stats(xs: list[float]) -> tuple[float, float, float]:
    return statistics.median(xs), min(xs), max(xs)


def report(args, rows: list[dict], hook: dict | None, notes: list[str], complete: bool,
           env: str) -> list[str]:
    by = {m: [r for r in rows if r["mode"] == m and "first_executor_s" in r] for m in MODES}
    lines = [
        f"`python benchmarks/prewarm.py --reps {args.reps} --server-ready-seconds "
        f"{args.server_ready_seconds}{delay_flags(args)}` on {machine()}. {env}",
        "",
        "Each run is a new user's driver, a fresh python subprocess: the clock starts just before "
        "`SparkSession.builder...getOrCreate()` and stops when the driver's SparkContext lists an "
        "executor's block manager (polled every 20 ms), so the driver's own JVM start "
        "(spark-submit, SparkContext) is included in all three modes. (a) pre-warm: a Reconciler "
        "with `idle_workers=0` cycles every 1 s; the notebook server start is simulated by a "
        "pre-warm credit of 1 and a cycle triggered at once, and the driver starts "
        f"{args.server_ready_seconds:g} s later (the server getting ready). (b) reactive only: the "
        "same loop, no credit: the scaler starts a worker once it sees the app waiting. (c) static "
        "pool: a worker started and ALIVE before the driver, no scaler. "
        f"`max_workers={args.max_workers}` (in (a) the credit would otherwise start a second worker "
        "once the first is taken, a JVM competing for the 2 CPUs with the executor being timed). "
        "Modes take turns in each repetition (order rotated); before each run the previous app "
        "is gone and no worker is ALIVE at the master. One untimed static run first (page cache, "
        "and the worker AppCDS archive that all timed workers start from).",
        "",
        "| mode | runs | median s | min s | max s | driver session up (median s) "
        "| executor after session (median s) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    med = {}
    for m, name in MODES.items():
        xs = [r["first_executor_s"] for r in by[m]]
        if not xs:
            lines.append(f"| {name} | 0 | – | – | – | – | – |")
            continue
        md, lo, hi = stats(xs)
        med[m] = md
        sess = statistics.median(r["session_s"] for r in by[m])
        after = statistics.median(r["first_executor_s"] - r["session_s"] for r in by[m])
        lines.append(f"| {name} | {len(xs)} | {md:.2f} | {lo:.2f} | {hi:.2f} | {sess:.2f} | {after:.2f} |")
    lines.append("")
    verdict = []
    if "a" in med and "b" in med:
        ratio = med["b"] / med["a"]
        ok = ratio >= 2
        verdict.append(f"(b)/(a) = {ratio:.2f} (target >= 2: {'met' if ok else 'NOT met'})")
    if "a" in med and "c" in med:
        ratio = med["a"] / med["c"]
        ok = ratio <= 1.10
        verdict.append(f"(a)/(c) = {ratio:.2f} (target <= 1.10: {'met' if ok else 'NOT met'})")
    if verdict:
        lines.append("Ratios of the medians: " + "; ".join(verdict) + ".")
        lines.append("")
    extra = []
    a_rows, b_rows = by["a"], by["b"]
    if a_rows:
        calls = [r["start_call_s"] * 1000 for r in a_rows if r.get("start_call_s") is not None]
        ready = sum(1 for r in a_rows if r.get("worker_ready_before_driver"))
        alive = [r["worker_alive_s"] for r in a_rows if r.get("worker_alive_s") is not None]
        if calls and alive:
            extra.append(f"in (a) `backend.start` was entered a median {statistics.median(calls):.0f} ms "
                         f"after the simulated server start, the worker was ALIVE at the master a median "
                         f"{statistics.median(alive):.2f} s after it, so before the driver started in "
                         f"{ready} of {len(a_rows)} runs")
    if b_rows:
        calls = [r["start_call_s"] for r in b_rows if r.get("start_call_s") is not None]
        if calls:
            extra.append(f"in (b) the scaler entered `backend.start` a median "
                         f"{statistics.median(calls):.2f} s "
                         "after the driver's clock started (session up, app registered, next 1 s tick)")
    if extra:
        lines += ["Breakdown: " + "; ".join(extra) + ".", ""]
    if "a" in med and "b" in med and "c" in med:
        sess = statistics.median(r["session_s"] for m in MODES for r in by[m])
        why = []
        if med["b"] / med["a"] < 2:
            sess_a = statistics.median(r["session_s"] for r in by["a"])
            why.append(
                f"(a) cannot be 2x faster than (b) here because the driver's own start (JVM, "
                f"SparkContext, registering with the master) dominates: `getOrCreate()` takes a median "
                f"{sess:.2f} s in every mode, and in (a) and (c) the executor is already registered "
                f"when it returns, so (a) sits at that floor ({sess_a:.2f} s) and (b)/(a) can be at "
                f"most (b)/{sess_a:.2f} s. Pre-warming removes only the worker start and the "
                f"scaler's reaction, {med['b'] - med['a']:.2f} s of (b)'s {med['b']:.2f} s, and even "
                f"that is partly hidden in (b): the app registers with the master (and the scaler "
                f"starts a worker) well before `getOrCreate()` returns, so the worker starts while "
                f"the driver is still initialising")
        if med["a"] / med["c"] > 1.10:
            why.append("(a) is more than 10 % slower than (c): see the breakdown (was the pre-warmed "
                       "worker ALIVE before the driver started?)")
        if why:
            lines += ["Why not: " + "; ".join(why) + ".", ""]
    if hook:
        s, c = hook["to_start"], hook["to_cycle"]
        if s:
            md, lo, hi = stats(s)
            cm, _, cx = stats(c)
            lines += [
                f"Hook-to-start latency: a real `HubService` (events route, token) and a `Reconciler` "
                f"in this process on a free port; the service's `on_event` calls "
                f"`SparkScalerApp.reconcile_soon`. From `Notifier.send(\"start\", ...)` (hub side) to "
                f"`LocalBackend.start` being entered (a spy that starts no JVM), {len(s)} events each for "
                f"a new user (each adds 1 to the credit, so each causes a start), after one warm-up "
                f"event: median {md:.1f} ms, min {lo:.1f} ms, max {hi:.1f} ms (target <= 100 ms: "
                f"{'met' if hi <= 100 else ('median met, max NOT met' if md <= 100 else 'NOT met')}). "
                f"To `Reconciler.cycle` being entered: median {cm:.1f} ms, max {cx:.1f} ms; the rest is "
                "the cycle's observe (the master's /json/, the backend's list) and plan.",
                "",
            ]
    if not complete or notes:
        lines += ["**Partial or with problems:** " + " ".join(notes or ["run did not complete"]), ""]
    lines.append("Raw runs (seconds): " + ", ".join(
        f"{r['mode']}={r['first_executor_s']:.2f}" if "first_executor_s" in r else f"{r['mode']}=failed"
        for r in rows) + ".")
    return lines


def delay_flags(args) -> str:
    return f" --worker-start-delay {args.start_delay} --seed {args.seed}" if args.start_delay else ""


def title(args) -> str:
    """The RESULTS.md section: a run with a worker start delay does not replace one without."""
    return f"{TITLE}, workers starting {args.start_delay} s late" if args.start_delay else TITLE


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=3, help="repetitions of each mode (default 3)")
    parser.add_argument("--server-ready-seconds", type=float, default=5.0,
                        help="seconds from the notebook server start to the driver start in (a) (default 5)")
    parser.add_argument("--hook-events", type=int, default=20, help="hook events timed (default 20)")
    parser.add_argument("--max-workers", type=int, default=1, help="the scaler's max_workers (default 1)")
    parser.add_argument("--driver-timeout", type=float, default=180,
                        help="seconds a driver may wait (plus the longest worker start delay)")
    parser.add_argument("--max-minutes", type=float, default=25,
                        help="start no new repetition after this long (results then labelled partial)")
    parser.add_argument("--worker-start-delay", default="",
                        help="seconds before a worker JVM starts: 60, uniform:LOW:HIGH or "
                             "lognormal:MEDIAN:SIGMA (default none)")
    parser.add_argument("--seed", type=int, default=1, help="seeds a sampled --worker-start-delay")
    args = parser.parse_args(argv)
    try:
        args.start_delay = StartDelay.parse(args.worker_start_delay) if args.worker_start_delay else None
    except ValueError as e:
        parser.error(str(e))
    return args


def environment() -> str:
    others = 0
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    if os.path.basename(f.read().split(b"\0")[0]) == b"java":
                        others += 1
    load = os.getloadavg()[0]
    return (f"At the start: load average {load:.2f}, {others} other java process(es) running "
            "(not started by this benchmark).")


async def main(args) -> int:
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, task.cancel)
    began = time.monotonic()
    env = environment()
    print(env, flush=True)
    rows: list[dict] = []
    hook = None
    notes: list[str] = []
    complete = False
    with tempfile.TemporaryDirectory(prefix="prewarm-") as tmp:
        bench = Bench(args, tmp)
        try:
            await bench.setup()
            print(f"master {bench.backend.master_url}, UI {bench.backend.master_ui_url}", flush=True)
            try:
                hook = await bench.hook_latency(args.hook_events)
                print(f"hook-to-start ms: median {statistics.median(hook['to_start']):.1f}, "
                      f"max {max(hook['to_start']):.1f}; to cycle median "
                      f"{statistics.median(hook['to_cycle']):.1f}", flush=True)
            except Exception as e:
                notes.append(f"hook latency failed: {e!r}.")
                print(notes[-1], flush=True)
            warm = await bench.run_mode("c")
            print(f"warm-up (untimed) static run: {warm.get('first_executor_s', 0):.2f} s", flush=True)
            order = list(MODES)
            for rep in range(args.reps):
                if time.monotonic() - began > args.max_minutes * 60:
                    notes.append(f"stopped after {rep} of {args.reps} repetitions (--max-minutes "
                                 f"{args.max_minutes}).")
                    break
                for m in order[rep % 3:] + order[:rep % 3]:
                    try:
                        row = await bench.run_mode(m)
                    except (Exception, asyncio.TimeoutError) as e:
                        row = {"mode": m, "error": repr(e)[:300]}
                        notes.append(f"rep {rep + 1} mode {m} failed: {row['error']}.")
                        with contextlib.suppress(Exception):
                            await bench.reset_pool()
                    rows.append(row)
                    print(f"rep {rep + 1} {MODES[m]}: " + json.dumps(
                        {k: (round(v, 3) if isinstance(v, float) else v) for k, v in row.items()}),
                        flush=True)
            else:
                complete = True
        except asyncio.CancelledError:
            notes.append("interrupted (signal).")
        except Exception as e:
            notes.append(f"aborted: {e!r}"[:500])
            print(notes[-1], flush=True)
        finally:
            problems = await bench.cleanup()
            if notes:  # keep the logs (master, workers, drivers) for a look
                import shutil
                keep = tempfile.mkdtemp(prefix="prewarm-logs-")
                with contextlib.suppress(OSError):
                    shutil.copytree(os.path.join(tmp, "state", "logs"), os.path.join(keep, "state-logs"))
                for name in os.listdir(tmp):
                    if name.endswith(".log"):
                        shutil.copy(os.path.join(tmp, name), keep)
                print(f"logs kept in {keep}", flush=True)
            if problems:
                notes.append("Cleanup: " + "; ".join(problems) + ".")
                print(notes[-1], flush=True)
    env += " At the end: " + environment().removeprefix("At the start: ")
    if rows or hook:
        lines = report(args, rows, hook, notes, complete and not any("failed" in n for n in notes), env)
        print("\n".join(lines))
        write_section(title(args), lines)
    return 0 if complete and not notes else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main(parse_args())))
