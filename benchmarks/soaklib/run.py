"""One strategy's soak run on one environment: a fresh Spark master, a real hub,
simulated users for `minutes`, the pool sampled throughout, chaos if asked; then the
pool must settle with no orphan, and everything started is stopped."""

from __future__ import annotations

import asyncio
import logging
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.waiting import until

from .chaos import Chaos, schedule
from .cluster import SoakMaster, alive_hosts, sweep, worker_processes
from .hub import Hub
from .pool import PoolSampler
from .strategies import OriginalAutoscaler, StaticPool
from .users import Behaviour, SimulatedUser, notebook_driver_env
from .environments import WORKER_CORES

log = logging.getLogger("soak")
#: "reactive": the scaler without pre-warm (prewarm_workers_per_server=0): a worker is started
#: for a driver only once its app waits at the master, besides the idle worker
STRATEGIES = ("scaler", "static", "original", "reactive")
SCALERS = ("scaler", "reactive")  # the strategies that run the scaler service


@dataclass
class RunConfig:
    strategy: str
    minutes: float
    users: int
    seed: int = 1
    behaviour: Behaviour = field(default_factory=Behaviour)
    idle_workers: int = 1
    max_workers: int = 8
    scale_down_delay: float = 10.0
    static_size: int | None = None  # default: enough for every user's driver at once
    scaler_kills: int = 0  # > 0: chaos (also a master restart, a busy worker killed, an apiserver restart)
    hub_poll_interval: float = 10.0
    settle_timeout: float = 240.0
    spread_out: bool = False  # the master's spark.deploy.spreadOut
    #: the scaler's start_timeout; None: its default (a worker start delay needs more)
    start_timeout: float | None = None


@dataclass
class RunResult:
    strategy: str
    environment: str
    seconds: float
    sessions: list = field(default_factory=list)  # users.Session
    pool: object = None  # pool.PoolStats
    faults: list = field(default_factory=list)  # chaos.Fault
    settled: dict = field(default_factory=dict)
    baseline: dict = field(default_factory=dict)
    cpu_busy: float | None = None  # the machine's CPUs, busy share while the users ran


async def run_strategy(env, config: RunConfig, workdir: Path) -> RunResult:
    workdir = Path(workdir) / f"{env.name}-{config.strategy}"
    workdir.mkdir(parents=True, exist_ok=True)
    master = SoakMaster(workdir / "master", spread_out=config.spread_out)
    hub = baseline = strategy_task = None
    stop = asyncio.Event()
    await asyncio.to_thread(master.start)
    try:
        await env.prepare(master, config.strategy)
        scaler = None
        if config.strategy in SCALERS:
            scaler = _scaler_settings(env, master, config)
        hub = Hub(workdir / "hub", scaler=scaler, poll_interval=config.hub_poll_interval)
        await hub.start()
        sampler = PoolSampler(env.host_prefix, master.ui)
        if config.strategy == "static":
            size = config.static_size or config.users * config.behaviour.cores_max // WORKER_CORES
            baseline = StaticPool(await env.backend(master, config.strategy), size)
            strategy_task = asyncio.create_task(baseline.run(stop, ready_timeout=_ready_within(config)))

            def static_pool() -> bool:  # reads /proc and the master: in a thread
                return _members(env) >= size and _alive(master) >= size

            await until(lambda: asyncio.to_thread(static_pool), timeout=_ready_within(config), interval=0.5,
                        what="the static pool")
        else:
            if config.strategy == "original":
                backend = await env.backend(master, config.strategy)
                baseline = OriginalAutoscaler(backend, worker_cores=WORKER_CORES, extra=config.idle_workers,
                                              max_workers=config.max_workers)
                strategy_task = asyncio.create_task(baseline.run(stop))

            def at_rest() -> bool:
                return _alive(master) >= config.idle_workers

            await until(lambda: asyncio.to_thread(at_rest), timeout=_ready_within(config), interval=0.5,
                        what="the idle workers at rest")
        users = [SimulatedUser(f"user{i}", hub=hub, master_url=master.url, workdir=workdir / "users",
                               seed=config.seed * 1000 + i, behaviour=config.behaviour,
                               driver_env=notebook_driver_env(f"user{i}"))
                 for i in range(1, config.users + 1)]
        sampler_task = asyncio.create_task(sampler.run(stop))
        started, t0, cpu_at_start = time.monotonic(), time.time(), _cpu_times()
        deadline = started + config.minutes * 60
        chaos = chaos_task = None
        if config.scaler_kills and config.strategy in SCALERS:
            chaos = Chaos(hub=hub, master=master, env=env, sampler=sampler, token=hub.admin_token,
                          pool_url=f"http://127.0.0.1:{hub.scaler_port}/services/spark-scaler/api/pool")
            kinds = ["kill-scaler"] * config.scaler_kills + ["restart-master", "kill-busy-worker"]
            kinds += ["restart-apiserver"] if env.apiserver else []
            plan = schedule(random.Random(config.seed), duration=config.minutes * 60, kinds=kinds)
            chaos_task = asyncio.create_task(chaos.run(plan, started))
        try:
            await asyncio.gather(*(u.run(started, deadline) for u in users))
            if chaos_task:
                await chaos_task
        finally:
            for user in users:
                user.kill_driver()
            if chaos_task and not chaos_task.done():
                chaos_task.cancel()
        seconds = time.time() - t0
        stop.set()
        await sampler_task
        result = RunResult(config.strategy, env.name, seconds, [s for u in users for s in u.sessions],
                           sampler.stats, chaos.log.faults if chaos else [],
                           cpu_busy=_busy_share(cpu_at_start, _cpu_times()))
        if config.strategy in SCALERS:
            result.settled = await _settle(env, config)
        if isinstance(baseline, OriginalAutoscaler):
            result.baseline = {"starts": baseline.starts, "kills": baseline.kills}
        return result
    finally:
        stop.set()
        if strategy_task:
            strategy_task.cancel()
            await asyncio.gather(strategy_task, return_exceptions=True)
        if hub:
            await hub.stop()
        if baseline:
            await baseline.backend.shutdown()
        await env.cleanup(config.strategy)
        await asyncio.to_thread(master.kill)
        if left := sweep(workdir):
            log.warning("soak: killed %d process(es) left in %s", len(left), workdir)


