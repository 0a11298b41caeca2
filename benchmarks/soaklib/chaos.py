"""Faults injected into the scaler's run of the soak, each followed by a bounded wait
for the scaler to converge again: SIGKILL of the scaler (the hub restarts it), a
restart of the Spark master, a restart of the kube-apiserver, and a busy worker
SIGKILLed behind the scaler's back. Losses on the killed worker are the test's own."""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import random
import time
from dataclasses import dataclass, field

from tornado.httpclient import AsyncHTTPClient, HTTPClientError

from tests.waiting import until

from .cluster import kill_quietly, service_pids

#: while a fault lasts the hub or the scaler may not answer: that is "not yet"
_until = functools.partial(until, interval=0.5, ignore=(OSError, HTTPClientError))

log = logging.getLogger("soak")


@dataclass
class Fault:
    kind: str  # "kill-scaler", "restart-master", "restart-apiserver", "kill-busy-worker"
    at: float  # wall time injected
    detail: str = ""
    blind_until: float | None = None  # wall time the master/apiserver was back
    converged_s: float | None = None  # injection -> the scaler healthy with nothing to start
    error: str = ""


@dataclass
class ChaosLog:
    faults: list[Fault] = field(default_factory=list)


def schedule(rng: random.Random, *, duration: float, kinds: list[str],
             margin: float = 45.0) -> list[tuple[float, str]]:
    """The faults at evenly spread offsets (seconds into the run) with jitter, in random order."""
    kinds = list(kinds)
    rng.shuffle(kinds)
    span = max(duration - 2 * margin, 1.0) / len(kinds)
    return [(margin + span * (i + rng.uniform(0.2, 0.8)), kind) for i, kind in enumerate(kinds)]


class Chaos:
    def __init__(self, *, hub, master, env, sampler, pool_url: str, token: str,
                 converge_timeout: float = 180):
        self.hub, self.master, self.env, self.sampler = hub, master, env, sampler
        self.pool_url, self.token, self.converge_timeout = pool_url, token, converge_timeout
        self.log = ChaosLog()
        self._client = AsyncHTTPClient(force_instance=True)

    async def run(self, plan: list[tuple[float, str]], started: float) -> None:
        try:
            for offset, kind in plan:
                await asyncio.sleep(max(0.0, started + offset - time.monotonic()))
                fault = Fault(kind, time.time())
                self.log.faults.append(fault)
                t0 = time.monotonic()
                try:
                    await getattr(self, kind.replace("-", "_"))(fault)
                    await self.converged(t0)
                    fault.converged_s = round(time.monotonic() - t0, 1)
                except Exception as e:
                    fault.error = f"{type(e).__name__}: {e}"
                log.info("soak chaos: %s %s, converged after %s s %s", kind, fault.detail, fault.converged_s,
                         fault.error)
        finally:
            self._client.close()

    async def kill_scaler(self, fault: Fault) -> None:
        pids = service_pids(self.hub.process.pid)
        for pid in pids:
            kill_quietly(pid)
        fault.detail = ",".join(map(str, pids)) or "no scaler process"

        async def restarted():
            return [p for p in service_pids(self.hub.process.pid) if p not in pids]

        await _until(restarted, timeout=120, what="the hub to restart the scaler")

    async def restart_master(self, fault: Fault) -> None:
        await asyncio.to_thread(self.master.kill)
        await asyncio.sleep(5)  # long enough for several of the scaler's cycles to see it gone
        await asyncio.to_thread(self.master.start)
        fault.blind_until = time.time()

    async def restart_apiserver(self, fault: Fault) -> None:
        await self.env.restart_apiserver(5)
        fault.blind_until = time.time()

    async def kill_busy_worker(self, fault: Fault) -> None:
        async def busy():
            return sorted(h for h in self.sampler.members.values() if h in self.sampler.busy)

        hosts = await _until(busy, timeout=120, what="a busy worker")
        host = hosts[0]
        view = await _until(self._view, timeout=60, what="the scaler's api/pool")
        handles = {w["handle"] for w in view["workers"] if w["host"] == host}
        if self.env.kill_worker(host):
            fault.detail = host
            fault.at = time.time()

        async def forgotten():  # the scaler saw it lost and stopped it (a new worker may reuse the host)
            return not handles & {w["handle"] for w in (await self._view())["workers"]}

        await _until(forgotten, timeout=self.converge_timeout,
                     what=f"the scaler to stop the lost worker on {host}")

    async def converged(self, t0: float) -> None:
        """The scaler answers, is not blind, and neither starts workers nor has apps waiting."""
        async def done():
            view = await self._view()
            return view["status"] == "healthy" and not view["plan"]["start"] and not view["target"]["waiting"]

        await _until(done, timeout=self.converge_timeout - (time.monotonic() - t0),
                     what="the scaler to converge")

    async def _view(self) -> dict:
        """The scaler's api/pool (raises OSError while it does not answer)."""
        response = await self._client.fetch(self.pool_url, headers={"Authorization": f"token {self.token}"},
                                            raise_error=False, request_timeout=5)
        if response.code != 200:
            raise OSError(f"api/pool: {response.code}")
        return json.loads(response.body)
