"""How long one soak session's driver takes to its first executor on an idle machine.

    python benchmarks/driver_start.py [--runs 3] [--worker-lead SECONDS ...]

The soak's go/no-go probe: its first-executor times are mostly driver and executor
JVM starts, and this machine's speed at them drifts by a factor of two from day to
day, more than a worker's start (benchmarks/worker_start.py) shows. Starts a master
and one worker with LocalBackend (free ports, a temporary state dir), then runs
benchmarks/soaklib/session_driver.py, the soak's driver, with no jobs, one at a
time. With --worker-lead, each run also times a driver against a fresh worker
started SECONDS before it (as pre-warm starts one when a notebook server spawns),
and the ready worker is fresh too, started and given READY_AFTER s past ALIVE: the
difference is what the worker's start, on the same CPUs, costs the driver. Prints a
markdown table and writes it to benchmarks/RESULTS.md; everything it started is
stopped and its temporary directory removed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))
sys.path.insert(0, HERE)

from jhub_spark_scaler.backends.local import LocalBackend  # noqa: E402
from results import machine, write_section  # noqa: E402
from tests.settings import AS_ROOT  # noqa: E402
from soaklib.environments import WORKER_CORES  # noqa: E402
from soaklib.users import DRIVER  # noqa: E402
from worker_start import wait_alive  # noqa: E402

READY_AFTER = 5.0  # s a "ready" fresh worker gets past ALIVE before the driver starts


def first_executor_s(master_url: str, tmp: str, run: int) -> float:
    """One driver's seconds from just before getOrCreate() to its first executor."""
    out = os.path.join(tmp, f"driver-{run}.json")
    subprocess.run([sys.executable, DRIVER, "--master", master_url, "--name", f"driver-start-{run}",
                    "--out", out, "--jobs", "0", "--first-executor-timeout", "120"],
                   check=True, capture_output=True, timeout=300)
    with open(out) as f:
        result = json.load(f)
    if "first_executor_s" not in result:
        raise RuntimeError(f"driver {run}: {result.get('first_executor_error', 'no first executor')}")
    return result["first_executor_s"]


async def main(runs: int, leads: list[float]) -> None:
    log = logging.getLogger("driver_start")
    log.addHandler(logging.NullHandler())
    log.propagate = False
    kinds = [None, *leads]  # None: a ready worker; else a fresh one started that many s before the driver
    times: dict[float | None, list[float]] = {kind: [] for kind in kinds}
    with tempfile.TemporaryDirectory(prefix="driver-start-") as tmp:
        b = LocalBackend(**AS_ROOT, state_dir=os.path.join(tmp, "workers"), master_port=0,
                         master_webui_port=0, worker_cores=WORKER_CORES, stop_timeout=20, log=log,
                         stop_on_exit=True)
        await b.setup()
        try:
            [w] = await b.start(1)
            await wait_alive(b.master_ui_url, w.host, w.port, time.perf_counter())
            if leads:
                await b.stop(w)  # it writes the class archive that the fresh workers start from
            drivers = 0
            for run in range(runs):
                for kind in kinds[run % len(kinds):] + kinds[:run % len(kinds)]:  # no kind always first
                    if kind is not None:
                        [w] = await b.start(1)
                        await asyncio.sleep(kind)
                    elif leads:
                        [w] = await b.start(1)
                        await wait_alive(b.master_ui_url, w.host, w.port, time.perf_counter())
                        await asyncio.sleep(READY_AFTER)
                    times[kind].append(await asyncio.to_thread(first_executor_s, b.master_url, tmp, drivers))
                    drivers += 1
                    if leads:
                        await b.stop(w)
        finally:
            await b.shutdown()
    table = ["| worker | runs | median s | min s | max s |", "|---|---:|---:|---:|---:|"]
    for kind, values in times.items():
        what = "ready" if kind is None else f"started {kind:g} s before the driver"
        table.append(f"| {what} | {len(values)} | {statistics.median(values):.1f} | {min(values):.1f} "
                     f"| {max(values):.1f} |")
    print("\n".join(table))
    command = f"--runs {runs}" + "".join(f" --worker-lead {lead:g}" for lead in leads)
    write_section("Driver start time", [
        f"`python benchmarks/driver_start.py {command}` on {machine()}. One soak driver "
        "(benchmarks/soaklib/session_driver.py, no jobs) at a time: seconds from just before "
        "getOrCreate() to its first executor, against one ready worker"
        + (", and against a fresh worker (from the class archive) started the given seconds before the "
           "driver, as pre-warm starts one when a notebook server spawns (the ready worker fresh too, "
           f"{READY_AFTER:g} s past ALIVE): what the worker's start on the same CPUs costs the driver. "
           "The kinds take turns." if leads else "."), "", *table,
    ])


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="drivers of each kind (default 3)")
    parser.add_argument("--worker-lead", type=float, action="append", default=[], metavar="SECONDS",
                        help="also time drivers against a fresh worker started SECONDS before each "
                        "(repeatable)")
    args = parser.parse_args()
    asyncio.run(main(args.runs, args.worker_lead))
