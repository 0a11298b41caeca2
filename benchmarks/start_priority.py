"""What starting workers costs drivers that start beside them, at normal and at low CPU priority.

    python benchmarks/start_priority.py [--rounds 3] [--drivers 3]

On one machine the local backend's workers share the CPUs with the notebook
users' drivers. Master A (LocalBackend) has --drivers workers ready. Each run
starts --drivers drivers against A at the same moment (benchmarks/prewarm.py's
driver: the seconds from just before getOrCreate() to its first executor, the
driver JVM's start included), each in a session of its own as a notebook server's
kernel is. Three conditions take turns in every round:

  quiet      nothing else starts
  nice 0     at the same moment --drivers workers start on a second master B (so
             they take no executor of A's drivers) with LocalBackend.start_nice = 0
  nice 19    the same with the default start_nice = 19; a loop like the scaler's
             (once a second) gives each its normal priority once B lists it ALIVE

Also reported: how long B's workers took from spawn to ALIVE (polled every 0.1 s),
the price of low priority. Writes the section "Worker start priority" of
benchmarks/RESULTS.md. Everything it starts is stopped, also on failure.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import statistics
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))
sys.path.insert(0, HERE)

from jhub_spark_scaler.backends.local import LocalBackend  # noqa: E402
from prewarm import DRIVER, alive_workers, master_json, quiet_logger, until  # noqa: E402
from results import machine, write_section  # noqa: E402

CONDITIONS = ("quiet", "nice 0", "nice 19")
SCALER_POLL = 1.0


class Bench:
    def __init__(self, tmp: str, drivers: int):
        self.tmp, self.n = tmp, drivers
        log = quiet_logger("start_priority")
        common = dict(master_port=0, master_webui_port=0, stop_timeout=20, log=log)
        self.a = LocalBackend(state_dir=os.path.join(tmp, "a"), host_range="127.0.10.2-127.0.10.99", **common)
        self.b = LocalBackend(state_dir=os.path.join(tmp, "b"), host_range="127.0.11.2-127.0.11.99", **common)
        self.running: set[asyncio.subprocess.Process] = set()
        self.count = 0

    async def setup(self) -> None:
        await self.a.setup()
        await self.b.setup()
        await self.a.start(self.n)
        await until(lambda: len(alive_workers(master_json(self.a.master_ui_url))) == self.n,
                    timeout=120, what=f"{self.n} workers ALIVE at master A")
        await self.a.restore_priority(await self.a.list())  # registered: normal priority, as the scaler does
        # one worker on B writes the AppCDS archive when it stops, so B's timed starts all use it
        [w] = await self.b.start(1)
        await until(lambda: alive_workers(master_json(self.b.master_ui_url)), timeout=120, what="B's worker")
        await self.b.stop(w)

    async def driver(self) -> float:
        self.count += 1
        p = await asyncio.create_subprocess_exec(
            sys.executable, "-c", DRIVER, self.a.master_url, f"driver-{self.count}", "300",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL, start_new_session=True)
        self.running.add(p)
        out, _ = await p.communicate()
        self.running.discard(p)
        line = next((x for x in out.decode().splitlines() if x.startswith("RESULT ")), "")
        result = json.loads(line[len("RESULT "):]) if line else {"error": f"driver exited {p.returncode}"}
        if "error" in result:
            raise RuntimeError(f"driver-{self.count}: {result['error']}")
        return result["first_executor_s"]

    async def start_others(self, nice: int) -> list[float]:
        """Start n workers on B; give them normal priority once listed ALIVE, as the scaler
        does each cycle; return each one's seconds from spawn to ALIVE."""
        self.b.start_nice = nice
        t0 = time.monotonic()
        started = await self.b.start(self.n)
        hosts, seen, last_restore = {w.host for w in started}, {}, 0.0
        deadline = t0 + 120
        while len(seen) < len(hosts):
            doc = await asyncio.to_thread(master_json, self.b.master_ui_url)
            alive = {w["host"] for w in alive_workers(doc)}
            seen.update({h: time.monotonic() - t0 for h in hosts & alive if h not in seen})
            if time.monotonic() - last_restore >= SCALER_POLL:
                last_restore = time.monotonic()
                await self.b.restore_priority([w for w in await self.b.list() if w.host in alive])
            if time.monotonic() > deadline:
                raise TimeoutError("B's workers not ALIVE within 120 s")
            await asyncio.sleep(0.1)
        await self.b.restore_priority([w for w in await self.b.list() if w.host in hosts])
        return list(seen.values())

    async def run(self, condition: str) -> tuple[list[float], list[float]]:
        drivers = [asyncio.create_task(self.driver()) for _ in range(self.n)]
        others = [] if condition == "quiet" else await self.start_others(0 if condition == "nice 0" else 19)
        ttfe = await asyncio.gather(*drivers)
        for w in await self.b.list():
            await self.b.stop(w)
        await until(lambda: not master_json(self.a.master_ui_url).get("activeapps"), timeout=60,
                    what="A's apps gone")
        return ttfe, others

    async def cleanup(self) -> None:
        for p in list(self.running):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGKILL)
            await p.wait()
        for backend in (self.b, self.a):
            with contextlib.suppress(Exception):
                await backend.shutdown()


async def main(rounds: int, drivers: int) -> None:
    ttfe = {c: [] for c in CONDITIONS}
    starts = {c: [] for c in CONDITIONS}
    with tempfile.TemporaryDirectory(prefix="start-priority-") as tmp:
        bench = Bench(tmp, drivers)
        try:
            await bench.setup()
            for r in range(rounds):
                for condition in CONDITIONS[r % 3:] + CONDITIONS[:r % 3]:  # the order rotates
                    t, s = await bench.run(condition)
                    ttfe[condition] += t
                    starts[condition] += s
                    print(f"round {r + 1} {condition}: first executor {[round(x, 1) for x in t]} s, "
                          f"other workers ALIVE after {[round(x, 1) for x in s]} s", flush=True)
        finally:
            await bench.cleanup()
    quiet = statistics.median(ttfe["quiet"])
    table = ["| condition | drivers | first executor median s (min–max) | vs quiet "
             "| other workers ALIVE, median s |", "|---|---:|---:|---:|---:|"]
    for c in CONDITIONS:
        t = ttfe[c]
        alive = f"{statistics.median(starts[c]):.1f}" if starts[c] else "–"
        table.append(f"| {c} | {len(t)} | {statistics.median(t):.1f} ({min(t):.1f}–{max(t):.1f}) | "
                     f"{statistics.median(t) / quiet - 1:+.0%} | {alive} |")
    print("\n".join(table))
    write_section("Worker start priority", [
        f"`python benchmarks/start_priority.py --rounds {rounds} --drivers {drivers}` on {machine()}. "
        f"{drivers} drivers start at once on {drivers} ready workers; in two conditions {drivers} other "
        "workers (on a second master) start at the same moment, at normal priority or with the local "
        "backend's default `start_nice` 19 (normal once ALIVE). Conditions take turns each round.",
        "", *table,
    ])


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="rounds, each running every condition once")
    parser.add_argument("--drivers", type=int, default=3, help="drivers started at once (and workers each)")
    args = parser.parse_args()
    asyncio.run(main(args.rounds, args.drivers))
