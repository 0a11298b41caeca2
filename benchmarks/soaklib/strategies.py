"""The soak's baselines, run on the same backend as the scaler, for comparison only:
a static pool sized for the peak, and the original autoscaler's policy."""

from __future__ import annotations

import asyncio
import logging

from jhub_spark_scaler.backends import Backend
from tests.waiting import until

from .cluster import master_json

log = logging.getLogger("soak")


async def _master(ui: str) -> dict | None:
    try:
        return await asyncio.to_thread(master_json, ui, 2)
    except (OSError, ValueError):
        return None


class StaticPool:
    """`size` workers started before the users come and kept until the end."""

    def __init__(self, backend: Backend, size: int):
        self.backend, self.size = backend, size

    async def run(self, stop: asyncio.Event, *, ready_timeout: float = 300) -> None:
        await self.backend.start(self.size)

        async def alive_or_stopped() -> bool:
            if stop.is_set():
                return True
            doc = await _master(self.backend.master_ui_url) or {}
            hosts = {w.host for w in await self.backend.list()}
            alive = [w for w in doc.get("workers", []) if w["state"] == "ALIVE" and w["host"] in hosts]
            return len(alive) >= self.size

        await until(alive_or_stopped, timeout=ready_timeout, interval=0.5,
                    what=f"the static pool of {self.size} to be ALIVE")
        await stop.wait()


class OriginalAutoscaler:
    """k8s-spark-autoscale's policy (DESIGN.md, "The original autoscaler we improve on"):
    every second, compare `pods * worker_cores` with `coresused + worker_cores * extra`;
    add one pod if short, else remove one if over: the first pod not registered at the
    master, else the first whose worker has coresused == 0, with a plain stop (no
    decommission). Each action waits until the pod count changed. Pods that exited
    still count until stopped. `max_workers` is not the original's (it has none): it
    only keeps this machine from a runaway."""

    def __init__(self, backend: Backend, *, worker_cores: int, extra: int, max_workers: int):
        self.backend, self.worker_cores = backend, worker_cores
        self.extra, self.max_workers = extra, max_workers
        self.starts = self.kills = 0

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await self.step()
            try:
                await asyncio.wait_for(stop.wait(), 1.0)
            except asyncio.TimeoutError:
                pass

    async def step(self) -> None:
        doc = await _master(self.backend.master_ui_url)
        if doc is None:
            return  # the original blocks on its HTTP call; here: try again next second
        pods = await self.backend.list()
        registered = {(w["host"], w["port"]): w for w in doc.get("workers", []) if w["state"] == "ALIVE"}
        cores_used = sum(w.get("coresused", 0) for w in registered.values())
        have, want = len(pods) * self.worker_cores, cores_used + self.worker_cores * self.extra
        if have < want and len(pods) < self.max_workers:
            await self.backend.start(1)
            self.starts += 1
        elif have > want:
            unregistered = [p for p in pods if (p.host, p.port) not in registered]
            idle = [p for p in pods if registered.get((p.host, p.port), {}).get("coresused") == 0]
            victims = unregistered or idle
            if victims:
                await self.backend.stop(victims[0])
                self.kills += 1
