"""One active scaler per local state_dir: real `jhub-spark-scaler` processes on one pool,
workers on the session's real Spark master.

A second scaler on the same state_dir exits with one line naming the first's pid, or
with --standby waits, touching nothing, and takes over when the active one dies: it
finishes the drain the dead one had begun. The pool never exceeds max_workers.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from jhub_spark_scaler.backends.state_lock import RETRY
from jhub_spark_scaler.spark import SparkClient

from .scaler_process import ScalerProcess
from .settings import AS_ROOT_FLAG, HTTP_TIMEOUT
from .test_cli import alive, worker_pids
from .waiting import always, until

pytestmark = pytest.mark.spark

SCALER = [sys.executable, "-m", "jhub_spark_scaler", AS_ROOT_FLAG]
MAX_WORKERS = 2


class Command(ScalerProcess):
    """A scaler process on `state_dir`, its workers joining the session's master."""

    def __init__(self, spark_master, state_dir: Path, log: Path, *args: str):
        super().__init__(
            [*SCALER, f"--max-workers={MAX_WORKERS}", "--LocalBackend.start_master=False",
             f"--LocalBackend.master_url={spark_master.master_url}",
             f"--LocalBackend.master_ui_url={spark_master.master_ui_url}",
             f"--state-dir={state_dir}", "--LocalBackend.stop_timeout=5", *args],
            log,
        )


class PoolWatch:
    """Samples the state dir's worker records every 0.05 s: the most there ever were."""

    def __init__(self, state_dir: Path):
        self.state_dir, self.most = state_dir, 0
        self.task = asyncio.ensure_future(self._watch())

    async def _watch(self) -> None:
        while True:
            self.most = max(self.most, len(list(self.state_dir.glob("workers/*.json"))))
            await asyncio.sleep(0.05)

    async def close(self) -> None:
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)


def took_over_in(seconds: float) -> None:
    """The kernel drops a dead holder's lock at once; the standby tries every RETRY s (plus
    1 s for the test's polling and a loaded machine)."""
    print(f"took over after {seconds:.2f} s")  # shown with pytest -s
    assert seconds <= RETRY + 1, f"took over after {seconds:.2f} s"


def acts(log: str) -> list[str]:
    """The decisions a scaler's log shows it carried out."""
    return [line for line in log.splitlines() if any(f" {a}: " in line for a in ("start", "retire", "stop"))]


async def end_all(watch: PoolWatch, commands: list[Command], state: Path) -> None:
    """A test's teardown: the watch, the scalers, then any worker they left."""
    await watch.close()
    for command in commands:
        command.stop(signal.SIGKILL)
    for pid in worker_pids(state).values():
        if alive(pid):
            os.kill(pid, signal.SIGKILL)