def _ready_within(config: RunConfig) -> float:
    """Seconds for the pool to be ready before the users come: more when workers start late."""
    return max(300.0, 2 * (config.start_timeout or 0))


def _scaler_settings(env, master, config: RunConfig) -> dict:
    """configure()'s keyword arguments for the scaler strategies."""
    scaler = {"max_workers": config.max_workers, "idle_workers": config.idle_workers,
              "scale_down_delay": config.scale_down_delay, "poll_interval": 1,
              # the repository's root on PYTHONPATH (Hub.start): a benchmark backend by import path
              "pass_env": ["PYTHONPATH"], **env.scaler_flags(master, config.strategy)}
    if config.start_timeout is not None:
        scaler["start_timeout"] = config.start_timeout
    if config.strategy == "reactive":
        scaler["prewarm_workers_per_server"] = 0
    return scaler


async def _settle(env, config: RunConfig) -> dict:
    """After the users left: the pool shrinks to `idle_workers`, and no pod lacks its
    worker (nor, counted by the sampler, a worker its pod)."""
    # both are polled: a pod the scaler just deleted is listed until its worker has exited
    # (CI, 2026-11-26: a pod stopped a second before the check was still listed, its process gone)
    seen = {}

    async def settled() -> bool:
        seen["workers"] = await asyncio.to_thread(_members, env)
        seen["pods_without_worker"] = await env.leftovers(config.strategy)
        return seen["workers"] == config.idle_workers and not seen["pods_without_worker"]

    t0, error = time.monotonic(), ""
    try:
        await until(settled, timeout=config.settle_timeout, interval=0.5, what=(
            f"the pool to settle at {config.idle_workers} worker(s) with no pod lacking its worker"))
    except TimeoutError as e:
        error = str(e)
    return {"seconds": round(time.monotonic() - t0, 1), "error": error, **seen}


def _cpu_times() -> tuple[int, int]:
    """(busy, all) clock ticks of every CPU since boot, from /proc/stat (proc(5))."""
    with open("/proc/stat") as f:
        ticks = [int(x) for x in f.readline().split()[1:9]]  # user nice system idle iowait irq softirq steal
    return sum(ticks) - ticks[3] - ticks[4], sum(ticks)


def _busy_share(before: tuple[int, int], after: tuple[int, int]) -> float | None:
    return (after[0] - before[0]) / (after[1] - before[1]) if after[1] > before[1] else None


def _members(env) -> int:
    return len(worker_processes(env.host_prefix))


def _alive(master: SoakMaster) -> int:
    return len(alive_hosts(master.ui))
