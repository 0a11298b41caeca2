"""How long one soak session's driver takes to its first executor on an idle machine.

    python benchmarks/driver_start.py [--runs 3]

The soak's go/no-go probe: its first-executor times are mostly driver and executor
JVM starts, and this machine's speed at them drifts by a factor of two from day to
day, more than a worker's start (benchmarks/worker_start.py) shows. Starts a master
and one worker with LocalBackend (free ports, a temporary state dir), then runs
benchmarks/soaklib/session_driver.py, the soak's driver, with no jobs, one at a
time. Prints a markdown table and writes it to benchmarks/RESULTS.md; everything
it started is stopped and its temporary directory removed.
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
from soaklib.environments import WORKER_CORES  # noqa: E402
from soaklib.users import DRIVER  # noqa: E402
from worker_start import wait_alive  # noqa: E402


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


async def main(runs: int) -> None:
    log = logging.getLogger("driver_start")
    log.addHandler(logging.NullHandler())
    log.propagate = False
    with tempfile.TemporaryDirectory(prefix="driver-start-") as tmp:
        b = LocalBackend(state_dir=os.path.join(tmp, "workers"), master_port=0, master_webui_port=0,
                         worker_cores=WORKER_CORES, stop_timeout=20, log=log)
        await b.setup()
        try:
            [w] = await b.start(1)
            await wait_alive(b.master_ui_url, w.host, w.port, time.perf_counter())
            times = [await asyncio.to_thread(first_executor_s, b.master_url, tmp, run) for run in range(runs)]
        finally:
            await b.shutdown()
    table = ["| runs | median s | min s | max s |", "|---:|---:|---:|---:|",
             f"| {runs} | {statistics.median(times):.1f} | {min(times):.1f} | {max(times):.1f} |"]
    print("\n".join(table))
    write_section("Driver start time", [
        f"`python benchmarks/driver_start.py --runs {runs}` on {machine()}. One soak driver "
        "(benchmarks/soaklib/session_driver.py, no jobs) at a time against one ready worker: "
        "seconds from just before getOrCreate() to its first executor.", "", *table,
    ])


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="drivers, one after another (default 3)")
    asyncio.run(main(parser.parse_args().runs))