async def test_one_active_scaler_per_state_dir_and_the_standby_finishes_the_drain(spark_master, tmp_path):
    state = tmp_path / "state"
    master = SparkClient(spark_master.master_ui_url, timeout=HTTP_TIMEOUT)
    commands: list[Command] = []
    watch = PoolWatch(state)

    def start(name: str, *args: str) -> Command:
        commands.append(Command(spark_master, state, tmp_path / f"{name}.log", *args))
        return commands[-1]

    async def our_states() -> list[str]:
        hosts = set(worker_pids(state))
        workers = (await master.master()).workers
        return sorted(m.state for m in workers if m.host in hosts and m.state != "DEAD")

    try:
        first = start("first", "--idle-workers=2", "--poll-interval=0.5")
        await until(lambda: _equal(our_states, ["ALIVE", "ALIVE"]), timeout=90, what="2 ALIVE workers",
                    process=first.process, log=first.log_path)
        pids = worker_pids(state)

        # a second scaler on the same state_dir: one line naming the first, exit 2, nothing touched
        refused = subprocess.run(
            [*SCALER, f"--max-workers={MAX_WORKERS}", "--LocalBackend.start_master=False",
             f"--LocalBackend.master_url={spark_master.master_url}",
             f"--LocalBackend.master_ui_url={spark_master.master_ui_url}", f"--state-dir={state}",
             "--idle-workers=0", "--scale-down-delay=0"],
            capture_output=True, text=True, timeout=60,
        )
        assert refused.returncode == 2, refused.stderr
        assert refused.stderr.splitlines() == [
            f"jhub-spark-scaler: error: another jhub-spark-scaler (pid {first.pid}) is the active scaler "
            f"of LocalBackend.state_dir {state}: stop it, or start this one with --standby to take over "
            "when it exits"]

        # with --standby it waits; it would retire both workers, and does not while the first lives.
        # Once active it retires both at its first cycle, then sleeps a minute: killed mid-drain.
        standby = start("standby", "--standby", "--idle-workers=0", "--scale-down-delay=0",
                        "--poll-interval=60")
        await standby.logged(f"standing by: jhub-spark-scaler pid {first.pid} is the active", timeout=30)
        await always(lambda: worker_pids(state) == pids and all(alive(p) for p in pids.values())
                     and not acts(standby.text()), seconds=3, what="the standby touches nothing")
        assert (state / "scaler.lock").read_text() == f"{first.pid}\n"

        killed = time.monotonic()
        first.stop(signal.SIGKILL)
        took_over_in(await standby.logged("now the active scaler of", timeout=10) - killed)
        await until(lambda: _equal(our_states, ["DECOMMISSIONED", "DECOMMISSIONED"]), timeout=60,
                    what="the new active scaler to decommission both workers", process=standby.process,
                    log=standby.log_path)

        third = start("third", "--standby", "--idle-workers=0", "--poll-interval=0.5")
        await third.logged(f"standing by: jhub-spark-scaler pid {standby.pid} is the active", timeout=30)
        killed = time.monotonic()
        standby.stop(signal.SIGKILL)
        assert worker_pids(state) == pids and all(alive(p) for p in pids.values()), "still draining"
        took_over_in(await third.logged("now the active scaler of", timeout=10) - killed)
        await until(lambda: not worker_pids(state) and not any(alive(p) for p in pids.values()),
                    timeout=60, what="the standby to take over and stop the drained workers",
                    process=third.process, log=third.log_path)
        log = third.text()
        assert log.count(" stop: ") == 2 and " start: " not in log and " retire: " not in log, acts(log)
        assert sum(" retire: " in line for line in acts(standby.text())) == 2
        assert " stop: " not in standby.text()

        # a standby stopped while it waits exits at once, having adopted nothing
        fourth = start("fourth", "--standby", "--idle-workers=1", "--poll-interval=0.5")
        await fourth.logged(f"standing by: jhub-spark-scaler pid {third.pid}", timeout=30)
        assert fourth.stop(signal.SIGTERM) == 0
        assert "adopted" not in fourth.text() and not acts(fourth.text())
        assert third.stop(signal.SIGTERM) == 0
        assert watch.most <= MAX_WORKERS, f"{watch.most} workers at once"
    finally:
        await end_all(watch, commands, state)


async def test_two_standbys_race_for_a_free_pool_and_one_wins(spark_master, tmp_path):
    """Both started with --standby at once on an empty state_dir: one acts, the other waits;
    the pool stays within max_workers although both would start max_workers."""
    state = tmp_path / "state"
    watch = PoolWatch(state)
    commands = []
    try:
        for name in ("a", "b"):
            commands.append(Command(spark_master, state, tmp_path / f"{name}.log", "--standby",
                                    f"--idle-workers={MAX_WORKERS}", "--poll-interval=0.3"))
        await until(lambda: len(worker_pids(state)) == MAX_WORKERS, timeout=60, what="the pool started")
        await always(lambda: len(worker_pids(state)) == MAX_WORKERS, seconds=3, what="no more workers")
        waiting = [c for c in commands if "standing by:" in c.text()]
        acting = [c for c in commands if acts(c.text())]
        assert len(waiting) == 1 and len(acting) == 1 and waiting != acting
        assert f"pid {acting[0].pid} is the active scaler" in waiting[0].text()
        assert watch.most == MAX_WORKERS
    finally:
        await end_all(watch, commands, state)


async def _equal(read, expected) -> bool:
    try:
        return await read() == expected
    except Exception:  # the master's JSON between two states
        return False
