"""Simulated hub users: each starts a notebook server through the hub's REST API,
opens a notebook a little later and runs a real pyspark driver (session_driver.py)
with a few shuffle jobs, lingers, stops the server, and comes back later.

Every random draw comes from the user's own seeded generator, drawn in the same
order whatever the timing, so each strategy in a run sees the same users. Sessions
start at planned times (the previous session's planned start, plus a session
allowance, plus a think time), not a think time after the previous one ended, so
each strategy sees them start at the same moments, crowded alike, however fast it
served them: a session's first-executor time can be paired with the same session's
in another strategy. A session that overran its allowance and think time delays the
next one, which is recorded as `late`."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import signal
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from jhub_spark_scaler.driver_user import SUBMIT_OPTS, user_option
from tests.waiting import until

from .hub import Hub

log = logging.getLogger("soak")
DRIVER = Path(__file__).resolve().parent / "session_driver.py"


@dataclass
class Behaviour:
    think: float = 30.0  # mean seconds from a session's planned end (start + allowance) to the next
    session_allowance: float = 90.0  # seconds a session is planned to take (most take less)
    open_delay: tuple[float, float] = (3.0, 10.0)  # server ready -> the driver starts
    jobs: tuple[int, int] = (2, 4)
    job_think: float = 6.0  # mean seconds between jobs
    linger: tuple[float, float] = (2.0, 10.0)  # the driver ended -> the server is stopped
    cores_max: int = 2
    driver_timeout: float = 900.0


@dataclass
class Session:
    user: str
    n: int
    late: float = 0.0  # seconds the previous session made it start after that
    requested: float = 0.0  # wall time of the server request
    server_ready_s: float | None = None
    result: dict = field(default_factory=dict)  # session_driver.py's RESULT.json
    error: str = ""


def planned_sessions(rng: random.Random, behaviour: Behaviour) -> Iterator[tuple[float, dict]]:
    """A user's sessions: (seconds from the run's start, what the session does), drawn
    from `rng` alone, so the same for every strategy however long the sessions take."""
    b, offset = behaviour, 0.0
    while True:
        offset += min(rng.expovariate(1 / b.think), 4 * b.think)
        yield offset, {"open": rng.uniform(*b.open_delay), "jobs": rng.randint(*b.jobs),
                       "seed": rng.randrange(1 << 30), "linger": rng.uniform(*b.linger)}
        offset += b.session_allowance


def notebook_driver_env(user: str) -> dict[str, str]:
    """What `configure()` gives a notebook server of `user` for its Spark drivers, so the
    master reports each soak app under its hub user, as in a deployment."""
    return {SUBMIT_OPTS: user_option(user)}


class SimulatedUser:
    def __init__(self, name: str, *, hub: Hub, master_url: str, workdir: Path, seed: int,
                 behaviour: Behaviour, driver_env: dict | None = None):
        self.name, self.hub, self.master_url = name, hub, master_url
        self.workdir = Path(workdir) / name
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.rng = random.Random(seed)
        self.behaviour = behaviour
        self.driver_env = driver_env or {}
        self.sessions: list[Session] = []
        self.driver: asyncio.subprocess.Process | None = None

    async def run(self, started: float, deadline: float) -> None:
        """Sessions planned from `started` until `deadline` (monotonic); a session
        begun before the deadline is finished."""
        await self.hub.call("POST", f"users/{self.name}", {}, ok=(201, 409))
        for offset, plan in planned_sessions(self.rng, self.behaviour):
            at = started + offset
            if at >= deadline:
                return
            await asyncio.sleep(max(0.0, at - time.monotonic()))
            session = Session(self.name, len(self.sessions) + 1,
                              late=round(max(0.0, time.monotonic() - at), 1))
            self.sessions.append(session)
            try:
                await self._session(session, plan)
            except Exception as e:  # recorded, and the user goes on
                session.error = f"{type(e).__name__}: {e}"
                log.warning("soak: %s session %d: %s", self.name, session.n, session.error)
                await self._stop_server()

    async def _session(self, session: Session, plan: dict) -> None:
        session.requested = time.time()
        t0 = time.monotonic()
        await self.hub.call("POST", f"users/{self.name}/server", {}, ok=(201, 202))
        await until(self._server_ready, timeout=180, interval=0.5, what="the notebook server to be ready")
        session.server_ready_s = time.monotonic() - t0
        await asyncio.sleep(plan["open"])
        out = self.workdir / f"session-{session.n}.json"
        with open(self.workdir / f"session-{session.n}.log", "w") as driver_log:
            self.driver = await asyncio.create_subprocess_exec(
                sys.executable, str(DRIVER), "--master", self.master_url,
                "--name", f"{self.name}-{session.n}", "--out", str(out), "--jobs", str(plan["jobs"]),
                "--think", str(self.behaviour.job_think),
                "--seed", str(plan["seed"]), "--cores-max", str(self.behaviour.cores_max),
                stdout=driver_log, stderr=asyncio.subprocess.STDOUT, start_new_session=True,
                env={**os.environ, **self.driver_env},
            )
            try:
                code = await asyncio.wait_for(self.driver.wait(), self.behaviour.driver_timeout)
            finally:
                self.kill_driver()
        if code != 0 or not out.exists():
            raise RuntimeError(f"the driver exited with {code}; see {driver_log.name}")
        session.result = json.loads(out.read_text())
        await asyncio.sleep(plan["linger"])
        await self._stop_server()

    async def _server_ready(self) -> bool:
        user = await self.hub.call("GET", f"users/{self.name}")
        return bool(user["servers"].get("", {}).get("ready"))

    async def _stop_server(self) -> None:
        await self.hub.call("DELETE", f"users/{self.name}/server", ok=(202, 204, 400))

        async def gone():
            user = await self.hub.call("GET", f"users/{self.name}")
            return "" not in user["servers"]

        await until(gone, timeout=120, interval=0.5, what="the notebook server to stop")

    def kill_driver(self) -> None:
        if self.driver and self.driver.returncode is None:
            try:
                os.killpg(self.driver.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
